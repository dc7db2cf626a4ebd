"""The ingest runner: dataset items -> batches -> capture -> labels -> one atomic store commit per batch.

``run_ingest(dataset, config)`` is the one entry point (``kevo ingest <dataset>`` calls it through
:func:`ingest.cli.run_ingest_command`). For every batch of ``config.batch_size`` items it

1. reads the images (an image that does not decode becomes an ``errors`` row, stage 'read'),
2. templates the prompts (``adapter.build_prompt``; ``samples.prompt_text`` keeps that exact text),
3. runs :func:`ingest.capture.capture` (greedy generation + hidden states + logit lens); a batch
   that fails is retried one sample at a time so that one bad sample cannot poison the others,
4. finds the piece and the character span in the response of every generated token,
5. calls the dataset's labeler, if any (word/object labels, per-sample metrics),
6. writes samples/tokens/layers/topk/hidden/errors with ``StoreWriter.write_batch`` (one commit).

Resume is the default: items whose key is already committed (as a sample or an error) are skipped.

Several processes (``torchrun``/``accelerate launch``: ``RANK``/``WORLD_SIZE`` in the environment)
split the items by index (item i goes to rank i % world_size); rank K writes the part store
``OUT.parts/rank-K``; after a barrier rank 0 joins the parts into ``OUT`` in the dataset's item
order (:func:`kevo_store.join.join_parts`), so the result equals a one-process run.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ingest.datasets.base import Dataset, DatasetItem, sha256_file
from kevo_store import schema

try:
    from kevo_store.errors import KevoError as _ErrorBase
except ImportError:  # pragma: no cover - the store package provides it
    _ErrorBase = Exception


# If this many samples fail to generate before any succeeds, the run stops (see _run_rank).
ABORT_AFTER_GENERATE_FAILURES = 3


class IngestError(_ErrorBase):
    """A user error in an ingest run (bad option, unusable model, store mismatch): one clear message."""


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class IngestConfig:
    """Everything an ingest run needs besides the dataset. Recorded in the store's manifest."""

    model: str
    """Hub id (resolved through the local Hugging Face cache) or a local model directory."""
    out: str
    """The store directory (created, or resumed if it exists)."""
    revision: str | None = None
    """Model revision for a hub id."""
    dtype: str = "auto"
    """Weights dtype: auto (the checkpoint's) | float32 | float16 | bfloat16."""
    device: str | None = None
    """Device (cpu, cuda, cuda:1); None = cuda:LOCAL_RANK if available, else cpu."""
    device_map: str | None = None
    """A transformers device_map (e.g. 'auto') to spread one model over several GPUs."""
    batch_size: int = 1
    """Samples generated together, left padded."""
    max_new_tokens: int = 256
    """Generation budget per sample (the paper's 256)."""
    lens_modes: tuple[str, ...] = ("final_norm",)
    """Logit-lens modes to store: final_norm and/or raw."""
    top_k: int = 10
    """Top-k tokens stored per (token, lens, layer)."""
    hidden: str = "all"
    """Hidden-state layers to store: 'all', 'none' or a list like '0,8,16-32' (layers after skipping)."""
    hidden_dtype: str = "auto"
    """Hidden-state storage dtype: auto (bfloat16 for a bfloat16 model, else float16) | float16 | bfloat16."""
    dola: bool = False
    """Also compute the paper code's JS variant (layers.js_dola)."""
    capture_prompt: bool = False
    """Also capture prompt and image positions."""
    skip_layers: str | None = None
    """Decoder layers (0-based) removed for a skip experiment, e.g. '20-26,30'."""
    limit: int | None = None
    """Only the first N items of the dataset."""
    dry_run: bool = False
    """Print the disk estimate and stop; write nothing."""
    resume: bool = True
    """Skip items already committed; False refuses a store that already holds samples."""
    progress: bool = True
    """Show a progress bar (rank 0 only)."""

    @classmethod
    def from_options(cls, **options: Any) -> IngestConfig:
        """Build from the CLI's ``ingest_options`` keyword arguments (unknown keys are an error)."""
        options = dict(options)
        if "out" in options and options["out"] is not None:
            options["out"] = str(options["out"])
        if "lens_modes" in options:
            options["lens_modes"] = tuple(options["lens_modes"])
        return cls(**options)


def parse_layer_spec(spec: str, n: int, option: str) -> list[int]:
    """'0,8,16-32' -> sorted unique ints, each checked against 0..n-1 (``option`` names the flag in errors)."""
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(-?\d+)\s*-\s*(-?\d+)|(-?\d+)", part)
        if m is None:
            raise IngestError(f"{option} {spec!r}: {part!r} is not a layer number or a range like 16-32")
        if m.group(3) is not None:
            values = [int(m.group(3))]
        else:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise IngestError(f"{option} {spec!r}: range {part!r} is reversed")
            values = range(lo, hi + 1)
        for v in values:
            if not 0 <= v < n:
                raise IngestError(f"{option} {spec!r}: layer {v} is out of range (the model has layers 0..{n - 1})")
            out.add(v)
    if not out:
        raise IngestError(f"{option} {spec!r}: no layers given")
    return sorted(out)


