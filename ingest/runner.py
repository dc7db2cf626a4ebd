"""The ingest runner: dataset items -> batches -> capture -> labels -> one atomic store commit per batch.

``run_ingest(dataset, config)`` is the one entry point (``kevo ingest <dataset>`` calls it through
:func:`ingest.cli.run_ingest_command`). For every batch of ``config.batch_size`` items it

1. reads the images (an image that does not decode becomes an ``errors`` row, stage 'read'),
2. templates the prompts (``adapter.build_prompt``; ``samples.prompt_text`` keeps that exact text),
3. runs :func:`ingest.capture.capture` (greedy generation + hidden states + logit lens); a batch
   that fails is retried one sample at a time so that one bad sample cannot poison the others,
4. finds the piece and the character span in the response of every generated token
   (:mod:`ingest.spans`),
5. calls the dataset's labeler, if any (word/object labels, per-sample metrics),
6. turns the captures into table rows (:mod:`ingest.rows`) and writes
   samples/tokens/layers/topk/hidden/errors with ``StoreWriter.write_batch`` (one commit).

Resume is the default: items whose key is already committed (as a sample or an error) are skipped.

Several processes (``torchrun``/``accelerate launch``: ``RANK``/``WORLD_SIZE`` in the environment)
split the items by index (item i goes to rank i % world_size); rank K writes the part store
``OUT.parts/rank-K``; after a barrier rank 0 joins the parts into ``OUT`` in the dataset's item
order (:mod:`ingest.distributed`, :func:`kevo_store.join.join_parts`), so the result equals a
one-process run.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ingest.datasets.base import Dataset, DatasetItem, sha256_file
from ingest.distributed import (
    RankContext,
    committed_keys,
    join_ranks,
    keys_elsewhere,
    keys_in_parts,
    part_path,
    parts_dir,
)
from ingest.rows import BatchRows, LabelError, Prepared, add_sample, write_rows
from ingest.spans import pieces, token_char_spans, vocab_table
from kevo_store import schema
from kevo_store.errors import KevoError
from kevo_store.layerspec import parse_layer_list

# If this many samples fail to generate before any succeeds, the run stops (see _run_rank).
ABORT_AFTER_GENERATE_FAILURES = 3


class IngestError(KevoError):
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
    force: bool = False
    """Start even if the disk estimate exceeds the free space."""
    retry_errors: bool = False
    """Run the samples recorded in the errors table again (each error row leaves with its new commit)."""
    responses: str | None = None
    """Teacher forcing: a JSON/JSONL file of {"id", "response"}; each item's given response is scored
    (one forward pass) instead of generating one (ingest/forced.py). Items without a response are left out."""

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
    return parse_layer_list(spec, n=n, option=option, error=IngestError)


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
    if config.top_k > dims.vocab_size:  # checked here: after loading, every sample would become an error row
        raise IngestError(f"--top-k {config.top_k}: the model's vocabulary has {dims.vocab_size} tokens "
                          f"(config.json vocab_size); use at most {dims.vocab_size}")
    skip = parse_layer_spec(config.skip_layers, dims.n_layers, "--skip-layers") if config.skip_layers else []
    if len(skip) >= dims.n_layers:
        raise IngestError(f"--skip-layers {config.skip_layers!r} removes all {dims.n_layers} decoder layers")
    n_layers = dims.n_layers - len(skip)
    hidden_layers = _hidden_layers(config.hidden, n_layers)

    items = list(dataset.items)
    forced: dict[str, str] | None = None
    if config.responses:
        from ingest.forced import match_items, read_responses

        forced = match_items(read_responses(config.responses), items, config.responses, dataset.name)
        n_all = len(items)
        items = [it for it in items if it.key in forced]
        if ctx.rank == 0:
            echo(f"teacher forcing: scoring {len(items)} given responses from {config.responses} "
                 f"({n_all} items in dataset {dataset.name})")
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
    already = committed_keys(config.out) | keys_in_parts(config.out) if ctx.rank == 0 else set()
    if config.retry_errors:
        if ctx.distributed:
            raise IngestError("--retry-errors runs in one process (re-run the errored samples without torchrun)")
        already -= _error_keys(config.out)
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
    if n_todo == 0 and items and not ctx.distributed and _closed(config.out):
        n_err = _n_errors(config.out)
        echo(f"{config.out} is complete: all {len(items)} samples are committed"
             + (f" ({n_err} as errors; see: kevo sql {config.out} \"SELECT * FROM errors\")" if n_err else "")
             + "; nothing to do")
        return None
    _check_free_space(config, estimate, echo)

    # the ranks only exchange a barrier and one flag: gloo (CPU tensors) serves GPU runs as well
    ctx.init("gloo")
    try:
        elsewhere: set[str] = set()
        if ctx.distributed:
            elsewhere = keys_elsewhere(config.out, ctx.rank)
            ctx.barrier()  # nobody writes (or compacts) a part while another rank reads it
        ok = False
        result = None
        try:
            result = _run_rank(dataset, items, config, ctx, dims, skip, hidden_layers, estimate, echo, adapter,
                               elsewhere, forced)
            ok = True
        finally:
            all_ok = ctx.all_ok(ok)
        if ctx.distributed:
            join_ranks(ctx, config.out, [it.key for it in items], all_ok, echo)
        return result
    finally:
        ctx.shutdown()


def _error_keys(out: str) -> set[str]:
    import pyarrow.parquet as pq

    try:
        m = json.loads((Path(out) / "manifest.json").read_text())
    except (OSError, ValueError):
        return set()
    files = [str(Path(out) / f) for f in m["tables"]["errors"]["files"]]
    return set(pq.read_table(files, columns=["sample_key"]).column(0).to_pylist()) if files else set()


def _closed(out: str) -> bool:
    try:
        return json.loads((Path(out) / "manifest.json").read_text()).get("state") == "closed"
    except (OSError, ValueError):
        return False


def _n_errors(out: str) -> int:
    try:
        return int(json.loads((Path(out) / "manifest.json").read_text())["tables"]["errors"]["rows"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _check_free_space(config: IngestConfig, estimate: DiskEstimate, echo) -> None:
    """Refuse (or, with --force, warn) when the disk estimate exceeds the free space under --out."""
    import shutil

    p = Path(config.out).absolute()
    while not p.exists():
        p = p.parent
    free = shutil.disk_usage(p).free
    need = estimate.total_bytes
    if need <= free:
        return
    msg = (f"the disk estimate ({_human(need)}, an upper bound) exceeds the {_human(free)} free under {p}")
    if not config.force:
        raise IngestError(f"{msg}; free space, lower --max-new-tokens/--hidden, or pass --force to start anyway "
                          "(a full disk stops the run; what was committed is kept)")
    echo(f"warning: {msg}; going on (--force)")


def _check_out(out: str) -> None:
    """--out must be a store, or not exist yet, or be an empty directory (checked before loading the model)."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise IngestError(f"--out {out} exists and is not a directory")
    for parent in p.absolute().parents:  # the first existing ancestor: a directory we may write in
        if parent.exists():
            if not parent.is_dir():
                raise IngestError(f"--out {out}: {parent} is a file, not a directory")
            if not p.exists() and not os.access(parent, os.W_OK | os.X_OK):
                raise IngestError(f"--out {out}: {parent} is not writable (read-only file system or permissions)")
            break
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
        if config.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                why = ("this torch was built without CUDA" if torch.version.cuda is None
                       else "no CUDA device is visible")
                raise IngestError(f"--device {config.device}: {why} (torch {torch.__version__}); "
                                  "use --device cpu, or install a CUDA build of torch")
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
            # Not in the strict `generation` section: a run that ran out of memory must be able to
            # resume with a smaller batch (left padding changes results only at fp rounding level).
            "batch_size": config.batch_size,
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
              ("generation", "max_new_tokens"), ("generation", "decoding"), ("lens", "modes"), ("lens", "top_k"), ("lens", "dola"),
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


