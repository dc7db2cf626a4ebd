"""Benchmark 3: hidden-state write throughput of StoreWriter against the raw sequential write speed of
the same disk, measured in the same run (interleaved).

Both sides write the same bytes (random fp16 activations of LLaVA-1.5-7B's shape: 33 layers x 4,096)
into bench/out, and both are timed until the data is on the disk:

- ``raw``: one file, 8 MiB ``write`` calls, then ``fsync`` (what ``dd conv=fsync`` measures);
- ``store``: ``StoreWriter.write_batch`` per batch of tokens (Zarr chunks of 64 tokens x 1 layer,
  zstd level 1, sha256 of every chunk, one atomic commit per batch), ``close`` (final chunk, index
  merge, compaction of the small tables), then ``syncfs`` of the file system (the writer itself
  fsyncs its Parquet files and manifest, not the Zarr chunks). ``syncfs`` also flushes whatever
  other processes left dirty on the same file system, so on a shared machine this side is
  pessimistic; fsyncing each chunk file instead costs one disk flush per 64 tokens x 1 layer.

Also reported: the store as its own commit protocol leaves it (no final flush), and both sides
without any flush (page-cache speed).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from bench.common import r3, scratch

MIB = 1 << 20


def _syncfs(root: Path) -> None:
    """Flush the file system holding ``root`` (Linux syncfs; os.sync elsewhere)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(root, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        pass
    os.sync()


def _raw(path: Path, blocks: list[np.ndarray], fsync: bool) -> float:
    t = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for b in blocks:
            mv = memoryview(b).cast("B")
            for s in range(0, len(mv), 8 * MIB):
                f.write(mv[s : s + 8 * MIB])
        if fsync:
            os.fsync(f.fileno())
    return time.perf_counter() - t


def _store(path: Path, blocks: list[np.ndarray], layers: int, d: int, fsync: bool) -> float:
    from kevo_store import StoreWriter

    meta = {"model": {"id": "bench-hidden", "n_layers": layers - 1, "hidden_size": d},
            "lens": {"modes": ["final_norm"], "top_k": 0}}
    t = time.perf_counter()
    with StoreWriter(path, meta=meta, hidden_size=d, hidden_layers=list(range(layers)), hidden_dtype="float16") as w:
        for bi, h in enumerate(blocks):
            n = len(h)
            key = f"bench:{bi}"
            w.write_batch(samples={"sample_key": [key], "dataset": ["bench"]},
                          tokens={"token_uid": np.arange(n, dtype=np.int64), "sample_key": [key] * n,
                                  "step": np.arange(n, dtype=np.int32), "position": np.arange(n, dtype=np.int32),
                                  "role": ["generated"] * n, "token_id": np.zeros(n, np.int32)},
                          hidden=h)
    if fsync:
        _syncfs(Path(path))
    return time.perf_counter() - t


def stages(blocks: list[np.ndarray], work: Path, reps: int = 2) -> dict:
    """What each chunk costs, stage by stage, on one core (no threads): the passes the store's format asks
    of every 64-token x 1-layer chunk, as kevo_store.hidden's writer does them. Best of ``reps``."""
    import hashlib

    from numcodecs import Zstd

    from kevo_store.hidden import CHUNK_TOKENS

    codec = Zstd(level=1, checksum=False)
    best: dict[str, float] = {}
    for r in range(reps):
        root = work / f"stages-{r}"
        acc = dict.fromkeys(("gather", "zstd", "sha256", "mkdir", "open_write_close"), 0.0)
        ci = 0
        for h in blocks:
            for lo in range(0, len(h) - CHUNK_TOKENS + 1, CHUNK_TOKENS):
                os.makedirs(root / str(ci), exist_ok=True)
                for j in range(h.shape[1]):
                    t0 = time.perf_counter()
                    c = np.ascontiguousarray(h[lo: lo + CHUNK_TOKENS, j])
                    t1 = time.perf_counter()
                    e = codec.encode(c)
                    t2 = time.perf_counter()
                    hashlib.sha256(e).hexdigest()
                    t3 = time.perf_counter()
                    d = root / str(ci) / str(j)
                    os.mkdir(d)
                    t4 = time.perf_counter()
                    with open(d / "0", "wb", buffering=0) as f:
                        f.write(e)
                    t5 = time.perf_counter()
                    for k, a, b in (("gather", t0, t1), ("zstd", t1, t2), ("sha256", t2, t3), ("mkdir", t3, t4),
                                    ("open_write_close", t4, t5)):
                        acc[k] += b - a
                ci += 1
        for k, v in acc.items():
            best[k] = min(best.get(k, float("inf")), v)
        shutil.rmtree(root, ignore_errors=True)
    nbytes = sum(b.nbytes for b in blocks)
    total = sum(best.values())
    return {"seconds": {k: r3(v, 4) for k, v in best.items()}, "total_s": r3(total, 4),
            "mib_per_s_one_core": r3(nbytes / total / MIB)}


def run(tokens: int, batch_tokens: int, layers: int = 33, d: int = 4096, reps: int = 2) -> dict:
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((min(batch_tokens, tokens - s), layers, d), dtype=np.float32).astype(np.float16)
              for s in range(0, tokens, batch_tokens)]
    nbytes = sum(b.nbytes for b in blocks)
    work = scratch("hidden-write")
    times: dict[str, list[float]] = {"raw_fsync": [], "store_fsync": [], "store_commit": [], "raw_buffered": []}
    for r in range(reps):
        for name in times:
            fsync = name.endswith("fsync")  # store_commit: the writer's own protocol, no extra flush
            target = work / f"{name}-{r}"
            _syncfs(work)  # untimed: start every arm with no dirty pages (ours or other processes')
            if name.startswith("raw"):
                times[name].append(_raw(target, blocks, fsync))
            else:
                times[name].append(_store(target, blocks, layers, d, fsync))
            stored = sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) if target.is_dir() else None
            if stored is not None:
                stored_bytes = stored
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink()
    mbps = {k: r3(nbytes / min(v) / MIB) for k, v in times.items()}
    per_stage = stages(blocks, work)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "tokens": tokens, "layers": layers, "hidden": d, "batch_tokens": batch_tokens, "reps": reps,
        "bytes_fp16": nbytes, "bytes_on_disk_store": stored_bytes,
        "times_s": {k: [r3(x, 4) for x in v] for k, v in times.items()},
        "mib_per_s": mbps,
        "ratio_store_vs_raw": r3(mbps["store_fsync"] / mbps["raw_fsync"]),
        "ratio_store_commit_vs_raw": r3(mbps["store_commit"] / mbps["raw_fsync"]),
        "target_ratio": 0.5,
        "met_target": mbps["store_fsync"] / mbps["raw_fsync"] >= 0.5,
        "chunk_stages_one_core": per_stage,
    }