# --------------------------------------------------------------------------------------------
# ranks


@dataclass
class RankContext:
    """This process's place in a multi-process run (``torchrun``/``accelerate launch`` set the env)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> RankContext:
        def geti(name: str, default: int) -> int:
            v = os.environ.get(name)
            try:
                return int(v) if v not in (None, "") else default
            except ValueError:
                raise IngestError(f"environment variable {name}={v!r} is not an integer") from None

        ctx = cls(geti("RANK", 0), geti("WORLD_SIZE", 1), geti("LOCAL_RANK", geti("RANK", 0)))
        if not 0 <= ctx.rank < ctx.world_size:
            raise IngestError(f"RANK={ctx.rank} is outside WORLD_SIZE={ctx.world_size}")
        return ctx

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def owns(self, index: int) -> bool:
        """Item ``index`` (in dataset order) goes to rank ``index % world_size``."""
        return index % self.world_size == self.rank

    def init(self, backend: str) -> None:
        import datetime as _dt

        import torch.distributed as dist

        if self.distributed and not dist.is_initialized():
            # ranks finish at different times; the barrier before the join must not time out
            dist.init_process_group(backend=backend, timeout=_dt.timedelta(hours=48))

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.distributed and dist.is_initialized():
            dist.barrier()

    def all_ok(self, ok: bool) -> bool:
        """True only if every rank reports ok (so rank 0 never joins an unfinished part)."""
        import torch
        import torch.distributed as dist

        if not (self.distributed and dist.is_initialized()):
            return ok
        t = torch.tensor([0 if ok else 1], dtype=torch.int64)
        dist.all_reduce(t)
        return int(t.item()) == 0

    def shutdown(self) -> None:
        import torch.distributed as dist

        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def parts_dir(out: str) -> str:
    """Where the ranks of a multi-process run keep their parts: next to the store, removed after the join."""
    return str(out).rstrip("/\\") + ".parts"


def part_path(out: str, rank: int) -> str:
    return os.path.join(parts_dir(out), f"rank-{rank}")


def committed_keys(path: str) -> set[str]:
    """sample_key of every committed sample and error of the store at ``path`` (empty if none), read-only."""
    mf = Path(path) / "manifest.json"
    if not mf.is_file():
        return set()
    import pyarrow.parquet as pq

    m = json.loads(mf.read_text())
    keys: set[str] = set()
    for t in ("samples", "errors"):
        files = [str(Path(path) / f) for f in ((m.get("tables") or {}).get(t) or {}).get("files", [])]
        if files:
            keys.update(pq.read_table(files, columns=["sample_key"]).column(0).to_pylist())
    return keys


# --------------------------------------------------------------------------------------------
# model dimensions (from config.json, without loading weights) and the disk estimate


@dataclass
class ModelDims:
    n_layers: int
    """Decoder layers L in the checkpoint (before skipping)."""
    hidden_size: int
    vocab_size: int
    torch_dtype: str | None


def model_dims(model: str, revision: str | None) -> ModelDims:
    """Read L, D and V from the model's config (no weights loaded): used to validate and estimate."""
    from transformers import AutoConfig

    from ingest.models import ModelError, resolve_model_path

    try:
        path, _ = resolve_model_path(model, revision)
    except ModelError as e:
        raise IngestError(str(e)) from None
    if not (Path(path) / "config.json").is_file():
        raise IngestError(f"model {model!r}: no config.json in {path}")
    try:
        cfg = AutoConfig.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - any failure: the config is unusable
        raise IngestError(f"model {model!r}: cannot read {path / 'config.json'}: {e}") from None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    dtype = getattr(text, "dtype", None) or getattr(cfg, "dtype", None)
    try:
        return ModelDims(int(text.num_hidden_layers), int(text.hidden_size), int(text.vocab_size),
                         str(dtype).removeprefix("torch.") if dtype is not None else None)
    except AttributeError as e:
        raise IngestError(f"model {model!r}: config has no {e.name}; is it a supported model?") from None


# bytes per row of each table after zstd, measured on tiny-model stores (a rough, honest guess)
_BYTES_PER_LAYER_ROW = 28
_BYTES_PER_TOPK_ROW = 6
_BYTES_PER_TOKEN_ROW = 40