def _run_rank(dataset, items, config, ctx, dims, skip, hidden_layers, estimate, echo, adapter,
              elsewhere: set[str], forced: dict[str, str] | None = None) -> IngestResult:
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
    if forced is not None:
        from ingest.datasets.base import sha256_file

        # teacher forcing: the decoding is the given responses (a resumed store must agree)
        meta["generation"]["decoding"] = "teacher-forced"
        meta["generation"]["responses"] = {"file": str(config.responses), "sha256": sha256_file(config.responses),
                                           "n": len(forced)}
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
        if config.retry_errors:
            retried = writer.retry_errors([it.key for it in mine])
            if retried:
                echo(f"retrying {len(retried)} samples recorded as errors in {out}")
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
        overflow: dict[int, int] = {}
        max_pos, long_warned = _max_positions(adapter), False
        try:
            for start in range(0, len(pending), config.batch_size):
                batch = pending[start : start + config.batch_size]
                rows = _process_batch(batch, adapter, settings, dataset, forced)
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
                write_rows(writer, rows)
                _warn_fp16_overflow(rows.fp16_overflow, overflow, echo)
                long_warned = long_warned or _warn_positions(rows, config.max_new_tokens, max_pos, echo)
                result.n_samples += len(rows.samples)
                result.n_errors += len(rows.errors)
                result.n_tokens += rows.n_tokens
                gen_tokens += rows.n_generated
                if bar is not None:
                    bar.update(len(batch))
                    el = max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix_str(f"{gen_tokens / el:.1f} tok/s, {result.n_errors} errors")
            if held:  # fewer than ABORT_AFTER_GENERATE_FAILURES samples in the whole run, all failed
                write_rows(writer, BatchRows(errors=held))
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
    if overflow:
        echo(_fp16_overflow_message(overflow, "in this run"))
    return result


