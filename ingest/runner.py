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

The runner keeps the orchestration; each concern lives in its own module: the options
(:mod:`ingest.config`), the layer options (:mod:`ingest.layers`), the checkpoint's dimensions
(:mod:`ingest.dims`), the disk estimate (:mod:`ingest.estimate`), the manifest sections
(:mod:`ingest.meta`), whether the store may be continued (:mod:`ingest.resume`, checked before the
model loads) and one batch with its per-sample retries (:mod:`ingest.batch`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ingest.background import BackgroundCommits
from ingest.batch import process_batch
from ingest.config import IngestConfig, IngestError
from ingest.datasets.base import Dataset
from ingest.dims import model_dims
from ingest.distributed import (
    RankContext,
    committed_keys,
    join_ranks,
    keys_elsewhere,
    keys_in_parts,
    part_path,
)
from ingest.estimate import DiskEstimate, estimate_disk, prompt_tokens_guess
from ingest.layers import hidden_layers as parse_hidden_layers
from ingest.layers import parse_layer_spec
from ingest.meta import planned_meta, store_meta
from ingest.resume import check_resume
from ingest.rows import BatchRows, write_rows
from ingest.spans import vocab_table
from kevo_store.units import human_bytes

# If this many samples fail to generate before any succeeds, the run stops (see _run_rank).
ABORT_AFTER_GENERATE_FAILURES = 3


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
    config.check()

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
    hidden_layers = parse_hidden_layers(config.hidden, n_layers)

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
    # the weights' fingerprint (cached) decides, with the data and the settings, whether this run may
    # continue the store: checked now, before minutes of loading a model
    from ingest.models.fingerprint import fingerprint as model_fingerprint

    fingerprint = model_fingerprint(dims.path)
    check_resume(config.out, planned_meta(dataset, config, fingerprint, n_layers, skip, hidden_layers, forced))
    prompt_guess = prompt_tokens_guess(items) if config.capture_prompt else 0
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
            result = _run_rank(dataset, items, config, ctx, fingerprint, skip, hidden_layers, estimate, echo,
                               adapter, elsewhere, forced)
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
    msg = (f"the disk estimate ({human_bytes(need)}, an upper bound) exceeds the {human_bytes(free)} free under {p}")
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


def _open_writer(path: str, meta: dict, adapter, hidden_layers: list[int], hidden_dtype: str,
                 hidden_codec: str = "none"):
    from kevo_store import StoreWriter

    # the writer applies the resume policy again, now with what only the loaded model says
    # (its family, template and dimensions); --hidden none: a store without the hidden array
    return StoreWriter(path, meta=meta, hidden_size=adapter.hidden_size if hidden_layers else None,
                       hidden_layers=hidden_layers or None, hidden_dtype=hidden_dtype, hidden_codec=hidden_codec)


def _run_rank(dataset, items, config, ctx, fingerprint, skip, hidden_layers, estimate, echo, adapter,
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
    meta = store_meta(dataset, config, adapter, fingerprint, hidden_layers, hidden_dtype, skip, ctx.world_size,
                      forced)
    settings = CaptureSettings(
        max_new_tokens=config.max_new_tokens, lens_modes=tuple(config.lens_modes), top_k=config.top_k,
        hidden_layers=hidden_layers, hidden_dtype=hidden_dtype, dola=config.dola,
        capture_prompt=config.capture_prompt,
    )
    out = part_path(config.out, ctx.rank) if ctx.distributed else config.out
    mine = [it for i, it in enumerate(items) if ctx.owns(i)]
    result = IngestResult(out=config.out, n_items=len(mine), estimate=estimate)
    t0 = time.perf_counter()
    with _open_writer(out, meta, adapter, hidden_layers, hidden_dtype, config.hidden_codec) as writer:
        for notice in writer.notices:
            echo(f"warning: {notice}")
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
        commits = BackgroundCommits(writer)  # batch k is committed while the model computes batch k+1
        try:
            for start in range(0, len(pending), config.batch_size):
                batch = pending[start : start + config.batch_size]
                rows = process_batch(batch, adapter, settings, dataset, forced)
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
                commits.submit(rows)
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
            commits.wait()
            if held:  # fewer than ABORT_AFTER_GENERATE_FAILURES samples in the whole run, all failed
                write_rows(writer, BatchRows(errors=held))
                result.n_errors += len(held)
        finally:
            commits.close()
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


__all__ = ["DiskEstimate", "IngestConfig", "IngestError", "IngestResult", "estimate_disk", "model_dims",
           "run_ingest"]
