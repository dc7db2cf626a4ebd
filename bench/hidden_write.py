"""Benchmark 3: hidden-state write and read throughput of the store against the raw sequential write
and read speed of the same disk, measured in the same run (interleaved).

Both sides write the same bytes (random fp16 activations of LLaVA-1.5-7B's shape: 33 layers x 4,096)
into bench/out, and both are timed until the data is on the disk:

- ``raw``: one file, 8 MiB ``write`` calls, then ``fsync`` (what ``dd conv=fsync`` measures);
- ``store``: ``StoreWriter.write_batch`` per batch of tokens (format v2: shards of 512 tokens x 1
  layer, no compressor, crc32c per inner chunk, a tree digest over them per shard, one atomic commit
  per batch; rows that do not complete a shard go to the commit's tail file first, not fsynced),
  ``close`` (final shard, index merge, compaction of the small tables), then ``syncfs`` of the file
  system. The writer fsyncs every file it commits but the tails itself; ``syncfs`` also flushes whatever
  other processes left dirty on the same file system, so on a shared machine this side is pessimistic.
  Two batch sizes, the same bytes: ``batch_tokens`` (a multiple of the shard: every row goes straight
  into its shard) and ``unaligned_tokens`` (800: a batch of 8 captions of 100 tokens, as `kevo ingest`
  commits them, not a multiple of the shard: some rows of each batch go through a tail first).

Also reported (``amber=True``): the same read comparison on a store of AMBER's 100,400 tokens (two layers
of 4,096, not all 33). And: the store as its own commit protocol leaves it (no final flush), both sides without
any flush (page-cache speed), and reads: one layer across every token through ``Store.hidden`` (every
shard checked) against a raw sequential read of the same number of bytes (8 MiB reads into a reused
buffer, the target's baseline; and one read into a new array of the layer's size, which, like
a copied result, must first be faulted into memory: once from ``np.empty``, once from
``kevo_store.memory.new_array``, the huge-page mapping ``Store.hidden`` copies into when it cannot map
the shards' chunks), and 1,000 random tokens
at one layer. Reads run on a warm page cache (dropping it needs root on a shared machine), both sides alike.
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


def stages(blocks: list[np.ndarray], work: Path, reps: int = 2, shard_tokens: int | None = None,
           chunk_tokens: int | None = None) -> dict:
    """What each shard costs, stage by stage, on one core (no threads): the passes format v2 asks of
    every shard-tokens x 1-layer shard, as kevo_store/shards.py does them, and, for comparison, the
    sha256 of every byte that the tree digest replaced. Best of ``reps``."""
    import hashlib

    from kevo_store import shards as sh

    shard_tokens = shard_tokens or sh.SHARD_TOKENS
    chunk_tokens = chunk_tokens or sh.CHUNK_TOKENS
    h = np.concatenate(blocks)
    n = len(h) - len(h) % shard_tokens
    best: dict[str, float] = {}
    sha_best = float("inf")
    for r in range(reps):
        root = work / f"stages-{r}"
        root.mkdir(parents=True, exist_ok=True)
        acc = dict.fromkeys(("gather", "crc32c", "tree_digest", "write_fsync"), 0.0)
        sha = 0.0
        for lo in range(0, n, shard_tokens):
            for j in range(h.shape[1]):
                t0 = time.perf_counter()
                block = np.ascontiguousarray(h[lo: lo + shard_tokens, j])
                t1 = time.perf_counter()
                pieces = sh.shard_pieces(block, shard_tokens, chunk_tokens)
                t2 = time.perf_counter()
                pieces.digest()
                t3 = time.perf_counter()
                d = hashlib.sha256()  # not part of the format any more: what it would cost
                for p in pieces:
                    d.update(p)
                t_sha = time.perf_counter()
                sha += t_sha - t3
                fd = os.open(root / f"{lo}-{j}", os.O_WRONLY | os.O_CREAT, 0o644)
                os.writev(fd, pieces)
                os.fsync(fd)
                os.close(fd)
                t4 = time.perf_counter()
                for k, a, b in (("gather", t0, t1), ("crc32c", t1, t2), ("tree_digest", t2, t3),
                                ("write_fsync", t_sha, t4)):
                    acc[k] += b - a
        for k, v in acc.items():
            best[k] = min(best.get(k, float("inf")), v)
        sha_best = min(sha_best, sha)
        shutil.rmtree(root, ignore_errors=True)
    nbytes = n * h.shape[1] * h.shape[2] * h.itemsize
    total = sum(best.values())
    return {"seconds": {k: r3(v, 4) for k, v in best.items()}, "total_s": r3(total, 4), "bytes": nbytes,
            "shard_tokens": shard_tokens, "mib_per_s_one_core": r3(nbytes / total / MIB),
            "sha256_every_byte_s": r3(sha_best, 4)}


def reads(path: Path, work: Path, reps: int, layer: int = 16, n_random: int = 1000) -> dict:
    """One layer across every token (Store.hidden, checked) vs a raw sequential read of as many bytes;
    ``n_random`` random tokens at one layer."""
    from kevo_store import open_store
    from kevo_store.memory import new_array

    rng = np.random.default_rng(1)
    with open_store(path) as s:
        n = s.rows("tokens")
        layer_bytes = n * s.manifest["hidden"]["hidden_size"] * 2
        raw = work / "raw-read"
        with open(raw, "wb") as f:
            f.write(rng.bytes(layer_bytes))
        times: dict[str, list[float]] = {"store_one_layer": [], "raw_read": [], "raw_read_new_array": [],
                                         "raw_read_new_huge_array": [], "store_one_layer_out": [],
                                         "store_random_1000": []}
        reused = np.zeros((n, 1, s.manifest["hidden"]["hidden_size"]), np.float16)  # faulted in once, here
        for _ in range(reps):
            s2 = open_store(path)  # a fresh reader: nothing cached in kevo
            t = time.perf_counter()
            x = s2.hidden(np.arange(n), layers=[layer])
            times["store_one_layer"].append(time.perf_counter() - t)
            assert x.nbytes == layer_bytes
            s2.close()
            t = time.perf_counter()
            with open(raw, "rb", buffering=0) as f:
                while f.read(8 * MIB):
                    pass
            times["raw_read"].append(time.perf_counter() - t)
            for arm, alloc in (("raw_read_new_array", np.empty), ("raw_read_new_huge_array", new_array)):
                t = time.perf_counter()  # the same, into a new array of the layer's size
                buf = alloc(layer_bytes, np.uint8)
                with open(raw, "rb", buffering=0) as f:
                    f.readinto(memoryview(buf))
                times[arm].append(time.perf_counter() - t)
                del buf
            s4 = open_store(path)  # Store.hidden into a buffer reused from read to read (out=)
            t = time.perf_counter()
            s4.hidden(np.arange(n), layers=[layer], out=reused)
            times["store_one_layer_out"].append(time.perf_counter() - t)
            s4.close()
            s3 = open_store(path)
            uids = rng.choice(n, n_random, replace=False)
            t = time.perf_counter()
            s3.hidden(uids, layers=[layer])
            times["store_random_1000"].append(time.perf_counter() - t)
            s3.close()
        raw.unlink()
    best = {k: min(v) for k, v in times.items()}
    return {"tokens": n, "layer_bytes": layer_bytes, "times_s": {k: [r3(x, 4) for x in v] for k, v in times.items()},
            "mib_per_s": {"store_one_layer": r3(layer_bytes / best["store_one_layer"] / MIB),
                          "raw_read": r3(layer_bytes / best["raw_read"] / MIB),
                          "raw_read_new_array": r3(layer_bytes / best["raw_read_new_array"] / MIB),
                          "raw_read_new_huge_array": r3(layer_bytes / best["raw_read_new_huge_array"] / MIB),
                          "store_one_layer_out": r3(layer_bytes / best["store_one_layer_out"] / MIB)},
            "ratio_store_out_vs_raw": r3(best["raw_read"] / best["store_one_layer_out"]),
            "ratio_store_vs_raw": r3(best["raw_read"] / best["store_one_layer"]),
            "ratio_store_vs_raw_new_array": r3(best["raw_read_new_array"] / best["store_one_layer"]),
            "ratio_store_vs_raw_new_huge_array": r3(best["raw_read_new_huge_array"] / best["store_one_layer"]),
            "random_1000_best_s": r3(best["store_random_1000"], 4), "target_ratio": 0.5,
            "met_target": best["raw_read"] / best["store_one_layer"] >= 0.5}


def amber_read(work: Path, tokens: int = 100_400, layers: int = 2, d: int = 4096, batch_tokens: int = 4096,
               reps: int = 2) -> dict:
    """The read comparison at AMBER scale along the token axis: a store of ``tokens`` tokens (AMBER's
    1,004 samples x 100) x ``layers`` layers x ``d`` (not all 33 layers: 27 GB would not fit this
    machine's time), written in batches of ``batch_tokens``, then ``reads`` on one layer (785 MiB)."""
    from kevo_store import StoreWriter

    rng = np.random.default_rng(2)
    path = work / "amber-read.kevo"
    meta = {"model": {"id": "bench-hidden", "n_layers": layers - 1, "hidden_size": d},
            "lens": {"modes": ["final_norm"], "top_k": 0}}
    with StoreWriter(path, meta=meta, hidden_size=d, hidden_layers=list(range(layers)), hidden_dtype="float16") as w:
        for bi, s in enumerate(range(0, tokens, batch_tokens)):
            n = min(batch_tokens, tokens - s)
            key = f"bench:{bi}"
            h = rng.standard_normal((n, layers, d), dtype=np.float32).astype(np.float16)
            w.write_batch(samples={"sample_key": [key], "dataset": ["bench"]},
                          tokens={"token_uid": np.arange(n, dtype=np.int64), "sample_key": [key] * n,
                                  "step": np.arange(n, dtype=np.int32), "position": np.arange(n, dtype=np.int32),
                                  "role": ["generated"] * n, "token_id": np.zeros(n, np.int32)},
                          hidden=h)
    out = {"layers_stored": layers, **reads(path, work, reps, layer=layers - 1)}
    shutil.rmtree(path, ignore_errors=True)
    return out


def run(tokens: int, batch_tokens: int, layers: int = 33, d: int = 4096, reps: int = 2, amber: bool = False,
        unaligned_tokens: int = 800) -> dict:
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((min(batch_tokens, tokens - s), layers, d), dtype=np.float32).astype(np.float16)
              for s in range(0, tokens, batch_tokens)]
    whole = np.concatenate(blocks)
    unaligned = [whole[s: s + unaligned_tokens] for s in range(0, tokens, unaligned_tokens)]  # the same bytes
    nbytes = sum(b.nbytes for b in blocks)
    work = scratch("hidden-write")
    times: dict[str, list[float]] = {"raw_fsync": [], "store_fsync": [], "store_fsync_unaligned": [],
                                     "store_commit": [], "raw_buffered": []}
    for r in range(reps):
        for name in times:
            fsync = "fsync" in name  # store_commit: the writer's own protocol, no extra flush
            target = work / f"{name}-{r}"
            _syncfs(work)  # untimed: start every arm with no dirty pages (ours or other processes')
            if name.startswith("raw"):
                times[name].append(_raw(target, blocks, fsync))
            else:
                times[name].append(_store(target, unaligned if name.endswith("unaligned") else blocks, layers, d,
                                          fsync))
            stored = sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) if target.is_dir() else None
            if stored is not None:
                stored_bytes = stored
            if name == "store_fsync" and r == reps - 1:
                kept = target  # read below
            else:
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink()
    read = reads(kept, work, reps)
    mbps = {k: r3(nbytes / min(v) / MIB) for k, v in times.items()}
    per_stage = stages(blocks, work)
    shutil.rmtree(kept, ignore_errors=True)
    del blocks, whole, unaligned
    read_amber = amber_read(work, reps=reps) if amber else None
    shutil.rmtree(work, ignore_errors=True)
    from kevo_store import hidden as hid
    from kevo_store import shards as sh

    return {
        "crc32c_impl": sh.CRC32C_IMPL, "read_threads": hid.READ_THREADS, "write_threads": hid.WRITE_THREADS,
        "tokens": tokens, "layers": layers, "hidden": d, "batch_tokens": batch_tokens, "reps": reps,
        "unaligned_tokens": unaligned_tokens,
        "bytes_fp16": nbytes, "bytes_on_disk_store": stored_bytes,
        "times_s": {k: [r3(x, 4) for x in v] for k, v in times.items()},
        "mib_per_s": mbps,
        "ratio_store_vs_raw": r3(mbps["store_fsync"] / mbps["raw_fsync"]),
        "ratio_store_unaligned_vs_raw": r3(mbps["store_fsync_unaligned"] / mbps["raw_fsync"]),
        "ratio_store_commit_vs_raw": r3(mbps["store_commit"] / mbps["raw_fsync"]),
        "target_ratio": 0.5,
        "met_target": min(mbps["store_fsync"], mbps["store_fsync_unaligned"]) / mbps["raw_fsync"] >= 0.5,
        "shard_stages_one_core": per_stage,
        "read": read,
        "read_amber_scale": read_amber,
    }
