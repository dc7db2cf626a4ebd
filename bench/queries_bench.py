"""Benchmark: every named query on an AMBER-scale synthetic store (1,004 samples x 100 tokens x 33 layers, top-10).

    .venv/bin/python bench/queries_bench.py [--store PATH] [--repeat 5] [--json OUT]

Builds the store once (queries.testing, no model; reused if PATH exists), then runs each named
query through DuckDB ``repeat`` times and reports the median and best wall time, the row count, and
whether it met the 1 s target. The first run of each query is a warm-up (Parquet metadata,
page cache) and is reported separately. ``cpu`` is the CPU time the process used (all DuckDB
threads): on a machine shared with other jobs, wall time is inflated by waiting for a core while CPU
time is not, so report both (and the load average, printed at the end). Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import queries  # noqa: E402
from kevo_store import open_store  # noqa: E402
from queries.testing import build_synthetic_store  # noqa: E402

TARGET_S = 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=os.path.join(tempfile.gettempdir(), "kevo-bench-amber.kevo"))
    ap.add_argument("--samples", type=int, default=1004)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", help="write the results here as JSON")
    args = ap.parse_args()
    build_s = None
    if not os.path.exists(os.path.join(args.store, "manifest.json")):
        t0 = time.perf_counter()
        build_synthetic_store(args.store, n_samples=args.samples, n_tokens=args.tokens, n_layers=33, top_k=10, seed=0)
        build_s = time.perf_counter() - t0
    store = open_store(args.store)
    counts = {t: store.rows(t) for t in ("samples", "tokens", "layers", "topk")}
    print(f"store {args.store}: {counts}" + (f", built in {build_s:.1f} s" if build_s else " (reused)"))
    # compare-* read two stores: compare the store with itself (the same work as two runs of equal size)
    token = int(store.sql("SELECT token_uid FROM tokens ORDER BY token_uid DESC LIMIT 1").item())
    rows = []
    load0 = os.getloadavg()
    for q in queries.list_queries():
        if q.tables:  # derived tables (kevo trace) the bench store lacks
            continue
        target = [args.store, args.store] if q.stores == 2 else store
        params = {"token_uid": token} if q.name == "top-candidates" else {}
        t0 = time.perf_counter()
        df = queries.run(target, q.name, **params)
        warm = time.perf_counter() - t0
        times, cpus = [], []
        for _ in range(args.repeat):
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            queries.run(target, q.name, **params)
            times.append(time.perf_counter() - t0)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            cpus.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
        med = statistics.median(times)
        cpu = statistics.median(cpus)
        rows.append({"query": q.name, "rows": df.height, "first_s": round(warm, 3), "median_s": round(med, 3),
                     "best_s": round(min(times), 3), "cpu_s": round(cpu, 3), "under_1s": med < TARGET_S})
        # cpu_s: CPU seconds the process used (all threads); less distorted than wall time on a shared machine
        print(f"{q.name:30s} rows={df.height:>8d}  first={warm:6.3f}s  median={med:6.3f}s  best={min(times):6.3f}s"
              f"  cpu={cpu:6.3f}s  {'ok' if med < TARGET_S else 'OVER 1 s'}", flush=True)
    load = os.getloadavg()
    print(f"load average before: {load0[0]:.2f}")
    print(f"cpus={os.cpu_count()} load average={load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"store": counts, "build_s": build_s, "results": rows,
                                               "cpus": os.cpu_count(), "load": load}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
