"""``kevo trace``: causal tracing of a store's samples, written back into the same store.

    from ingest.trace.run import TraceRequest, trace_store
    trace_store(TraceRequest(store="vqa.kevo", model="llava-hf/llava-1.5-7b-hf",
                             settings=TraceSettings(parse_corruption("swap:Paris"))))

Everything that can be refused is checked before the first forward (kinds, window, the store's
model, images for image-noise, each sample's constraint), and the clean run of every sample is
checked against the store (same answer token, same probability) before anything is written; the
three tables are written only at the end, in one commit (kevo_store.write_derived_tables), so a refused
or interrupted run leaves the store as it was, with all three tables or none of the new rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .constraint import ConstraintError, constraint_positions, first_piece_id
from .corrupt import TraceError
from .engine import SampleTrace, Tracer, TraceSettings
from .tables import contribution_rows, merge_and_write, run_row, trace_rows


@dataclass
class TraceRequest:
    store: str
    model: str
    settings: TraceSettings
    where: str | None = None
    name: str | None = None
    images: str | None = None
    contributions: bool = True
    dtype: str = "auto"
    device: str | None = None
    revision: str | None = None
    p_tolerance: float = 2e-3
    """The recomputed clean p(answer) must match the store's within max(p_tolerance, 2% of p)."""
    limit: int | None = None

    @property
    def run_name(self) -> str:
        return self.name or f"{self.settings.corruption.spec}/w{self.settings.window}"


@dataclass
class Prepared:
    sample_id: int
    inputs: dict
    input_ids: list[int]
    corrupted: list[int]
    constraint: list[int]
    image_positions: list[int]
    grid: np.ndarray | None
    uid_by_position: dict[int, int]
    answer_id: int
    p_store: float
    extra: dict = field(default_factory=dict)


def _samples(store, where: str | None, limit: int | None):
    from kevo_store.errors import QueryError

    q = ("SELECT sample_id, prompt, prompt_text, image_id, image_sha256, annotations, n_prompt_tokens FROM samples"
         + (f" WHERE {where}" if where else "") + " ORDER BY sample_id" + (f" LIMIT {int(limit)}" if limit else ""))
    try:
        return store.sql(q).to_dicts()
    except QueryError as e:
        raise TraceError(f"--where {where!r}: {e}") from None


def _images_dir(store, images: str | None) -> Path | None:
    if images:
        return Path(images)
    fp = (store.dataset or {}).get("fingerprint") or {}
    d = fp.get("images")
    return Path(d) if d else None


def check_model(store, ad) -> None:
    """Refuse a store made with another model's architecture (the weights are checked per sample)."""
    m = store.model
    for key, have in (("n_layers", ad.n_layers), ("hidden_size", ad.hidden_size), ("vocab_size", ad.vocab_size),
                      ("architecture", type(ad.model).__name__)):
        if key in m and m[key] != have:
            raise TraceError(f"the store {store.root} was made with another model: its {key} is {m[key]!r}, "
                             f"the model {ad.model_id!r} has {have!r}")


def prepare_sample(store, ad, row: dict, req: TraceRequest, images_dir: Path | None) -> Prepared:
    sid = int(row["sample_id"])
    image = None
    if row["image_id"] is not None:
        from PIL import Image

        from ingest.datasets.base import sha256_file

        if images_dir is None:
            raise TraceError(f"sample {sid}: its image {row['image_id']!r} cannot be found: give --images DIR")
        path = Path(row["image_id"])
        path = path if path.is_absolute() else images_dir / path
        if not path.is_file():
            raise TraceError(f"sample {sid}: image {path} not found (give --images DIR)")
        if row["image_sha256"] and sha256_file(path) != row["image_sha256"]:
            raise TraceError(f"sample {sid}: image {path} is not the one the store was made from (sha256 differs)")
        with Image.open(path) as im:
            image = im.convert("RGB")
    batch = ad.encode([row["prompt_text"]], [image] if image is not None else None)
    ids = batch.input_ids[0].tolist()
    if row["n_prompt_tokens"] is not None and len(ids) != int(row["n_prompt_tokens"]):
        raise TraceError(f"sample {sid}: the prompt encodes to {len(ids)} tokens, the store says "
                         f"{row['n_prompt_tokens']}: the store was made with another tokenizer or processor")
    img_pos = [i for i, t in enumerate(ids) if t in ad.image_token_ids]
    grid = ad.patch_grid(batch, 0) if img_pos else None
    toks = store.sql(f"SELECT token_uid, position, role, token_id, step FROM tokens WHERE sample_id = {sid}")
    cols = set(store.sql("SELECT * FROM tokens LIMIT 0").columns)
    uid_by_pos = {int(p): int(u) for u, p, r in zip(toks["token_uid"], toks["position"], toks["role"])
                  if r != "generated"}
    gen0 = toks.filter((toks["role"] == "generated") & (toks["step"] == 0))
    if gen0.height == 0:
        raise TraceError(f"sample {sid}: the store has no generated token for it (nothing to trace)")
    ans_uid = int(gen0["token_uid"][0])
    answer_id = int(gen0["token_id"][0])
    lay = store.sql(f"SELECT p_out FROM layers WHERE token_uid = {ans_uid} AND layer = {ad.n_layers} LIMIT 1")
    p_store = float(lay["p_out"][0]) if lay.height else float("nan")
    constraint: list[int] = []
    ann = json.loads(row["annotations"] or "{}")
    text = ann.get("constraint")
    if text:
        try:
            constraint = constraint_positions(ad.tokenizer, ids, row["prompt"], text, ad.image_token_ids)
        except ConstraintError as e:
            raise TraceError(f"sample {sid}: {e}") from None
        if "is_constraint" in cols:
            flagged = store.sql(f"SELECT position FROM tokens WHERE sample_id = {sid} AND is_constraint")
            flagged = sorted(int(p) for p in flagged["position"])
            if flagged and flagged != constraint:
                raise TraceError(f"sample {sid}: the constraint tokens flagged in the store ({flagged}) are not "
                                 f"those located now ({constraint}): another tokenizer?")
    c = req.settings.corruption
    if c.on_image:
        if not img_pos:
            raise TraceError(f"sample {sid} has no image tokens: image-noise needs samples with images")
        corrupted = img_pos
    else:
        if not constraint:
            raise TraceError(f"sample {sid} has no constraint (annotations.constraint): {c.spec} corrupts the "
                             "constraint; ingest the questions with a 'constraint' field")
        corrupted = constraint
    return Prepared(sid, ad.generate_inputs(batch), ids, corrupted, constraint, img_pos, grid, uid_by_pos,
                    answer_id, p_store)


