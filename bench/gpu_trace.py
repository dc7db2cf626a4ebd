"""Causal tracing on a GPU: the LLaVA-1.5-7B architecture (random weights built on the device, no
download), fp16, swap corruption of a constraint, kinds hidden+mlp+attn, window 1: questions per hour
of `kevo trace`'s engine. ``--tiny`` runs the logic on the CPU with a tiny config (not a benchmark).

    python bench/gpu_trace.py [--questions 8] [--tiny]   -> bench/out/gpu-trace-results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--batch-rows", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "gpu-trace-results.json"))
    a = ap.parse_args()
    import torch

    from bench.common import machine
    from bench.gpu_bench import build
    from bench.models import LLAVA_7B, TINY, make_images
    from bench.trace_bench import CONSTRAINT, QUESTION
    from ingest.trace.constraint import constraint_positions, first_piece_id
    from ingest.trace.corrupt import parse_corruption
    from ingest.trace.engine import Tracer, TraceSettings

    if a.tiny:
        size, device, dtype = TINY, "cpu", torch.float32
    else:
        if not torch.cuda.is_available():
            print("bench/gpu_trace.py: no CUDA device (use --tiny to check the logic on the CPU)", file=sys.stderr)
            return 2
        size, device, dtype = LLAVA_7B, "cuda", torch.float16
    ad, _ = build(size, dtype, device)
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in make_images(ROOT / "bench" / "out" / "images", a.questions)]
    tr = Tracer(ad, TraceSettings(parse_corruption("swap:image"), batch_rows=a.batch_rows))
    repl = first_piece_id(ad.tokenizer, "image")
    times, rows = [], 0
    for im in images:
        b = ad.encode([ad.build_prompt(QUESTION, True)], [im])
        inputs = ad.generate_inputs(b)
        ids = inputs["input_ids"][0].tolist()
        pos = constraint_positions(ad.tokenizer, ids, QUESTION, CONSTRAINT, ad.image_token_ids)
        img = [i for i, t in enumerate(ids) if t in ad.image_token_ids]
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = tr.trace(tr.prepare(inputs, pos, replacement_id=repl), img, ad.patch_grid(b, 0))
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        rows += sum(r.computed for r in res.rows)
    steady = times[1:] or times
    out = {"machine": machine(), "tiny": a.tiny, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
           "dtype": str(dtype), "questions": len(times), "seconds": times, "rows_computed": rows,
           "questions_per_hour": 3600 / (sum(steady) / len(steady))}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"kevo trace: {out['questions_per_hour']:.0f} questions/hour ({out['device']}); wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