@dataclass
class DiskEstimate:
    n_items: int
    tokens: int
    n_layers: int
    hidden_layers: int
    hidden_size: int
    lens_modes: int
    top_k: int
    hidden_bytes: int
    layers_rows: int
    topk_rows: int
    table_bytes: int
    prompt_tokens_guess: int = 0
    """Prompt/image positions per sample assumed with --capture-prompt (0 without)."""

    @property
    def total_bytes(self) -> int:
        return self.hidden_bytes + self.table_bytes

    def format(self) -> str:
        return (
            "disk estimate (upper bound: every sample generates max_new_tokens"
            + (f", plus ~{self.prompt_tokens_guess} prompt/image positions" if self.prompt_tokens_guess else "")
            + f"): {self.n_items} samples, <= {self.tokens:,} tokens\n"
            f"  hidden: {self.tokens:,} tokens x {self.hidden_layers} layers x {self.hidden_size} x 2 B = "
            f"{_human(self.hidden_bytes)}\n"
            f"  layers: {self.layers_rows:,} rows ({self.lens_modes} lens mode(s) x {self.n_layers + 1} layers), "
            f"topk: {self.topk_rows:,} rows (k={self.top_k}); tables ~ {_human(self.table_bytes)}\n"
            f"  total ~ {_human(self.total_bytes)}"
        )


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def estimate_disk(n_items: int, tokens_per_item: int, n_layers: int, n_hidden_layers: int, hidden_size: int,
                  n_modes: int, top_k: int) -> DiskEstimate:
    tokens = n_items * tokens_per_item
    layers_rows = tokens * n_modes * (n_layers + 1)
    topk_rows = layers_rows * top_k
    return DiskEstimate(
        n_items=n_items, tokens=tokens, n_layers=n_layers, hidden_layers=n_hidden_layers, hidden_size=hidden_size,
        lens_modes=n_modes, top_k=top_k, hidden_bytes=tokens * n_hidden_layers * hidden_size * 2,
        layers_rows=layers_rows, topk_rows=topk_rows,
        table_bytes=layers_rows * _BYTES_PER_LAYER_ROW + topk_rows * _BYTES_PER_TOPK_ROW
        + tokens * _BYTES_PER_TOKEN_ROW,
    )


# --------------------------------------------------------------------------------------------
# token pieces and character spans


def token_char_spans(tokenizer, ids: Sequence[int], response: str) -> tuple[list[int], list[int]]:
    """Character span in ``response`` of each generated token.

    The boundary after token i is the longest common prefix of ``response`` and the decoded text of
    tokens 0..i, made monotone from the end. An unfinished multi-byte character decodes as U+FFFD in
    the prefix but not in the response, so it is not text yet; a byte that never becomes a valid
    character stays U+FFFD in both and is owned by its own token. So the spans partition the
    response; a token that adds no text of its own (the end-of-sequence token, the first bytes of a
    byte-fallback character) gets an empty span, and the token that completes a character owns it.
    """
    n = len(ids)
    if n == 0:
        return [], []
    ids = [int(i) for i in ids]
    bounds = []
    for i in range(n):
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        bounds.append(len(os.path.commonprefix([text, response])))
    for i in range(n - 2, -1, -1):
        bounds[i] = min(bounds[i], bounds[i + 1])
    return [0, *bounds[:-1]], bounds


def pieces(tokenizer, ids: Sequence[int]) -> list[str | None]:
    out = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    return [p if isinstance(p, str) else None for p in out]


def vocab_table(tokenizer, vocab_size: int) -> pa.Table:
    """vocab_id, piece, text for every id of the output head (ids the tokenizer lacks get nulls)."""
    n_tok = len(tokenizer)
    ids = list(range(vocab_size))
    known = [i for i in ids if i < n_tok]
    piece = pieces(tokenizer, known) + [None] * (vocab_size - len(known))
    text = tokenizer.batch_decode([[i] for i in known], skip_special_tokens=False,
                                  clean_up_tokenization_spaces=False) + [None] * (vocab_size - len(known))
    return pa.table({"vocab_id": pa.array(ids, pa.int32()), "piece": pa.array(piece, pa.string()),
                     "text": pa.array(text, pa.string())}, schema=schema.VOCAB)


# --------------------------------------------------------------------------------------------
# the run


@dataclass
class IngestResult:
    out: str
    n_items: int = 0
    n_skipped: int = 0
    n_samples: int = 0
    n_errors: int = 0
    n_tokens: int = 0
    seconds: float = 0.0
    estimate: DiskEstimate | None = None

    @property
    def failed_all(self) -> bool:
        """Nothing succeeded although something was attempted."""
        return self.n_samples == 0 and self.n_errors > 0


@dataclass
class _Prepared:
    item: DatasetItem
    image: Any
    image_sha256: str | None
    prompt_text: str


@dataclass
class _BatchRows:
    samples: list[dict] = field(default_factory=list)
    tokens: list[pa.Table] = field(default_factory=list)
    layers: list[pa.Table] = field(default_factory=list)
    topk: list[pa.Table] = field(default_factory=list)
    hidden: list[np.ndarray] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    n_tokens: int = 0
    n_generated: int = 0
    first_traceback: str | None = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _error_row(item: DatasetItem, stage: str, exc: BaseException, message: str | None = None) -> dict:
    etype, msg = type(exc).__name__, message or str(exc) or repr(exc)
    return {"sample_key": item.key, "dataset": item.dataset, "item_id": item.item_id, "stage": stage,
            "error_type": etype, "message": msg, "time": _now()}


