"""Deterministic batches for the store tests: every table's columns filled, no model involved."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from kevo_store.hidden import float32_to_bf16_bits

N_LAYERS = 4  # layers 0..4
TOPK = 3
HIDDEN = 16
LENSES = ("final_norm", "raw")
META = {
    "model": {"id": "test/tiny", "revision": "r0", "dtype": "float32", "family": "llama", "n_layers": N_LAYERS,
              "hidden_size": HIDDEN, "vocab_size": 50},
    "lens": {"modes": list(LENSES), "top_k": TOPK, "norm": "final_norm"},
    "generation": {"greedy": True, "max_new_tokens": 8},
    "dataset": {"name": "synthetic", "fingerprint": "abc"},
    "capture": {"roles": ["generated"]},
}


def vocab_table(n: int = 50) -> pa.Table:
    return pa.table({"vocab_id": np.arange(n, dtype=np.int32), "piece": [f"▁w{i}" for i in range(n)],
                     "text": [f"w{i}" for i in range(n)]})


def batch(b: int, n_samples: int = 3, hidden_dtype: str = "float16", seed: int = 0, with_error: bool = True) -> dict:
    """Batch ``b``: ``n_samples`` samples with a varying number of tokens, every column, and one error."""
    rng = np.random.default_rng(seed * 1000 + b)
    keys = [f"synthetic:{b}-{i}" for i in range(n_samples)]
    n_tok = [int(rng.integers(1, 30)) for _ in keys]
    n = sum(n_tok)
    samples = pa.table({
        "sample_key": keys, "dataset": ["synthetic"] * n_samples, "item_id": [f"{b}-{i}" for i in range(n_samples)],
        "image_id": [f"img{b}_{i}.jpg" if i % 2 == 0 else None for i in range(n_samples)],
        "image_sha256": ["ab" * 32] * n_samples, "prompt": ["Describe the image."] * n_samples,
        "prompt_text": ["USER: <image>\nDescribe the image. ASSISTANT:"] * n_samples,
        "response": [" ".join(f"w{j}" for j in range(k)) for k in n_tok],
        "n_prompt_tokens": pa.array([600 + i for i in range(n_samples)], pa.int32()),
        "n_generated": pa.array(n_tok, pa.int32()), "stop_reason": ["eos"] * n_samples,
        "annotations": [json.dumps({"id": i, "truth": ["cat"]}) for i in range(n_samples)],
        "metrics": [None] * n_samples,
    })
    sk = np.repeat(np.array(keys, dtype=object), n_tok)
    step = np.concatenate([np.arange(k) for k in n_tok]).astype(np.int32)
    tokens = pa.table({
        "token_uid": np.arange(n, dtype=np.int64), "sample_key": sk.tolist(), "step": step,
        "position": (step + 600).astype(np.int32), "role": ["generated"] * n,
        "token_id": rng.integers(0, 50, n).astype(np.int32), "piece": [f"▁w{j}" for j in step],
        "char_start": (step * 3).astype(np.int32), "char_end": (step * 3 + 2).astype(np.int32),
        "word_index": step, "word": [f"w{j}" for j in step], "is_word_start": np.ones(n, bool),
        "object": [("cat" if j % 5 == 0 else None) for j in step],
        "label": [("hallucinated" if j % 10 == 0 else "correct") if j % 5 == 0 else None for j in step],
        "hallucinated": [(j % 10 == 0) if j % 5 == 0 else None for j in step],
    })
    nl = N_LAYERS + 1
    t_idx = np.repeat(np.arange(n), len(LENSES) * nl)
    lens_col = np.tile(np.repeat(np.array(LENSES, dtype=object), nl), n)
    layer = np.tile(np.arange(nl), n * len(LENSES)).astype(np.int16)
    m = len(t_idx)
    js_prev = rng.random(m).astype(np.float32)
    js_prev_arr = pa.array(js_prev, mask=(layer == 0))
    layers = pa.table({
        "token_uid": t_idx.astype(np.int64), "lens": lens_col.tolist(), "layer": layer,
        "p_out": rng.random(m).astype(np.float32), "logit_out": rng.normal(size=m).astype(np.float32),
        "rank_out": rng.integers(1, 50, m).astype(np.int32), "top1_id": rng.integers(0, 50, m).astype(np.int32),
        "top1_prob": rng.random(m).astype(np.float32), "entropy": rng.random(m).astype(np.float32),
        "js_prev": js_prev_arr, "js_final": rng.random(m).astype(np.float32),
        "kl_final": rng.random(m).astype(np.float32),
    })
    # deliberately unsorted input: the writer sorts by key
    perm = rng.permutation(m)
    layers = layers.take(perm)
    k = m * TOPK
    topk = pa.table({
        "token_uid": np.repeat(t_idx, TOPK).astype(np.int64), "lens": np.repeat(lens_col, TOPK).tolist(),
        "layer": np.repeat(layer, TOPK), "rank": np.tile(np.arange(1, TOPK + 1), m).astype(np.int8),
        "vocab_id": rng.integers(0, 50, k).astype(np.int32), "prob": rng.random(k).astype(np.float32),
    })
    h32 = rng.normal(size=(n, nl, HIDDEN)).astype(np.float32) * 10
    hidden = h32.astype(np.float16) if hidden_dtype == "float16" else float32_to_bf16_bits(h32)
    out = {"samples": samples, "tokens": tokens, "layers": layers, "topk": topk, "hidden": hidden}
    if with_error:
        out["errors"] = pa.table({"sample_key": [f"synthetic:{b}-err"], "dataset": ["synthetic"],
                                  "item_id": [f"{b}-err"], "stage": ["read"], "error_type": ["OSError"],
                                  "message": [f"cannot read img{b}.jpg"], "time": ["2026-01-01T00:00:00Z"]})
    return out


# small shards, so that the test stores (tens of tokens a batch) cross shard and inner-chunk edges
SHARD_TOKENS = 32
CHUNK_TOKENS = 8
LAYOUT = {"hidden_shard_tokens": SHARD_TOKENS, "hidden_chunk_tokens": CHUNK_TOKENS}


def write_store(path, n_batches: int, hidden_dtype: str = "float16", start: int = 0, seed: int = 0, close=True,
                **writer_kw):
    from kevo_store import StoreWriter

    w = StoreWriter(path, meta=META, hidden_size=HIDDEN, hidden_dtype=hidden_dtype, **{**LAYOUT, **writer_kw})
    w.write_vocab(vocab_table())
    for b in range(start, n_batches):
        bt = batch(b, hidden_dtype=hidden_dtype, seed=seed)
        if bt["samples"].column("sample_key")[0].as_py() in w.committed_keys:
            continue
        w.write_batch(**bt)
    if close:
        w.close()
    return w
