"""`make bench`: every benchmark side by side in one run -> BENCHMARKS.md and bench/results.json.

    .venv/bin/python bench/run.py                 # the full suite (~10-15 min on 2 busy cores)
    .venv/bin/python bench/run.py --quick         # a smoke run in ~3 min -> bench/out/ (the committed files stay)
    .venv/bin/python bench/run.py --only ingest,queries

Sections: ingest (capture vs generate, its floor, full `kevo ingest`, the paper's method), organism
(on the embedded default model), hidden_write (the hidden-state writer against the raw disk),
capture_memory (peak memory of capture on a 2,025-image-token prompt, hooks vs output_hidden_states),
ingest_hidden (full `kevo ingest` with every layer's hidden states vs `--hidden none`),
queries (named-query latency against pandas, lens-table bytes), tsne, trace (`kevo trace` against
the naive reference). The GPU benchmark is bench/gpu.sh, run on a GPU machine; its results are
folded in when bench/out/gpu-results.json
exists. A section that fails is reported as failed (with its error); the others still run.

Threads: by default torch, BLAS and openTSNE use ONE thread (--threads). On this shared machine
(2 cores, load average ~10 from other jobs) two OpenMP threads were 5-10x slower than one: their
barriers wait on threads the OS has descheduled. Ratios are measured with both sides under the same
setting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("ingest", "organism", "hidden_write", "capture_memory", "ingest_hidden", "queries", "query_scaling", "tsne",
            "trace")


def _args(argv=None):
    ap = argparse.ArgumentParser(description="kevo benchmarks -> BENCHMARKS.md + bench/results.json")
    ap.add_argument("--quick", action="store_true", help="small sizes, one repetition: a smoke run")
    ap.add_argument("--only", default=None, help=f"comma-separated sections of {', '.join(SECTIONS)}")
    ap.add_argument("--threads", type=int, default=1, help="torch/BLAS/openTSNE threads (default 1, see above)")
    ap.add_argument("--md", default=None, help="markdown output (default BENCHMARKS.md; bench/out/ with --quick)")
    ap.add_argument("--json", default=None, help="JSON output (default bench/results.json; bench/out/ with --quick)")
    ap.add_argument("--render", action="store_true", help="only re-render the markdown from the existing JSON")
    a = ap.parse_args(argv)
    a.sections = SECTIONS if not a.only else tuple(s.strip() for s in a.only.split(",") if s.strip())
    bad = [s for s in a.sections if s not in SECTIONS]
    if bad:
        ap.error(f"--only: unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    out = ROOT / "bench" / "out"
    a.md = Path(a.md) if a.md else (out / "BENCHMARKS-quick.md" if a.quick else ROOT / "BENCHMARKS.md")
    a.json = Path(a.json) if a.json else (out / "results-quick.json" if a.quick else ROOT / "bench" / "results.json")
    return a


def main(argv=None) -> int:
    a = _args(argv)
    if a.render:
        sys.path.insert(0, str(ROOT))
        from bench import report

        a.md.write_text(report.render(json.loads(a.json.read_text())))
        print(f"[bench] rendered {a.md} from {a.json}")
        return 0
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(a.threads)  # before numpy/torch load their thread pools
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(a.threads)
    from bench import report
    from bench.common import OUT, machine

    OUT.mkdir(parents=True, exist_ok=True)
    q = a.quick
    cmd = "make bench" if not (q or a.only) else "bench/run.py " + " ".join(
        x for x in (["--quick"] if q else []) + ([f"--only {a.only}"] if a.only else []))
    results: dict = {"command": cmd, "quick": q, "threads": a.threads, "machine": machine(), "sections": {}}
    previous = _previous_history(a.json)  # read now: the sections below overwrite the file as they go
    base = json.loads(a.json.read_text()) if (a.only and not q and a.json.is_file()) else None
    if base is not None:
        # --only re-runs some sections of the existing results: the others, and the history, stay.
        results["sections"] = dict(base.get("sections", {}))
        # the page's command stays the full run's; every section carries the command that produced it
        results["command"] = base.get("command", "make bench")
    t_all = time.perf_counter()

    def section(name, fn):
        if name not in a.sections:
            return
        print(f"[bench] {name} ...", flush=True)
        m = machine()  # where and when this section runs (a re-run section may be on another day, another CPU)
        t = time.perf_counter()
        try:
            res = fn()
        except Exception as e:  # noqa: BLE001 - a failed section is reported, the others still run
            res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8)}
            print(f"[bench] {name} FAILED: {res['error']}", flush=True)
        res["section_s"] = round(time.perf_counter() - t, 1)
        res["command"] = cmd
        res["ran"] = {"date_utc": m["date_utc"], "cpu": m["cpu"], "git_commit": m.get("git_commit"),
                      "load_avg_start": m["load_avg_start"]}
        results["sections"][name] = res
        print(f"[bench] {name} done in {res['section_s']} s", flush=True)
        # write as we go: a long run that dies late still leaves its numbers
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=1, default=str))

    section("ingest", lambda: _ingest(q))
    section("organism", lambda: _organism(q))
    section("hidden_write", lambda: _hidden_write(q))
    section("capture_memory", lambda: _capture_memory(q))
    section("ingest_hidden", lambda: _ingest_hidden(q))
    section("queries", lambda: _queries(q))
    section("query_scaling", lambda: _query_scaling(q))
    section("tsne", lambda: _tsne(q, a.threads))
    section("trace", lambda: __import__("bench.trace_bench", fromlist=["run"]).run(q))
    gpu = OUT / "gpu-results.json"
    if gpu.is_file():
        g = json.loads(gpu.read_text())
        if not g.get("tiny"):
            results["gpu"] = g
    results["total_s"] = round(time.perf_counter() - t_all, 1)
    if base is not None:
        results["history"] = base.get("history", [])
    else:
        results["history"] = (previous + [headlines(results)])[-5:] if not (q or a.only) else []
    results["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    if base is not None:  # the page describes the full run; the re-run sections carry their own command
        results["machine"], results["total_s"] = base["machine"], base.get("total_s")
        results["rerun"] = {"sections": sorted(a.sections), "machine": machine(), "command": cmd}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(results, indent=1, default=str))
    a.md.write_text(report.render(results))
    print(f"[bench] wrote {a.md} and {a.json} in {results['total_s']} s")
    return 0


HEADLINES = {
    "capture / generate": ("ingest", "overhead", "ratio_capture_vs_generate"),
    "floor": ("ingest", "overhead", "floor_ratio"),
    "kevo ingest / generate": ("ingest", "full_ingest", "ratio_ingest_vs_generate"),
    "paper / kevo, end to end": ("ingest", "overhead", "paper", "ratio_end_to_end"),
    "paper / kevo, analysis": ("ingest", "overhead", "paper", "ratio_analysis_only"),
    "store / raw disk": ("hidden_write", "ratio_store_vs_raw"),
}


def headlines(results: dict) -> dict:
    """The headline ratios of one run (for the run-to-run spread table)."""
    out = {"date_utc": results["machine"]["date_utc"], "load_avg_start": results["machine"].get("load_avg_start")}
    o = results.get("sections", {}).get("ingest", {}).get("overhead") or {}
    out["batch x new tokens"] = f"{o.get('batch')} x {o.get('new_tokens')}" if o else None
    for name, path in HEADLINES.items():
        v = results.get("sections", {})
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        out[name] = v
    return out


def _previous_history(json_path: Path) -> list[dict]:
    """The headlines of the earlier full runs kept in the existing results.json (this run's are appended)."""
    if not json_path.is_file():
        return []
    try:
        old = json.loads(json_path.read_text())
        if old.get("quick") or "--only" in old.get("command", "") or "total_s" not in old:
            return []
        return list(old.get("history") or [headlines(old)])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _mid_llava(q: bool):
    """The random mid-size LLaVA of sections ingest and ingest_hidden (tiny with --quick), its images,
    batch size and new tokens, and the results dict started with its size."""
    from dataclasses import asdict

    from bench.common import OUT
    from bench.models import MID, TINY, build_llava, make_images

    size = TINY if q else MID
    model = build_llava(OUT / "models" / ("llava-tiny" if q else "llava-mid"), size)
    images = make_images(OUT / "images", 4 if q else 8)
    batch, new = (2, 8) if q else (4, 32)
    return model, images, batch, new, {"size": asdict(size)}


def _ingest(q: bool) -> dict:
    from bench import ingest_bench

    model, images, batch, new, res = _mid_llava(q)
    res["overhead"] = ingest_bench.overhead(model, images, batch, new, reps=1 if q else 4)
    res["full_ingest"] = ingest_bench.full_ingest(model, images, batch, new, reps=1 if q else 3)
    from bench.query_latency import storage

    res["storage_real_store"] = storage(Path(res["full_ingest"]["store_path"]))
    return res


def _organism(q: bool) -> dict:
    from bench import ingest_bench
    from bench.common import scratch
    from ingest.organism import world
    from ingest.organism.train import WEIGHTS_DIR

    if not (WEIGHTS_DIR / "config.json").is_file():
        return {"skipped": f"the embedded default model's weights are not in {WEIGHTS_DIR} (not shipped at the "
                           "time of this run)"}
    d = scratch("organism-images")
    images = []
    for i, sc in enumerate(world.scenes("test", 8, seed=0)):
        p = d / f"scene{i:02d}.png"
        world.render(sc).save(p)
        images.append(p)
    batch, new = (4, 32) if q else (8, 64)
    res = {"model": str(WEIGHTS_DIR)}
    res["overhead"] = ingest_bench.overhead(WEIGHTS_DIR, images, batch, new, reps=1 if q else 3,
                                            prompt=world.GENERATIVE_PROMPT)
    res["full_ingest"] = ingest_bench.full_ingest(WEIGHTS_DIR, images, batch, new, reps=1 if q else 2,
                                                  prompt=world.GENERATIVE_PROMPT, name="organism-stores")
    return res


def _hidden_write(q: bool) -> dict:
    from bench import hidden_write

    # many shards of 512 tokens, in batches of a shard and in batches of 800 tokens (8 captions of 100
    # tokens, as ingest commits them: not a multiple of the shard)
    return hidden_write.run(tokens=2048 if q else 4096, batch_tokens=512, reps=1 if q else 3, amber=not q)


def _capture_memory(q: bool) -> dict:
    from dataclasses import asdict

    from bench import capture_memory
    from bench.common import OUT
    from bench.models import LONG, TINY, build_llava, make_images

    model = build_llava(OUT / "models" / ("llava-tiny" if q else "llava-long"), TINY if q else LONG)
    image = make_images(OUT / "images-long", 1, size=(700, 560))[0]
    res = {"size": asdict(TINY if q else LONG)}
    res.update(capture_memory.run(model, image))
    return res


def _ingest_hidden(q: bool) -> dict:
    from bench import ingest_bench

    model, images, batch, new, res = _mid_llava(q)
    res.update(ingest_bench.full_ingest(model, images, batch, new, reps=1 if q else 3, name="ingest-hidden-stores",
                                        hidden_none=True))
    return res


def _queries(q: bool) -> dict:
    from bench import query_latency
    from bench.common import OUT

    path = OUT / ("amber-quick.kevo" if q else "amber.kevo")
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    res = {"store": query_latency.build_store(path, 100 if q else 1004, 100)}
    res["storage"] = query_latency.storage(path)
    res.update(query_latency.run(path, reps=1 if q else 3))
    return res


def _query_scaling(q: bool) -> dict:
    from bench import query_latency
    from bench.common import OUT

    if q:
        return query_latency.scaling(OUT, scales=(1, 4), reps=1, base_samples=50)
    return query_latency.scaling(OUT, scales=(1, 4, 16), reps=2)


def _tsne(q: bool, threads: int) -> dict:
    from bench import tsne_bench

    if q:
        res = tsne_bench.run(small=384, large=2000, exact_pca_points=None, n_jobs=threads)
    else:
        res = tsne_bench.run(small=384, large=20000, exact_pca_points=2000, n_jobs=threads)
    extra = Path(__file__).resolve().parent / "out" / "exact-pca.json"
    if extra.is_file():  # measured apart by `bench/tsne_bench.py --exact-pca N` (minutes): kept with its own date
        res["exact_pca_separate"] = json.loads(extra.read_text())
    return res


if __name__ == "__main__":
    raise SystemExit(main())