def load_image(path: Path):
    """Open and fully decode an image (PIL is lazy: verify() alone misses truncated files)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.copy()


def run_ingest(dataset: Dataset, config: IngestConfig, *, echo: Callable[[str], None] | None = None,
               adapter=None) -> IngestResult | None:
    """Run ``dataset`` through the model into ``config.out``. Returns a summary (None on a dry run).

    ``adapter`` may be passed pre-loaded (tests, notebooks); otherwise ``config.model`` is loaded.
    """
    echo = echo or (lambda m: print(m, file=sys.stderr))
    ctx = RankContext.from_env()
    if ctx.distributed and config.device_map:
        raise IngestError("--device-map spreads one model over several GPUs; it cannot be combined with "
                          f"several processes (WORLD_SIZE={ctx.world_size})")
    if config.top_k < 0 or config.batch_size < 1 or config.max_new_tokens < 1:
        raise IngestError("--top-k must be >= 0, --batch-size and --max-new-tokens >= 1")
    bad = [m for m in config.lens_modes if m not in schema.LENS_MODES]
    if bad or not config.lens_modes:
        raise IngestError(f"--lens {','.join(config.lens_modes)}: modes are {', '.join(schema.LENS_MODES)}")

    _check_out(config.out)
    # validate layer options against the checkpoint before loading any weights
    dims = model_dims(config.model, config.revision)
    skip = parse_layer_spec(config.skip_layers, dims.n_layers, "--skip-layers") if config.skip_layers else []
    if len(skip) >= dims.n_layers:
        raise IngestError(f"--skip-layers {config.skip_layers!r} removes all {dims.n_layers} decoder layers")
    n_layers = dims.n_layers - len(skip)
    hidden_layers = _hidden_layers(config.hidden, n_layers)

    items = list(dataset.items)
    if config.limit is not None:
        items = items[: config.limit]
    seen: set[str] = set()
    for it in items:
        if it.key in seen:
            raise IngestError(f"dataset {dataset.name!r}: two items share the key {it.key!r} (keys must be unique)")
        seen.add(it.key)
    prompt_guess = _prompt_tokens_guess(items) if config.capture_prompt else 0
    tokens_per_item = config.max_new_tokens + prompt_guess
    # the estimate covers what is left to do (read-only peek at a store being resumed; ranks' parts too)
    already = committed_keys(config.out) if ctx.rank == 0 else set()
    if ctx.rank == 0 and Path(parts_dir(config.out)).is_dir():
        for d in Path(parts_dir(config.out)).iterdir():
            already |= committed_keys(str(d))
    if already and not config.resume:
        raise IngestError(f"store {config.out} already holds {len(already)} samples; --no-resume refuses to add to "
                          "it (remove it, or drop --no-resume to continue it)")
    n_todo = sum(1 for it in items if it.key not in already)
    estimate = estimate_disk(n_todo, tokens_per_item, n_layers, len(hidden_layers), dims.hidden_size,
                             len(config.lens_modes), config.top_k)
    estimate.prompt_tokens_guess = prompt_guess
    if ctx.rank == 0:
        echo(estimate.format() + (f"\n  ({len(items) - n_todo} of {len(items)} samples already in {config.out})"
                                  if n_todo < len(items) else ""))
    if config.dry_run:
        return None

    # the ranks only exchange a barrier and one flag: gloo (CPU tensors) serves GPU runs as well
    ctx.init("gloo")
    try:
        elsewhere: set[str] = set()
        if ctx.distributed:
            elsewhere = _keys_elsewhere(config, ctx)
            ctx.barrier()  # nobody writes (or compacts) a part while another rank reads it
        ok = False
        result = None
        try:
            result = _run_rank(dataset, items, config, ctx, dims, skip, hidden_layers, estimate, echo, adapter,
                               elsewhere)
            ok = True
        finally:
            all_ok = ctx.all_ok(ok)
        if ctx.distributed:
            result = _join(dataset, items, config, ctx, echo, result, all_ok)
        return result
    finally:
        ctx.shutdown()


def _check_out(out: str) -> None:
    """--out must be a store, or not exist yet, or be an empty directory (checked before loading the model)."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise IngestError(f"--out {out} exists and is not a directory")
    if p.is_dir() and not (p / "manifest.json").is_file() and any(x.name != ".lock" for x in p.iterdir()):
        raise IngestError(f"--out {out} is a non-empty directory that is not a kevo store; choose another path")


def _hidden_layers(spec: str, n_layers: int) -> list[int]:
    s = (spec or "all").strip().lower()
    if s == "all":
        return list(range(n_layers + 1))
    if s == "none":
        return []
    return parse_layer_spec(spec, n_layers + 1, "--hidden")


def _prompt_tokens_guess(items: list[DatasetItem]) -> int:
    # a rough prompt length for the estimate with --capture-prompt (LLaVA-1.5: ~35 text + 576 image tokens)
    has_image = any(it.image_path is not None for it in items)
    return 64 + (576 if has_image else 0)


def _resolve_device(config: IngestConfig, ctx: RankContext) -> str | None:
    if config.device_map:
        return None
    if config.device is not None:
        if ctx.distributed and config.device == "cuda":
            return f"cuda:{ctx.local_rank}"
        return config.device
    import torch

    return f"cuda:{ctx.local_rank}" if torch.cuda.is_available() else "cpu"


