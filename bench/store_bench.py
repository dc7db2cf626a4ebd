"""Benchmark: the store writer and reader at AMBER scale (1,004 samples x 100 tokens x 33 layers, top-10).

    .venv/bin/python bench/store_bench.py [--samples 1004] [--batch 8] [--hidden 0] [--json OUT]

Renders the tables in memory first (queries.testing, no model), then times only the writer:
``write_batch`` per batch of ``--batch`` samples (one atomic commit each) and the compaction on
close. Reports bytes per token-layer of layers+topk on disk, rows/s, the time to open the store
and a few reads. Not a test: timings depend on the machine and its load (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from kevo_store import StoreWriter, open_store  # noqa: E402
from kevo_store.verify import verify_store  # noqa: E402
from queries.testing import slice_batch, synthesize  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1004)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--layers", type=int, default=33)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8, help="samples per write_batch (one commit)")
    ap.add_argument("--hidden", type=int, default=0, help="hidden size D (0: no hidden states)")
    ap.add_argument("--store", default=os.path.join(tempfile.gettempdir(), "kevo-store-bench.kevo"))
    ap.add_argument("--json", help="write the results here as JSON")
    args = ap.parse_args()
    res: dict = {"load_avg": os.getloadavg(), "args": vars(args)}
    t = time.perf_counter()
    tables, hidden, _truth = synthesize(args.samples, args.tokens, args.layers, args.top_k,
                                        args.hidden or None, seed=0)
    res["synthesize_s"] = time.perf_counter() - t
    shutil.rmtree(args.store, ignore_errors=True)
    nl = args.layers
    batches = [slice_batch(tables, hidden, s0, min(args.samples, s0 + args.batch), args.tokens, nl,
                            nl * args.top_k, 1) for s0 in range(0, args.samples, args.batch)]
    meta = {"model": {"id": "synthetic", "n_layers": nl - 1}, "lens": {"modes": ["final_norm"], "top_k": args.top_k}}
    kw = {"hidden_size": args.hidden, "hidden_layers": list(range(nl))} if args.hidden else {}
    t0 = time.perf_counter()
    w = StoreWriter(args.store, meta=meta, **kw)
    w.write_vocab(tables["vocab"])
    per_batch = []
    for samples, tokens, layers, topk, h in batches:
        tb = time.perf_counter()
        b = {"samples": samples, "tokens": tokens, "layers": layers, "topk": topk}
        if h is not None:
            b["hidden"] = h
        w.write_batch(**b)
        per_batch.append(time.perf_counter() - tb)
    t1 = time.perf_counter()
    w.close()
    t2 = time.perf_counter()
    res.update(write_batches_s=t1 - t0, close_compact_s=t2 - t1, commits=len(batches),
               batch_median_s=float(np.median(per_batch)))
    s = open_store(args.store)
    m = s.manifest
    size = {n: sum(m["files"][f]["size"] for f in e["files"]) for n, e in m["tables"].items()}
    n_tl = m["tables"]["layers"]["rows"]
    res["rows"] = {n: e["rows"] for n, e in m["tables"].items()}
    res["bytes"] = size
    res["bytes_per_token_layer"] = {"layers": size["layers"] / n_tl, "topk": size["topk"] / n_tl,
                                    "layers+topk": (size["layers"] + size["topk"]) / n_tl}
    res["rows_per_s"] = (m["tables"]["layers"]["rows"] + m["tables"]["topk"]["rows"]) / (t2 - t0)
    s.close()
    opens = []
    for _ in range(5):
        t = time.perf_counter()
        s = open_store(args.store)
        opens.append(time.perf_counter() - t)
        s.close()
    res["open_s_median"] = float(np.median(opens))
    s = open_store(args.store)
    for name, q in [("count_layers", "SELECT count(*) FROM layers"),
                    ("p_out_by_layer", "SELECT layer, avg(p_out) FROM layers GROUP BY layer"),
                    ("one_token_topk", "SELECT * FROM topk WHERE token_uid = 51234"),
                    ("top1_at_layer_20",
                     "SELECT vocab_id, count(*) FROM topk WHERE layer = 20 AND rank = 1 GROUP BY 1")]:
        t = time.perf_counter()
        s.sql(q)
        res[f"query_{name}_s"] = time.perf_counter() - t
    if args.hidden:
        n = m["tables"]["tokens"]["rows"]
        uids = np.sort(np.random.default_rng(0).choice(n, 1000, replace=False))
        t = time.perf_counter()
        s.hidden(uids, layers=[20])
        res["hidden_1000_tokens_1_layer_s"] = time.perf_counter() - t
    t = time.perf_counter()
    rep = verify_store(args.store)
    res["verify_s"] = time.perf_counter() - t
    res["verify_ok"] = rep.ok
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
