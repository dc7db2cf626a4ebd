"""`kevo trace`'s engine against the naive reference, side by side in one run, on the mid-size random
LLaVA of bench/models.py: the same sample, the same settings (swap corruption, kinds hidden, mlp and
attn, window 1), every row compared (max |difference|), and the wall-time ratio. Then how the
engine's cost grows with the question's length (words after the constraint) and with the number of
image tokens (vision input 112 / 224 / 336 px -> 64 / 256 / 576 tokens), with the naive cost of the
same rows estimated from its measured time per full forward.

    python -m bench.trace_bench          (or: python -m bench.run --only trace)
"""

from __future__ import annotations

import time
from dataclasses import replace

QUESTION = "Describe this image in detail."
CONSTRAINT = "this image"
FILLER = " in detail"


def _sample(ad, image, question):
    from ingest.trace.constraint import constraint_positions

    b = ad.encode([ad.build_prompt(question, True)], [image])
    inputs = ad.generate_inputs(b)
    ids = inputs["input_ids"][0].tolist()
    pos = constraint_positions(ad.tokenizer, ids, question, CONSTRAINT, ad.image_token_ids)
    img = [i for i, t in enumerate(ids) if t in ad.image_token_ids]
    return b, inputs, ids, pos, img


def _engine(ad, b, inputs, pos, img, repl):
    from ingest.trace.corrupt import parse_corruption
    from ingest.trace.engine import Tracer, TraceSettings

    tr = Tracer(ad, TraceSettings(parse_corruption("swap:image"), batch_rows=32))
    t0 = time.perf_counter()
    st = tr.prepare(inputs, pos, replacement_id=repl)
    res = tr.trace(st, img, ad.patch_grid(b, 0))
    return res, time.perf_counter() - t0


def run(quick: bool = False) -> dict:
    import torch
    from PIL import Image

    from bench.common import OUT
    from bench.models import MID, TINY, build_llava, make_images
    from ingest.models import load_adapter
    from ingest.trace.constraint import first_piece_id
    from tests.trace_reference import NaiveTracer

    size = TINY if quick else MID
    model = build_llava(OUT / "models" / ("llava-tiny" if quick else "llava-mid"), size)
    image = Image.open(make_images(OUT / "images", 1)[0]).convert("RGB")
    ad = load_adapter(str(model), dtype="float32", device="cpu")
    repl = first_piece_id(ad.tokenizer, "image")
    out: dict = {"model": str(model), "size": size.__dict__ if hasattr(size, "__dict__") else str(size),
                 "settings": "swap corruption, kinds hidden+mlp+attn, window 1, float32, CPU"}
    # --- side by side: every row of one sample
    b, inputs, ids, pos, img = _sample(ad, image, QUESTION)
    _engine(ad, b, inputs, pos, img, repl)  # warm-up: the first calls of every kernel are not the method's cost
    res, t_fast = _engine(ad, b, inputs, pos, img, repl)
    with torch.no_grad():
        ad.model(**inputs, use_cache=False)  # and the naive side's warm-up
    t0 = time.perf_counter()
    nv = NaiveTracer(ad, inputs, pos, ("swap", repl))
    diffs, n_naive = [], 0
    for r in res.rows:
        if not r.computed:
            continue
        diffs.append(abs(nv.restored([(r.kind, r.window_layers, r.positions)]) - r.p_restored))
        n_naive += 1
    t_naive = time.perf_counter() - t0
    per_forward = t_naive / (n_naive + 2)
    out["side_by_side"] = {
        "n_positions": len(ids), "n_image_tokens": len(img), "first_corrupted": pos[0], "rows": len(res.rows),
        "rows_computed": n_naive, "rows_before_corrupted_exact": len(res.rows) - n_naive,
        "kevo_trace_s": round(t_fast, 3), "naive_s": round(t_naive, 3),
        "ratio_naive_vs_kevo": round(t_naive / t_fast, 1),
        "naive_forwards": n_naive + 2, "naive_s_per_forward": round(per_forward, 4),
        "max_abs_diff": float(max(diffs)), "warmed_up": True, "p_clean": res.p_clean, "p_corrupt": res.p_corrupt,
        "kevo_forward_tokens": res.n_forward_tokens, "naive_forward_tokens": (n_naive + 2) * len(ids),
    }
    # --- growth with the question's length (words after the constraint)
    growth = []
    for extra in ((0, 4) if quick else (0, 8, 16)):
        q = QUESTION.rstrip(".") + FILLER * extra + "."
        b, inputs, ids, pos, img = _sample(ad, image, q)
        res, t = _engine(ad, b, inputs, pos, img, repl)
        n = sum(r.computed for r in res.rows)
        growth.append({"extra_words": extra, "n_positions": len(ids), "tail_positions": len(ids) - pos[0],
                       "rows_computed": n, "kevo_trace_s": round(t, 3),
                       "naive_estimated_s": round((n + 2) * per_forward, 2),
                       "ratio_estimated": round((n + 2) * per_forward / t, 1)})
    out["question_length"] = growth
    # --- growth with the number of image tokens
    img_growth = []
    for side in ((56,) if quick else (112, 224, 336)):
        m = build_llava(OUT / "models" / f"llava-mid-img{side}", replace(size, image_size=side))
        a2 = load_adapter(str(m), dtype="float32", device="cpu")
        b, inputs, ids, pos, img = _sample(a2, image, QUESTION)
        res, t = _engine(a2, b, inputs, pos, img, repl)
        t0 = time.perf_counter()
        with torch.no_grad():  # the naive reference's unit of cost: one full forward of the whole model
            for _ in range(2):
                a2.model(**inputs, use_cache=False)
        fwd = (time.perf_counter() - t0) / 2
        n = sum(r.computed for r in res.rows)
        img_growth.append({"image_side": side, "n_image_tokens": len(img), "n_positions": len(ids),
                           "rows_computed": n, "kevo_trace_s": round(t, 3), "naive_s_per_forward": round(fwd, 4),
                           "naive_estimated_s": round((n + 2) * fwd, 2),
                           "ratio_estimated": round((n + 2) * fwd / t, 1)})
    out["image_tokens"] = img_growth
    out["target"] = {"ratio_naive_vs_kevo": 20, "met": out["side_by_side"]["ratio_naive_vs_kevo"] >= 20}
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1, default=str))