def _store_meta(dataset: Dataset, config: IngestConfig, adapter, hidden_layers: list[int], hidden_dtype: str,
                skip: list[int], ctx: RankContext) -> dict:
    info = dict(adapter.model_info)
    template = getattr(adapter, "prompt_template", "") or ""
    return {
        "model": info,
        "lens": {
            "modes": list(config.lens_modes),
            "dtype": "float32",
            "top_k": config.top_k,
            "dola": config.dola,
            "final_norm": "layers 0..L-1: lm_head(final_norm(h_l)); layer L: the model's own output",
            "raw": "layers 0..L-1: lm_head(h_l); layer L: the model's own output",
            "final_logit_softcapping": info.get("final_logit_softcapping"),
        },
        "generation": {
            "decoding": "greedy",
            "max_new_tokens": config.max_new_tokens,
            "batch_size": config.batch_size,
            "padding": "left",
            "prompt_template": template,
            "prompt_example_text_only": _safe_prompt(adapter, "{prompt}", False),
            "prompt_example_image": _safe_prompt(adapter, "{prompt}", True),
        },
        "dataset": {
            "name": dataset.name,
            "fingerprint": dataset.fingerprint,
            "settings": dataset.settings,
            "n_items": dataset.n_items,
            "limit": config.limit,
        },
        "capture": {
            "hidden_layers": hidden_layers,
            "hidden_dtype": hidden_dtype,
            "skip_layers": skip,
            "capture_prompt": config.capture_prompt,
            "world_size": ctx.world_size,
        },
    }


def _safe_prompt(adapter, prompt: str, has_image: bool) -> str | None:
    try:
        return adapter.build_prompt(prompt, has_image)
    except Exception:  # noqa: BLE001 - a text-only model has no image template
        return None


def _check_compatible(existing: dict, meta: dict, out: str) -> None:
    """A resumed store must have been made with the same model and settings."""
    checks = [("model", "id"), ("model", "revision"), ("model", "dtype"), ("capture", "skip_layers"),
              ("capture", "hidden_layers"), ("capture", "hidden_dtype"), ("capture", "capture_prompt"),
              ("generation", "max_new_tokens"), ("lens", "modes"), ("lens", "top_k"), ("lens", "dola"),
              ("dataset", "name")]
    for section, key in checks:
        old = (existing.get(section) or {}).get(key, None)
        new = meta[section].get(key)
        if section in existing and key in existing[section] and old != new:
            raise IngestError(
                f"store {out} was made with {section}.{key}={old!r}, this run has {new!r}; "
                "write to a new --out (or use the same settings to resume)"
            )


def _open_writer(path: str, meta: dict, adapter, hidden_layers: list[int], hidden_dtype: str):
    from kevo_store import StoreWriter

    existing = _existing_meta(path)
    if existing is not None:
        _check_compatible(existing, meta, path)
    # --hidden none: a store without the hidden array
    w = StoreWriter(path, meta=meta, hidden_size=adapter.hidden_size if hidden_layers else None,
                    hidden_layers=hidden_layers or None, hidden_dtype=hidden_dtype)
    return w