def _max_positions(adapter) -> int | None:
    cfg = getattr(getattr(adapter, "model", None), "config", None)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n = getattr(text, "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def _warn_positions(rows: BatchRows, max_new: int, max_pos: int | None, echo) -> bool:
    """Warn (once) when a prompt plus the generation budget runs past the model's positions."""
    if not max_pos:
        return False
    long = [r for r in rows.samples if (r.get("n_prompt_tokens") or 0) + max_new > max_pos]
    if not long:
        return False
    r = max(long, key=lambda r: r["n_prompt_tokens"])
    echo(f"warning: sample {r['sample_key']}: a {r['n_prompt_tokens']}-token prompt plus --max-new-tokens {max_new} "
         f"runs past the model's {max_pos} positions (max_position_embeddings); what it generates beyond them "
         "is unreliable: shorten the prompt or lower --max-new-tokens")
    return True


def _fp16_overflow_message(counts: dict[int, int], when: str) -> str:
    layers = sorted(k for k, v in counts.items() if v)
    span = f"layer {layers[0]}" if len(layers) == 1 else f"layers {layers[0]}-{layers[-1]} ({len(layers)} layers)"
    worst = max(layers, key=lambda k: counts[k])
    return (f"warning: {sum(counts.values()):,} hidden-state values {when} exceed float16's range (|x| > 65504) "
            f"and are stored as inf, at {span}, most at layer {worst} ({counts[worst]:,}); "
            "re-ingest with --hidden-dtype bfloat16 (counts: manifest capture.float16_overflow)")


def _warn_fp16_overflow(batch: dict[int, int], total: dict[int, int], echo) -> None:
    """Warn at the first batch that overflows float16 (the summary at the end gives the totals)."""
    if not any(batch.values()):
        return
    first = not total
    for k, v in batch.items():
        total[k] = total.get(k, 0) + v
    if first:
        echo(_fp16_overflow_message(batch, "in this batch"))


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="sample", dynamic_ncols=True, file=sys.stderr)


def _process_batch(batch: list[DatasetItem], adapter, settings, dataset: Dataset,
                   forced: dict[str, str] | None = None) -> BatchRows:
    from ingest.capture import capture

    rows = BatchRows()
    prepared: list[Prepared] = []
    for item in batch:
        image = sha = None
        if getattr(item, "error", None):
            rows.errors.append(_error_row(item, "read", ValueError(item.error), item.error))
            continue
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
        prepared.append(Prepared(item, image, sha, prompt_text))

    forced_ids: dict[str, list[int]] = {}
    if forced is not None:
        from ingest.forced import ForcedResponseError, response_ids

        kept = []
        for p in prepared:
            try:
                forced_ids[p.item.key] = response_ids(adapter, forced[p.item.key])
                kept.append(p)
            except ForcedResponseError as e:
                rows.errors.append(_error_row(p.item, "prepare", e))
        prepared = kept

    def capture_(ps: list[Prepared]):
        texts, images = [p.prompt_text for p in ps], [p.image for p in ps]
        if forced is None:
            return capture(adapter, texts, images, settings)
        from ingest.forced import capture_forced

        return capture_forced(adapter, texts, images, [forced_ids[p.item.key] for p in ps], settings)

    results: list[tuple[Prepared, Any]] = []
    if prepared:
        try:
            caps = capture_(prepared)
            results = list(zip(prepared, caps))
        except Exception:  # noqa: BLE001 - retry one by one so one bad sample cannot poison the batch
            if len(prepared) == 1:
                results = [(prepared[0], _exc_info())]
            else:
                for p in prepared:
                    try:
                        results.append((p, capture_([p])[0]))
                    except Exception:  # noqa: BLE001
                        results.append((p, _exc_info()))
    for p, cap in results:
        if isinstance(cap, _Failure):
            rows.errors.append(_error_row(p.item, _failed_stage(adapter, p), cap.exc))
            rows.first_traceback = rows.first_traceback or cap.tb
            continue
        try:
            add_sample(rows, p, cap, adapter, dataset)
        except LabelError as e:
            rows.errors.append(_error_row(p.item, "label", e.__cause__ or e))
    return rows


def _failed_stage(adapter, p: Prepared) -> str:
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


__all__ = ["IngestConfig", "IngestError", "IngestResult", "DiskEstimate", "RankContext", "estimate_disk",
           "model_dims", "parse_layer_spec", "part_path", "parts_dir", "pieces", "run_ingest", "token_char_spans",
           "vocab_table"]
