"""Benchmark 4 (query latency of every named query on an AMBER-scale synthetic store, and the ratio
against pandas) and benchmark 5 (bytes per token-layer of the lens tables).

The store: ``queries.testing.build_synthetic_store``'s (written by ``build_scaled_store``) at AMBER
scale (1,004 samples x 100
generated tokens x 33 layers, top-10; planted critical layers and mutation events), no hidden
states. Every named query runs through ``queries.run`` (DuckDB) with its defaults; the two-store
queries (compare-*, align-tokens) compare the store with itself, on one pair of stores opened once
(``open_stores``), as the single-store queries run on one opened store (until 2026-12-04 the pair was
opened anew for every run: a fresh DuckDB connection each time). Each query's first run is reported apart (cold
Parquet metadata); then DuckDB and the pandas version (bench/pandas_queries.py) run interleaved and
the ratio is taken between their fastest runs. The pandas answer is checked against DuckDB's.
(bench/queries_bench.py is the queries package's standalone DuckDB-only version of this table.)
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import best, r3, timed

TARGET_S = 1.0


def build_store(path: Path, samples: int, tokens: int, chunk: int | None = None) -> dict:
    """The synthetic store, ``chunk`` samples synthesized at a time (``queries.testing.build_scaled_store``;
    None: all at once, which is ``build_synthetic_store``'s store; one synthesis of 16x AMBER would not fit
    in memory)."""
    from queries.testing import build_scaled_store

    t, info = timed(build_scaled_store, path, samples, chunk_samples=chunk or samples, n_tokens=tokens, n_layers=33,
                    top_k=10, seed=0)
    return {"path": str(path), "samples": samples, "tokens_per_sample": tokens, "layers": 33, "top_k": 10,
            "chunks": info["chunks"], "build_s": r3(t, 4)}


def storage(path: Path) -> dict:
    """Benchmark 5 on any store: bytes per (token, lens, layer) row of layers and topk on disk."""
    from kevo_store import open_store

    s = open_store(str(path))
    m = s.manifest
    size = {n: sum(m["files"][f]["size"] for f in e["files"]) for n, e in m["tables"].items()}
    n_tl = m["tables"]["layers"]["rows"]
    out = {"token_layers": n_tl, "bytes": size,
           "bytes_per_token_layer": {"layers": r3(size["layers"] / n_tl), "topk": r3(size["topk"] / n_tl),
                                     "layers+topk": r3((size["layers"] + size["topk"]) / n_tl)},
           "target_bytes": 100}
    out["met_target"] = (size["layers"] + size["topk"]) / n_tl <= 100
    hid = m.get("hidden")
    if hid:
        from kevo_store.hidden import is_v2

        floor = hid["rows"] * len(hid["layers"]) * hid["hidden_size"] * 2
        on_disk = sum(p.stat().st_size for p in (Path(path) / "hidden").rglob("*") if p.is_file())
        out["hidden"] = {"rows": hid["rows"], "layers": len(hid["layers"]), "hidden_size": hid["hidden_size"],
                         "fp16_floor_bytes": floor, "bytes_on_disk": on_disk, "ratio_to_fp16": r3(on_disk / floor),
                         "format_v2": is_v2(hid), "codec": hid.get("codec")}
    s.close()
    return out


def run(path: Path, reps: int) -> dict:
    import queries
    from bench.pandas_queries import PANDAS, check
    from kevo_store import open_store, open_stores

    store = open_store(str(path))
    store.con.execute("SET enable_progress_bar = false")
    pair = open_stores({"a": str(path), "b": str(path)})  # opened once, as the single store is
    pair.con.execute("SET enable_progress_bar = false")
    token = int(store.sql("SELECT token_uid FROM tokens ORDER BY token_uid DESC LIMIT 1").item())
    rows = []
    for q in queries.list_queries():
        if q.tables:  # derived tables (kevo trace) the bench store lacks
            continue
        two = q.stores == 2
        params = {"token_uid": token} if q.name == "top-candidates" else {}

        def duck(q=q, params=params, two=two):
            return queries.run(pair if two else store, q.name, **params)

        t0 = time.perf_counter()
        frame = duck()
        first = time.perf_counter() - t0
        arms = {"duckdb": duck}
        pfn = PANDAS.get(q.name)
        if pfn is not None:
            arms["pandas"] = (lambda pfn=pfn, params=params: pfn(store, **params))
        times = {k: [] for k in arms}
        answers = {}
        for _ in range(reps):
            for k, fn in arms.items():
                t, answers[k] = timed(fn)
                times[k].append(t)
        row = {"query": q.name, "stores": q.stores, "rows": frame.height, "first_s": r3(first, 4),
               "duckdb_s": [r3(x, 4) for x in times["duckdb"]], "best_s": r3(best(times["duckdb"]), 4),
               "under_1s": best(times["duckdb"]) < TARGET_S}
        if pfn is not None:
            ok, what = check(q.name, frame, answers["pandas"])
            row.update(pandas_s=[r3(x, 4) for x in times["pandas"]], pandas_best_s=r3(best(times["pandas"]), 4),
                       ratio_pandas_vs_duckdb=r3(best(times["pandas"]) / best(times["duckdb"])),
                       pandas_agrees=ok, compared=what)
        rows.append(row)
    store.close()
    pair.close()
    return {"queries": rows, "target_s": TARGET_S, "all_under_1s": all(r["under_1s"] for r in rows),
            "read_check": read_check_cost(path)}


def read_check_cost(path: Path, reps: int = 3) -> dict:
    """What integrity on read (kevo_store/readcheck.py) adds: the sha256 of every table's files against the
    manifest, as the first query of a process pays it (cold: nothing verified yet), and as every later
    query pays it (warm: one stat per file)."""
    from kevo_store import open_store, readcheck

    store = open_store(str(path))
    every = " ".join(store.tables)
    n_bytes = sum(int(e["size"]) for rel, e in store.manifest["files"].items() if rel.endswith(".parquet"))
    cold, warm = [], []
    for _ in range(reps):
        readcheck._VERIFIED.clear()
        t0 = time.perf_counter()
        store._check.before(every)
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        store._check.before(every)
        warm.append(time.perf_counter() - t0)
    store.close()
    return {"parquet_bytes": n_bytes, "cold_s": r3(best(cold), 4), "warm_s": r3(best(warm), 5),
            "cold_runs_s": [r3(x, 4) for x in cold], "mib_per_s": r3(n_bytes / 2**20 / best(cold), 1)}


def scaling(root: Path, scales: tuple[int, ...] = (1, 4, 16), reps: int = 2, base_samples: int = 1004) -> dict:
    """Every single-store named query at 1x, 4x and 16x AMBER scale (synthetic stores of
    ``base_samples`` x scale samples x 100 tokens x 33 layers): the best of ``reps`` warm runs at each
    scale, and the exponent b of a least-squares fit t ~ scale^b (1: linear in the store). Targets:
    under 1 s at 1x and under 4 s at 4x; 16x is reported without a target. A scale whose store cannot
    be built (memory, disk) is reported with its error and the others still run."""
    import math
    import shutil

    import queries
    from kevo_store import open_store

    out: dict = {"scales": list(scales), "stores": {}, "queries": {}, "targets_s": {"1": 1.0, "4": 4.0}}
    for k in scales:
        path = root / f"amber-x{k}.kevo"
        shutil.rmtree(path, ignore_errors=True)
        try:
            out["stores"][str(k)] = build_store(path, base_samples * k, 100, base_samples)
        except Exception as e:  # noqa: BLE001 - reported; the other scales still run
            out["stores"][str(k)] = {"error": f"{type(e).__name__}: {e}"}
            shutil.rmtree(path, ignore_errors=True)
            continue
        store = open_store(str(path))
        store.con.execute("SET enable_progress_bar = false")
        token = int(store.sql("SELECT token_uid FROM tokens ORDER BY token_uid DESC LIMIT 1").item())
        for q in queries.list_queries():
            if q.tables or q.stores != 1:
                continue
            params = {"token_uid": token} if q.name == "top-candidates" else {}
            queries.run(store, q.name, **params)  # warm: metadata and the read check
            t = best([timed(queries.run, store, q.name, **params)[0] for _ in range(reps)])
            out["queries"].setdefault(q.name, {})[str(k)] = r3(t, 4)
        store.close()
        shutil.rmtree(path, ignore_errors=True)  # 16x is several GB
    for ts in out["queries"].values():
        xs = [(math.log(int(k)), math.log(v)) for k, v in ts.items() if v > 0]
        if len(xs) >= 2:
            mx = sum(x for x, _ in xs) / len(xs)
            my = sum(y for _, y in xs) / len(xs)
            b = sum((x - mx) * (y - my) for x, y in xs) / sum((x - mx) ** 2 for x, _ in xs)
            ts["exponent"] = r3(b, 3)
        ts["met"] = all(ts.get(k, 0) < lim for k, lim in out["targets_s"].items() if k in ts)
    out["all_met"] = all(v["met"] for v in out["queries"].values())
    return out