def _existing_meta(path: str) -> dict | None:
    mf = Path(path) / "manifest.json"
    if not mf.is_file():
        return None
    try:
        m = json.loads(mf.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return m.get("meta", m)


def _keys_elsewhere(config: IngestConfig, ctx: RankContext) -> set[str]:
    """Keys a rank must skip besides its own part's: already joined into the store, or committed in
    another part (a re-run with a different number of ranks). Read before any rank writes."""
    keys = committed_keys(config.out)
    pdir = Path(parts_dir(config.out))
    if pdir.is_dir():
        for d in sorted(pdir.iterdir()):
            if d.name != f"rank-{ctx.rank}":
                keys |= committed_keys(str(d))
    return keys


def _run_rank(dataset, items, config, ctx, dims, skip, hidden_layers, estimate, echo, adapter,
              elsewhere: set[str]) -> IngestResult:
    from ingest.capture import CaptureSettings

    if adapter is None:
        from ingest.models import ModelError, load_adapter

        try:
            adapter = load_adapter(config.model, dtype=config.dtype, device=_resolve_device(config, ctx),
                                   device_map=config.device_map, skip_layers=skip or None,
                                   revision=config.revision)
        except ModelError as e:
            raise IngestError(str(e)) from None
    if not getattr(adapter, "multimodal", True) and any(it.image_path is not None for it in items):
        raise IngestError(f"model {config.model!r} ({adapter.family}) is text-only but dataset {dataset.name!r} "
                          "has images: use an LVLM, or `kevo ingest text` for text-only prompts")
    model_dtype = str(adapter.model_info.get("dtype", "float32"))
    hidden_dtype = config.hidden_dtype if config.hidden_dtype != "auto" else (
        "bfloat16" if model_dtype == "bfloat16" else "float16")
    meta = _store_meta(dataset, config, adapter, hidden_layers, hidden_dtype, skip, ctx)
    settings = CaptureSettings(
        max_new_tokens=config.max_new_tokens, lens_modes=tuple(config.lens_modes), top_k=config.top_k,
        hidden_layers=hidden_layers, hidden_dtype=hidden_dtype, dola=config.dola,
        capture_prompt=config.capture_prompt,
    )
    out = part_path(config.out, ctx.rank) if ctx.distributed else config.out
    mine = [it for i, it in enumerate(items) if ctx.owns(i)]
    result = IngestResult(out=config.out, n_items=len(mine), estimate=estimate)
    t0 = time.perf_counter()
    with _open_writer(out, meta, adapter, hidden_layers, hidden_dtype) as writer:
        done = set(writer.committed_keys) | elsewhere
        writer.write_vocab(vocab_table(adapter.tokenizer, adapter.vocab_size))
        pending = [it for it in mine if it.key not in done]
        result.n_skipped = len(mine) - len(pending)
        if result.n_skipped and ctx.rank == 0:
            echo(f"resuming {out}: {result.n_skipped} of {len(mine)} samples already committed")
        bar = _progress(len(pending), config.progress and ctx.rank == 0)
        gen_tokens = 0
        # Generation failures before any success are held back: if the first few samples all fail to
        # generate, the model or the settings are at fault, not the samples, and committing them as
        # errors would make a fixed re-run skip them.
        held: list[dict] = []
        try:
            for start in range(0, len(pending), config.batch_size):
                batch = pending[start : start + config.batch_size]
                rows = _process_batch(batch, adapter, settings, dataset)
                if result.n_samples == 0 and not rows.samples:
                    held += [e for e in rows.errors if e["stage"] == "generate"]
                    rows.errors = [e for e in rows.errors if e["stage"] != "generate"]
                    if len(held) >= ABORT_AFTER_GENERATE_FAILURES:
                        if rows.first_traceback:
                            echo(rows.first_traceback.rstrip())
                        raise IngestError(
                            f"generation failed for the first {len(held)} samples, nothing else succeeded "
                            f"({held[0]['error_type']}: {held[0]['message']}); this is a problem with the model or "
                            "the settings, not the samples: nothing was recorded for them"
                        )
                elif held:
                    rows.errors, held = held + rows.errors, []
                _write(writer, rows)
                result.n_samples += len(rows.samples)
                result.n_errors += len(rows.errors)
                result.n_tokens += rows.n_tokens
                gen_tokens += rows.n_generated
                if bar is not None:
                    bar.update(len(batch))
                    el = max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix_str(f"{gen_tokens / el:.1f} tok/s, {result.n_errors} errors")
            if held:  # fewer than ABORT_AFTER_GENERATE_FAILURES samples in the whole run, all failed
                _write(writer, _BatchRows(errors=held))
                result.n_errors += len(held)
        finally:
            if bar is not None:
                bar.close()
    result.seconds = time.perf_counter() - t0
    if ctx.rank == 0 or not ctx.distributed:
        echo(f"{'rank 0: ' if ctx.distributed else ''}{result.n_samples} samples, {result.n_errors} errors, "
             f"{result.n_tokens} tokens in {result.seconds:.1f}s -> {out}")
    if result.n_errors:
        echo(f"  {result.n_errors} samples failed; see: kevo sql {config.out} \"SELECT * FROM errors\"")
    return result


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="sample", dynamic_ncols=True, file=sys.stderr)


def _process_batch(batch: list[DatasetItem], adapter, settings, dataset: Dataset) -> _BatchRows:
    from ingest.capture import capture

    rows = _BatchRows()
    prepared: list[_Prepared] = []
    for item in batch:
        image = sha = None
        if item.image_path is not None:
            try:
                image = load_image(Path(item.image_path))
                sha = sha256_file(item.image_path)
            except Exception as e:  # noqa: BLE001 - any unreadable image is that sample's error
                rows.errors.append(_error_row(item, "read", e, f"{item.image_path}: cannot read the image ({e})"))
                continue
        try:
            prompt_text = adapter.build_prompt(item.prompt, has_image=image is not None)
        except Exception as e:  # noqa: BLE001
            rows.errors.append(_error_row(item, "prepare", e))
            continue
        prepared.append(_Prepared(item, image, sha, prompt_text))

    results: list[tuple[_Prepared, Any]] = []
    if prepared:
        try:
            caps = capture(adapter, [p.prompt_text for p in prepared], [p.image for p in prepared], settings)
            results = list(zip(prepared, caps))
        except Exception:  # noqa: BLE001 - retry one by one so one bad sample cannot poison the batch
            if len(prepared) == 1:
                results = [(prepared[0], _exc_info())]
            else:
                for p in prepared:
                    try:
                        results.append((p, capture(adapter, [p.prompt_text], [p.image], settings)[0]))
                    except Exception:  # noqa: BLE001
                        results.append((p, _exc_info()))
    for p, cap in results:
        if isinstance(cap, _Failure):
            rows.errors.append(_error_row(p.item, _failed_stage(adapter, p), cap.exc))
            rows.first_traceback = rows.first_traceback or cap.tb
            continue
        try:
            _add_sample(rows, p, cap, adapter, dataset)
        except _LabelError as e:
            rows.errors.append(_error_row(p.item, "label", e.__cause__ or e))
    return rows