def trace_store(req: TraceRequest, echo: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Trace the selected samples and write trace_runs, traces and attention_contributions."""
    from kevo_store import open_store

    s = req.settings
    store = open_store(req.store)
    rows = _samples(store, req.where, req.limit)
    if not rows:
        raise TraceError(f"no samples selected in {req.store}" + (f" by --where {req.where!r}" if req.where else ""))
    if s.corruption.on_image and all(r["image_id"] is None for r in rows):
        raise TraceError(f"{req.store}: the selected samples have no images; image-noise needs images")
    from ingest.models import load_adapter

    ad = load_adapter(req.model, dtype=req.dtype, device=req.device, revision=req.revision)
    s.check_model(ad.n_layers)
    check_model(store, ad)
    tracer = Tracer(ad, s)
    images_dir = _images_dir(store, req.images)
    prepared = [prepare_sample(store, ad, r, req, images_dir) for r in rows]
    repl = first_piece_id(ad.tokenizer, s.corruption.word) if s.corruption.kind == "swap" else None
    sigma = tracer.sigma if s.corruption.is_noise else None
    params = {"corruption": s.corruption.spec, **{k: v for k, v in asdict(s).items() if k != "corruption"},
              "kinds": list(s.kinds), "replacement_id": repl, "noise_sigma": sigma, "model": req.model,
              "where": req.where, "images": str(images_dir) if images_dir else None, "dtype": req.dtype,
              "contributions": req.contributions, "p_tolerance": req.p_tolerance}
    bar = _bar(len(prepared), progress)
    runs, traces, contribs = [], [], []
    for p in prepared:
        st = tracer.prepare(p.inputs, p.corrupted, sample_id=p.sample_id, replacement_id=repl)
        _check_clean(p, st.answer_id, st.p_clean, ad, req)
        res: SampleTrace = tracer.trace(st, p.image_positions, p.grid)
        res.corrupted_positions = p.corrupted
        trace_id = f"{req.run_name}:{p.sample_id}"
        runs.append(run_row(trace_id, req.run_name, p, res, s, repl, sigma, params))
        traces.append(trace_rows(trace_id, p, res))
        if req.contributions:
            contribs.append(contribution_rows(ad, p))
        bar(1)
    bar(None)
    merge_and_write(req.store, req.run_name, runs, traces, contribs, params,
                    sample_ids=[p.sample_id for p in prepared])
    echo(f"traced {len(prepared)} samples ({req.run_name}) into {req.store}: tables trace_runs, traces"
         + (", attention_contributions" if req.contributions else ""))
    return {"samples": len(prepared), "name": req.run_name}


def _check_clean(p: Prepared, answer_id: int, p_clean: float, ad, req: TraceRequest) -> None:
    if answer_id != p.answer_id:
        tok = ad.tokenizer
        raise TraceError(f"sample {p.sample_id}: the clean run answers {tok.decode([answer_id])!r} (id {answer_id}) "
                         f"but the store's first generated token is {tok.decode([p.answer_id])!r} (id {p.answer_id}): "
                         f"the store was made with other weights or prompt text than {req.model!r}")
    if not np.isnan(p.p_store) and abs(p_clean - p.p_store) > max(req.p_tolerance, 0.02 * p.p_store):
        raise TraceError(f"sample {p.sample_id}: the clean run gives p(answer) = {p_clean:.6f}, the store "
                         f"{p.p_store:.6f}: the store was made with other weights than {req.model!r}")


def _bar(total: int, on: bool):
    if not on:
        return lambda n: None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return lambda n: None
    t = tqdm(total=total, unit="sample", desc="kevo trace", leave=True)

    def step(n):
        if n is None:
            t.close()
        else:
            t.update(n)
    return step
