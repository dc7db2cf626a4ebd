"""Rendering a plan into the store's tables: vectorised numpy, no per-token Python loops, so it reaches
AMBER scale (1,004 samples x 100 tokens x 33 layers, top-10)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa

from .plan import LABELS, js_high, segments


def string_array(value: str, n: int) -> pa.Array:
    """n copies of one string, built from raw buffers (a Python list of 33M strings would take seconds)."""
    b = value.encode()
    offsets = np.arange(n + 1, dtype=np.int64) * len(b)
    if offsets[-1] >= 2**31:
        raise ValueError("column too large for a 32-bit string array")
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b * n))


def render_lens(rng, plan: dict, emitted: np.ndarray, L: int, K: int, n_cand: int, n_fill: int):
    """Top-1, top-k, p_out, js_prev ... arrays (n, L+1[, K]) for one lens."""
    n = len(emitted)
    nl = L + 1
    lay = np.arange(nl)[None, :]
    c = plan["c"]
    start, end = segments(plan, L)
    cand = plan["cand"]
    # filler ids (never candidates): consecutive layers get different bases so noise top-1 changes
    base = (rng.integers(0, n_fill, (n, 1)) + np.cumsum(rng.integers(1, n_fill, (n, nl)), axis=1)) % n_fill
    top1 = n_cand + base
    prob1 = rng.uniform(0.05, 0.40, (n, nl))
    second = np.full((n, nl), -1)
    for s in range(3):
        ins = (lay >= start[:, s:s + 1]) & (lay <= end[:, s:s + 1]) & (start[:, s:s + 1] >= 0)
        top1 = np.where(ins, cand[:, s:s + 1], top1)
        nxt = cand[:, s + 1:s + 2] if s < 2 else np.full((n, 1), -1)
        prv = cand[:, s - 1:s] if s > 0 else np.full((n, 1), -1)
        runner = np.where(nxt >= 0, nxt, prv)
        second = np.where(ins & (runner >= 0), runner, second)
    has = (c >= 0)[:, None]
    pre = has & (lay < c[:, None]) & (lay >= start[:, :1])
    prob1 = np.where(pre, rng.uniform(0.25, 0.45, (n, nl)), prob1)
    post = has & (lay >= c[:, None])
    prob1 = np.where(post, rng.uniform(0.55, 0.95, (n, nl)), prob1)
    nv = (~has) & (lay >= start[:, :1])
    prob1 = np.where(nv, rng.uniform(0.30, 0.45, (n, nl)), prob1)
    # top-k: rank 1 = top1, rank 2 = runner-up candidate or filler, ranks 3.. fillers
    ids = (n_cand + (base[:, :, None] + np.arange(K)[None, None, :]) % n_fill).astype(np.int32)
    ids[:, :, 0] = top1
    ids[:, :, 1] = np.where(second >= 0, second, ids[:, :, 1])
    ratio = rng.random((n, nl, K), dtype=np.float32) * np.float32(0.55) + np.float32(0.35)
    ratio[:, :, 0] = 1.0
    probs = prob1[:, :, None].astype(np.float32) * np.cumprod(ratio, axis=2)
    tail = probs[:, :, 1:].sum(2)
    room = 0.97 * (1.0 - prob1)
    scale = np.where(tail > room, room / np.maximum(tail, 1e-12), 1.0)
    probs[:, :, 1:] *= scale[:, :, None]
    probs = probs.astype(np.float32)
    # p_out: the emitted token's probability; from top-k where it is there, else below rank K
    hit = ids == emitted[:, None, None]
    in_k = hit.any(2)
    rank_out = np.where(in_k, hit.argmax(2) + 1, K + 1 + rng.integers(0, 500, (n, nl)))
    p_out = np.where(in_k, np.take_along_axis(probs, (hit.argmax(2))[:, :, None], 2)[:, :, 0],
                     probs[:, :, -1] * rng.uniform(0.1, 0.9, (n, nl)).astype(np.float32))
    high = js_high(plan, L)
    js = np.where(high, rng.uniform(0.2, 0.6, (n, nl)), rng.uniform(0.001, 0.02, (n, nl))).astype(np.float32)
    frac = 1.0 - lay / L
    js_final = (np.log(2) * 0.8 * frac * rng.uniform(0.6, 1.0, (n, nl))).astype(np.float32)
    js_final[:, L] = 0.0
    kl_final = (js_final * rng.uniform(2.0, 4.0, (n, nl))).astype(np.float32)
    entropy = np.where(post, rng.uniform(0.5, 2.0, (n, nl)), rng.uniform(3.0, 6.0, (n, nl))).astype(np.float32)
    return {"top1": top1, "prob1": probs[:, :, 0], "ids": ids, "probs": probs, "p_out": p_out.astype(np.float32),
            "rank_out": rank_out, "js": js, "js_final": js_final, "kl_final": kl_final, "entropy": entropy,
            "high": high, "start": start}


def render_tables(rendered: dict, emitted: np.ndarray, label_idx: np.ndarray, vocab_text: list[str],
                  n_samples: int, n_tokens: int, top_k: int, seed: int,
                  first_sample: int = 0) -> dict[str, pa.Table]:
    """The store's tables (samples, tokens, layers, topk, vocab) from the rendered lenses; the samples
    are numbered (keys, item and image ids) from ``first_sample``."""
    n = n_samples * n_tokens
    L = next(iter(rendered.values()))["js"].shape[1] - 1
    sample_id = np.repeat(np.arange(n_samples), n_tokens)
    step = np.tile(np.arange(n_tokens), n_samples)
    label_arr = np.array(LABELS, dtype=object)[label_idx]
    token_text = np.array(vocab_text, dtype=object)[emitted]
    tok_len = np.array([len(t) for t in vocab_text])[emitted]
    span = tok_len + 1
    cum = np.cumsum(span.reshape(n_samples, n_tokens), axis=1).reshape(-1)
    char_end = cum - 1
    char_start = char_end - tok_len
    responses = [" ".join(token_text[s * n_tokens:(s + 1) * n_tokens]) for s in range(n_samples)]
    n_prompt = 600
    hallucinated = np.where(label_idx == 3, None, label_idx == 0)
    tokens = pa.table({
        "token_uid": pa.array(np.arange(n, dtype=np.int64)),
        "sample_id": pa.array(sample_id.astype(np.int64)),
        "step": pa.array(step.astype(np.int32)),
        "position": pa.array((n_prompt - 1 + step).astype(np.int32)),
        "role": string_array("generated", n),
        "token_id": pa.array(emitted.astype(np.int32)),
        "piece": pa.array(["▁" + t for t in token_text], pa.string()),
        "char_start": pa.array(char_start.astype(np.int32)),
        "char_end": pa.array(char_end.astype(np.int32)),
        "word_index": pa.array(step.astype(np.int32)),
        "word": pa.array(list(token_text), pa.string()),
        "is_word_start": pa.array(np.ones(n, bool)),
        "patch_row": pa.nulls(n, pa.int16()),
        "patch_col": pa.nulls(n, pa.int16()),
        "object": pa.array(np.where(label_idx == 3, None, token_text).tolist(), pa.string()),
        "label": pa.array(label_arr.tolist(), pa.string()),
        "hallucinated": pa.array(hallucinated.tolist(), pa.bool_()),
        "is_answer": pa.array(step == 0),
    })
    numbers = range(first_sample, first_sample + n_samples)
    samples = pa.table({
        "sample_key": pa.array([f"synthetic:{i}" for i in numbers]),
        "dataset": string_array("synthetic", n_samples),
        "item_id": pa.array([str(i) for i in numbers]),
        "image_id": pa.array([f"synthetic/{i:05d}.png" for i in numbers]),
        "image_sha256": pa.array([hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in range(n_samples)]),
        "prompt": string_array("Describe this image.", n_samples),
        "prompt_text": string_array("USER: <image>\nDescribe this image. ASSISTANT:", n_samples),
        "response": pa.array(responses),
        "n_prompt_tokens": pa.array(np.full(n_samples, n_prompt, np.int32)),
        "n_generated": pa.array(np.full(n_samples, n_tokens, np.int32)),
        "stop_reason": string_array("max_new_tokens", n_samples),
        "annotations": string_array(json.dumps({"synthetic": True}), n_samples),
        "metrics": pa.nulls(n_samples, pa.string()),
    })
    layer_parts, topk_parts = [], []
    nl = L + 1
    for lens in sorted(rendered):  # sorted: the table key is (token_uid, lens, layer)
        r = rendered[lens]
        js_prev = r["js"].reshape(-1).astype(np.float32)
        js_mask = np.tile(np.arange(nl) == 0, n)
        layer_parts.append(pa.table({
            "token_uid": pa.array(np.repeat(np.arange(n, dtype=np.int64), nl)),
            "lens": string_array(lens, n * nl),
            "layer": pa.array(np.tile(np.arange(nl, dtype=np.int16), n)),
            "p_out": pa.array(r["p_out"].reshape(-1)),
            "logit_out": pa.array((np.log(r["p_out"]) + 12.0).reshape(-1).astype(np.float32)),
            "rank_out": pa.array(r["rank_out"].reshape(-1).astype(np.int32)),
            "top1_id": pa.array(r["top1"].reshape(-1).astype(np.int32)),
            "top1_prob": pa.array(r["prob1"].reshape(-1)),
            "entropy": pa.array(r["entropy"].reshape(-1)),
            "js_prev": pa.array(js_prev, mask=js_mask),
            "js_final": pa.array(r["js_final"].reshape(-1)),
            "kl_final": pa.array(r["kl_final"].reshape(-1)),
            "js_dola": pa.nulls(n * nl, pa.float32()),
        }))
        topk_parts.append(pa.table({
            "token_uid": pa.array(np.repeat(np.arange(n, dtype=np.int64), nl * top_k)),
            "lens": string_array(lens, n * nl * top_k),
            "layer": pa.array(np.tile(np.repeat(np.arange(nl, dtype=np.int16), top_k), n)),
            "rank": pa.array(np.tile(np.arange(1, top_k + 1, dtype=np.int32), n * nl)),
            "vocab_id": pa.array(r["ids"].reshape(-1).astype(np.int32)),
            "prob": pa.array(r["probs"].reshape(-1)),
        }))
    vocab = pa.table({
        "vocab_id": pa.array(np.arange(len(vocab_text), dtype=np.int32)),
        "piece": pa.array(["▁" + t for t in vocab_text]),
        "text": pa.array(vocab_text),
    })
    return {"samples": samples, "tokens": tokens, "layers": pa.concat_tables(layer_parts),
            "topk": pa.concat_tables(topk_parts), "vocab": vocab}


def render_hidden(n: int, n_layers: int, step: np.ndarray, hidden_size: int, seed: int):
    """(hidden states (n, layers, D) float16, per-layer planted sigma): the answer token ("guitar", step 0)
    agrees across images in the middle layers, with spread ``sigma`` per layer."""
    D = hidden_size
    L = n_layers - 1
    hrng = np.random.default_rng([seed, 99])
    lay = np.arange(n_layers)
    neck = L * 0.55
    sigma = (0.15 + 1.5 * (np.abs(lay - neck) / L) ** 1.5 * 4).astype(np.float64)
    centers = hrng.normal(0, 1, (n_layers, D)) * 3.0
    hidden = centers[None, :, :] + hrng.normal(0, 1, (n, n_layers, D)) * 1.0
    ans = step == 0
    hidden[ans] = centers[None] + hrng.normal(0, 1, (ans.sum(), n_layers, D)) * sigma[None, :, None]
    hidden = hidden.astype(np.float16)
    return hidden, sigma