def _failed_stage(adapter, p: _Prepared) -> str:
    """'prepare' if the processor alone rejects the sample (e.g. a prompt with a stray image token), else 'generate'."""
    try:
        adapter.encode([p.prompt_text], [p.image])
    except Exception:  # noqa: BLE001
        return "prepare"
    return "generate"


@dataclass
class _Failure:
    exc: BaseException
    tb: str


def _exc_info() -> _Failure:
    exc = sys.exc_info()[1]
    return _Failure(exc, traceback.format_exc())


class _LabelError(Exception):
    pass


def _add_sample(rows: _BatchRows, p: _Prepared, cap, adapter, dataset: Dataset) -> None:
    """Turn one SampleCapture into rows (batch-local token_uids continue from the rows so far)."""
    item = p.item
    tok = adapter.tokenizer
    gen_ids = np.asarray(cap.generated_ids, dtype=np.int64)
    response = cap.response
    role = np.asarray(cap.role).astype(str)
    token_id = np.asarray(cap.token_id, dtype=np.int32)
    step = np.asarray(cap.step, dtype=np.int32)
    position = np.asarray(cap.position, dtype=np.int32)
    n = len(token_id)
    is_gen = role == "generated"
    char_start = np.full(n, -1, np.int32)
    char_end = np.full(n, -1, np.int32)
    starts, ends = token_char_spans(tok, gen_ids.tolist(), response)
    gen_rows = np.flatnonzero(is_gen)
    # generated rows are in step order; step s is the s-th generated token
    char_start[gen_rows] = np.asarray(starts, np.int32)[step[gen_rows]]
    char_end[gen_rows] = np.asarray(ends, np.int32)[step[gen_rows]]
    piece = pieces(tok, token_id.tolist())

    cols: dict[str, Any] = {
        "token_uid": np.arange(rows.n_tokens, rows.n_tokens + n, dtype=np.int64),
        "sample_key": [item.key] * n,
        "step": step,
        "position": position,
        "role": role.tolist(),
        "token_id": token_id,
        "piece": piece,
        "char_start": pa.array(char_start, mask=~is_gen),
        "char_end": pa.array(char_end, mask=~is_gen),
    }
    for name in ("patch_row", "patch_col"):  # -1 = not an image token / no grid: null
        v = np.asarray(getattr(cap, name), dtype=np.int16)
        cols[name] = pa.array(v, pa.int16(), mask=v < 0)

    metrics = None
    if dataset.labeler is not None:
        gen_table = pa.table({
            "step": pa.array(step[gen_rows], pa.int32()),
            "token_id": pa.array(token_id[gen_rows], pa.int32()),
            "piece": pa.array([piece[i] for i in gen_rows], pa.string()),
            "char_start": pa.array(char_start[gen_rows], pa.int32()),
            "char_end": pa.array(char_end[gen_rows], pa.int32()),
        })
        try:
            extra, metrics = dataset.labeler(item, response, gen_table)
            for name, values in (extra or {}).items():
                if name not in schema.TOKENS.names or name in cols:
                    raise ValueError(f"labeler returned column {name!r}, which is not a labelable tokens column")
                values = list(values)
                if len(values) != len(gen_rows):
                    raise ValueError(f"labeler column {name!r} has {len(values)} values for {len(gen_rows)} tokens")
                full = [None] * n
                for r, v in zip(gen_rows.tolist(), values):
                    full[r] = v
                cols[name] = pa.array(full, schema.TOKENS.field(name).type)
            if metrics is not None:
                metrics = json.dumps(metrics, sort_keys=True, default=_json_default)
        except Exception as e:
            raise _LabelError(str(e)) from e

    tokens = _table(cols, schema.TOKENS, exclude=("sample_id",), extra=[pa.field("sample_key", pa.string())])
    uids = cols["token_uid"]
    rows.layers.append(_layers_table(cap.lens, uids))
    t = _topk_table(cap.lens, uids)
    if t is not None:
        rows.topk.append(t)
    if cap.hidden is not None:
        rows.hidden.append(np.asarray(cap.hidden))
    rows.tokens.append(tokens)
    rows.samples.append({
        "sample_key": item.key,
        "dataset": item.dataset,
        "item_id": item.item_id,
        "image_id": item.image_name,
        "image_sha256": p.image_sha256,
        "prompt": item.prompt,
        "prompt_text": p.prompt_text,
        "response": response,
        "n_prompt_tokens": int(cap.n_prompt_tokens),
        "n_generated": int(len(gen_ids)),
        "stop_reason": cap.stop_reason,
        "annotations": json.dumps(item.annotations, sort_keys=True, default=_json_default),
        "metrics": metrics,
    })
    rows.n_tokens += n
    rows.n_generated += int(len(gen_ids))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray,)):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _table(cols: dict, sch: pa.Schema, exclude=(), extra=()) -> pa.Table:
    fields = [f for f in sch if f.name not in exclude] + list(extra)
    n = len(next(iter(cols.values())))
    arrays = []
    for f in fields:
        if f.name in cols:
            v = cols[f.name]
            arrays.append(v.cast(f.type) if isinstance(v, pa.Array) else pa.array(v, f.type))
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


LENS_COLUMNS = ("p_out", "logit_out", "rank_out", "top1_id", "top1_prob", "entropy", "js_prev", "js_final",
                "kl_final", "js_dola")


def _layers_table(lens: dict, uids: np.ndarray) -> pa.Table:
    """(token, lens, layer) rows in the table's key order, from {mode: ingest.lens.LensResult}."""
    modes = sorted(lens)  # key order: 'final_norm' < 'raw'
    n = len(uids)
    n_l = lens[modes[0]].p_out.shape[1]
    shape = (n, len(modes), n_l)
    layer = np.broadcast_to(np.arange(n_l, dtype=np.int16)[None, None, :], shape).ravel()
    cols: dict[str, Any] = {
        "token_uid": np.broadcast_to(uids[:, None, None], shape).ravel(),
        "lens": pa.array(np.broadcast_to(np.array(modes, dtype=object)[None, :, None], shape).ravel(), pa.string()),
        "layer": layer,
    }
    for c in LENS_COLUMNS:
        values = [getattr(lens[m], c) for m in modes]
        if any(v is None for v in values):
            continue  # js_dola unless --dola: null
        ft = schema.LAYERS.field(c).type
        stacked = np.stack([np.asarray(v) for v in values], axis=1).ravel()
        if pa.types.is_floating(ft):
            stacked = stacked.astype(np.float32)
            # NaN marks "no value" (js_prev/js_dola at layer 0): store null
            cols[c] = pa.array(stacked, ft, mask=np.isnan(stacked)) if schema.LAYERS.field(c).nullable \
                else pa.array(stacked, ft)
        else:
            cols[c] = pa.array(stacked.astype(ft.to_pandas_dtype()), ft)
    return _table(cols, schema.LAYERS)


def _topk_table(lens: dict, uids: np.ndarray) -> pa.Table | None:
    """(token, lens, layer, rank) rows in the table's key order."""
    modes = sorted(lens)
    ids = np.stack([np.asarray(lens[m].topk_ids) for m in modes], axis=1)  # (n, M, L+1, k)
    probs = np.stack([np.asarray(lens[m].topk_probs) for m in modes], axis=1)
    shape = ids.shape
    k = shape[-1]
    if k == 0 or ids.size == 0:
        return None
    cols = {
        "token_uid": np.broadcast_to(uids[:, None, None, None], shape).ravel(),
        "lens": pa.array(np.broadcast_to(np.array(modes, dtype=object)[None, :, None, None], shape).ravel(),
                         pa.string()),
        "layer": np.broadcast_to(np.arange(shape[2], dtype=np.int16)[None, None, :, None], shape).ravel(),
        "rank": np.broadcast_to(np.arange(1, k + 1, dtype=np.int8)[None, None, None, :], shape).ravel(),
        "vocab_id": ids.astype(np.int32).ravel(),
        "prob": probs.astype(np.float32).ravel(),
    }
    return _table(cols, schema.TOPK)


def _write(writer, rows: _BatchRows) -> None:
    """One atomic commit: concatenate the batch's per-sample tables (token_uids are already batch-local)."""
    samples = pa.Table.from_pylist(rows.samples, schema=_samples_in_schema()) if rows.samples else None
    tokens = pa.concat_tables(rows.tokens) if rows.tokens else None
    layers = pa.concat_tables(rows.layers) if rows.layers else None
    topk = pa.concat_tables(rows.topk) if rows.topk else None
    hidden = np.concatenate(rows.hidden, axis=0) if rows.hidden else None
    errors = pa.Table.from_pylist(rows.errors, schema=schema.ERRORS) if rows.errors else None
    if samples is None and errors is None:
        return
    writer.write_batch(samples=samples, tokens=tokens, layers=layers, topk=topk, hidden=hidden, errors=errors)


def _samples_in_schema() -> pa.Schema:
    return pa.schema([f for f in schema.SAMPLES if f.name != "sample_id"])


# --------------------------------------------------------------------------------------------
# joining the ranks' parts


def _join(dataset, items, config, ctx: RankContext, echo, result, all_ok: bool):
    if not all_ok:
        raise IngestError(f"a rank failed; the parts are kept under {parts_dir(config.out)} and a re-run "
                          "resumes every part")
    if ctx.rank == 0:
        import shutil

        from kevo_store.join import join_parts

        pdir = Path(parts_dir(config.out))
        parts = sorted((str(d) for d in pdir.iterdir() if (d / "manifest.json").is_file()),
                       key=lambda d: int(d.rsplit("-", 1)[1]) if d.rsplit("-", 1)[1].isdigit() else 1 << 30)
        stats = join_parts(parts, config.out, [it.key for it in items])
        echo(f"joined {len(parts)} parts into {config.out}: {stats}")
        shutil.rmtree(pdir)  # everything is in the store now (a crash before this line re-joins nothing twice)
    ctx.barrier()
    return result



