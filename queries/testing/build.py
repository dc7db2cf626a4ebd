"""Synthetic stores with planted, known patterns, built without any model: the analyses' answer key.

Tests and benchmarks need stores whose right answers are known in advance: a token whose top-1
emerges at layer 20 and is displaced at layer 27 by another candidate, a hallucinated object token
that mutates, a token that never stands out. ``build_synthetic_store`` plans every token's
layer-by-layer story (``plan.py``), renders it into the store's tables (``render.py``), writes them
through :class:`kevo_store.StoreWriter` and returns what it planted (``truth.py``), stated with the
definitions of docs/analyses.md and their defaults as the SQL fragments declare them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from .plan import (
    DEFAULTS,
    KIND_P,
    KINDS,
    LABEL_P,
    LABELS,
    OBJECT_WORDS,
    Plant,
    apply_plants,
    js_high,
    lay_ranges,
    plan_lens,
    segments,
    validate,
)
from .render import render_hidden, render_lens, render_tables
from .truth import SyntheticTruth, token_table, truth_switches


def synthesize(n_samples: int = 8, n_tokens: int = 12, n_layers: int = 33, top_k: int = 10,
               hidden_size: int | None = None, seed: int = 0, plants: list[Plant] | None = None,
               lenses: tuple[str, ...] = ("final_norm",), n_fillers: int = 2000, first_sample: int = 0):
    """Plan and render a synthetic store in memory: (tables as pyarrow, hidden or None, SyntheticTruth);
    its samples' keys are numbered from ``first_sample`` (the truth's sample ids from 0)."""
    if top_k < 2:
        raise ValueError("top_k must be >= 2")
    L = n_layers - 1
    lay_ranges(L)
    rng = np.random.default_rng(seed)
    n = n_samples * n_tokens
    plants = list(plants or [])
    if len(plants) > n:
        raise ValueError(f"{len(plants)} plants do not fit in {n} tokens")
    words = list(OBJECT_WORDS) + [f"object{i}" for i in range(max(0, 200 - len(OBJECT_WORDS)))]
    n_cand = len(words)
    word_ids = {w: i for i, w in enumerate(words)}
    fillers = [f"w{i:04d}" for i in range(n_fillers)]
    vocab_text = words + fillers
    sample_id = np.repeat(np.arange(n_samples), n_tokens)
    step = np.tile(np.arange(n_tokens), n_samples)
    # labels and emitted tokens; step 0 of every sample answers "guitar" (the cross-image token)
    label_idx = rng.choice(len(LABELS), size=n, p=LABEL_P)
    for i, p in enumerate(plants):
        label_idx[i] = LABELS.index(p.label)
    emitted = rng.integers(1, n_cand, n)
    emitted[step == 0] = word_ids["guitar"]
    emitted[step != 0] = np.where(emitted[step != 0] == word_ids["guitar"], 1, emitted[step != 0])
    for i, p in enumerate(plants):
        if p.words:
            emitted[i] = word_ids[p.words[-1]] if p.words[-1] in word_ids else emitted[i]
    kinds = np.zeros(n, dtype=np.int64)
    for li, lab in enumerate(LABELS):
        sel = label_idx == li
        kinds[sel] = rng.choice(len(KINDS), size=sel.sum(), p=KIND_P[lab])
    W, R = DEFAULTS["window"], DEFAULTS["min_held"]
    rendered, truths, switches, highs, crits, segs, js_values = {}, [], [], {}, {}, {}, {}
    for lens_i, lens in enumerate(lenses):
        lrng = np.random.default_rng([seed, lens_i, 1])
        plan = plan_lens(lrng, kinds.copy(), emitted, L, n_cand, W, R)
        if lens_i == 0:
            apply_plants(plan, plants, word_ids, L)
        plan["cand"] = np.where(plan["cand"] >= 0, plan["cand"], -1)
        start, _ = segments(plan, L)
        high = js_high(plan, L)
        validate(plan, high, start, L, W, R)
        # the emitted token is the last segment's candidate (plants may name it)
        last = np.where(plan["cand"][:, 2] >= 0, plan["cand"][:, 2],
                        np.where(plan["cand"][:, 1] >= 0, plan["cand"][:, 1], plan["cand"][:, 0]))
        if lens_i == 0:
            emitted = last
        elif not np.array_equal(last, emitted):
            raise AssertionError("lens plans disagree on the emitted token")
        r = render_lens(lrng, plan, emitted, L, top_k, n_cand, n_fillers)
        rendered[lens] = r
        highs[lens] = high
        crits[lens] = plan["c"]
        segs[lens] = (start, plan["cand"])
        js_values[lens] = r["js"]
        switches.append(truth_switches(plan, high, start, lens))
        truths.append((lens, plan))
    label_arr = np.array(LABELS, dtype=object)[label_idx]
    tables = render_tables(rendered, emitted, label_idx, vocab_text, n_samples, n_tokens, top_k, seed, first_sample)
    hidden, sigma = render_hidden(n, L + 1, step, hidden_size, seed) if hidden_size else (None, None)
    tokens = pl.concat([token_table(lens, plan, sample_id, step, label_arr.tolist(), emitted) for lens, plan in truths])
    truth = SyntheticTruth(
        n_layers=L + 1, top_k=top_k, lenses=tuple(lenses), tokens=tokens, events_default=None,
        switches=pl.concat(switches), js_high=highs, critical=crits, segments=segs, js_prev=js_values,
        dispersion_sigma=sigma, answer_token_id=word_ids["guitar"], vocab=word_ids)
    ev = truth.events(DEFAULTS["min_held"])
    truth.events_default = ev
    first = ev.group_by("token_uid", "lens").agg(pl.col("mutation_layer").min(), pl.len().alias("n_events"))
    truth.tokens = truth.tokens.join(first, on=["token_uid", "lens"], how="left").with_columns(
        pl.col("n_events").fill_null(0)).sort("lens", "token_uid")
    return tables, hidden, truth


def slice_batch(tables: dict, hidden, s0: int, s1: int, n_tokens: int, n_layer_rows: int, n_topk_rows: int,
                lenses: int):
    """Rows of samples [s0, s1) with batch-local token_uid (0..), as the writer expects."""
    t0, t1 = s0 * n_tokens, s1 * n_tokens
    samples = tables["samples"].slice(s0, s1 - s0).drop_columns([])
    tokens = tables["tokens"].slice(t0, t1 - t0)
    tokens = tokens.set_column(0, "token_uid", pa.array(np.arange(t1 - t0, dtype=np.int64)))
    keys = samples.column("sample_key").combine_chunks()
    tokens = tokens.drop_columns(["sample_id"]).append_column(
        "sample_key", keys.take(pa.array(np.repeat(np.arange(s1 - s0), n_tokens))))
    parts = {}
    for name, per_tok in (("layers", n_layer_rows), ("topk", n_topk_rows)):
        tab = tables[name]
        n_all = tab.num_rows // lenses
        chunks = []
        for li in range(lenses):
            chunks.append(tab.slice(li * n_all + t0 * per_tok, (t1 - t0) * per_tok))
        sub = pa.concat_tables(chunks)
        uid = pc.subtract(sub.column("token_uid"), pa.scalar(t0, pa.int64()))
        parts[name] = sub.set_column(0, "token_uid", uid)
    h = hidden[t0:t1] if hidden is not None else None
    return samples, tokens, parts["layers"], parts["topk"], h


def _meta(tables: dict, n_samples: int, n_tokens: int, n_layers: int, top_k: int, hidden_size: int | None,
          seed: int, lenses, plan: dict) -> dict:
    """The store meta of a synthetic store (``plan``: how it was synthesized)."""
    return {
        "model": {"id": "synthetic", "family": "synthetic", "revision": None, "dtype": "float16",
                  "n_layers": n_layers, "hidden_size": hidden_size, "vocab_size": tables["vocab"].num_rows},
        "lens": {"modes": list(lenses), "top_k": top_k, "dtype": "float32"},
        "generation": {"greedy": True, "max_new_tokens": n_tokens},
        "dataset": {"name": "synthetic", "seed": seed, "n_samples": n_samples},
        "capture": {"roles": ["generated"], "hidden_layers": list(range(n_layers)) if hidden_size else None,
                    "synthetic_plan": plan},
    }


def build_synthetic_store(path, n_samples: int = 8, n_tokens: int = 12, n_layers: int = 33, top_k: int = 10,
                          hidden_size: int | None = None, seed: int = 0, plants: list[Plant] | None = None,
                          lenses: tuple[str, ...] = ("final_norm",), batch_samples: int = 128,
                          compact: bool = False) -> SyntheticTruth:
    """Write a synthetic store at ``path`` through StoreWriter; returns the planted truth.

    ``hidden_size`` None writes no hidden states (AMBER scale); a small D (16-64) writes the Zarr
    array for every token and layer, with the cross-image "guitar" pattern on step-0 tokens.
    ``compact``: let the writer rewrite the per-batch parts into few files on close (off by default:
    the parts are already sorted by key and compaction would write every table twice).
    """
    from kevo_store import StoreWriter

    path = Path(path)
    tables, hidden, truth = synthesize(n_samples, n_tokens, n_layers, top_k, hidden_size, seed, plants, lenses)
    meta = _meta(tables, n_samples, n_tokens, n_layers, top_k, hidden_size, seed, lenses,
                 {"seed": seed, "n_plants": len(plants or []), "defaults": DEFAULTS})
    kw = {}
    if hidden_size:
        kw = {"hidden_size": hidden_size, "hidden_layers": list(range(n_layers)), "hidden_dtype": "float16"}
    nl = n_layers
    with StoreWriter(path, meta=meta, compact=compact, **kw) as w:
        w.write_vocab(tables["vocab"])
        for s0 in range(0, n_samples, batch_samples):
            s1 = min(n_samples, s0 + batch_samples)
            samples, tokens, layers, topk, h = slice_batch(tables, hidden, s0, s1, n_tokens, nl, nl * top_k,
                                                           len(lenses))
            batch = {"samples": samples, "tokens": tokens, "layers": layers, "topk": topk}
            if h is not None:
                batch["hidden"] = h
            w.write_batch(**batch)
    return truth


def build_scaled_store(path, n_samples: int, chunk_samples: int = 1004, n_tokens: int = 100, n_layers: int = 33,
                       top_k: int = 10, seed: int = 0, batch_samples: int = 128) -> dict:
    """A synthetic store of ``n_samples`` written ``chunk_samples`` at a time (benchmarks at many times
    AMBER's size, which one in-memory synthesis would not fit): chunk c is ``synthesize``'s store of
    seed ``seed + 1_000_003 * c``, its samples numbered on from the chunks before. No planted truth is
    returned (each chunk has its own); chunk 0 alone is exactly ``build_synthetic_store``'s store."""
    from kevo_store import StoreWriter

    path = Path(path)
    nl, lenses = n_layers, ("final_norm",)
    writer = None  # opened on the first chunk (the vocabulary's size goes into the meta)
    chunks = 0
    try:
        for c0 in range(0, n_samples, chunk_samples):
            n_c = min(chunk_samples, n_samples - c0)
            c_seed = seed + 1_000_003 * chunks
            tables, _, _ = synthesize(n_c, n_tokens, n_layers, top_k, None, c_seed, None, lenses, first_sample=c0)
            if writer is None:
                meta = _meta(tables, n_samples, n_tokens, n_layers, top_k, None, seed, lenses,
                             {"seed": seed, "chunk_samples": chunk_samples, "chunk_seed": "seed + 1000003 * chunk",
                              "defaults": DEFAULTS})
                writer = StoreWriter(path, meta=meta, compact=False)
                writer.write_vocab(tables["vocab"])
            for s0 in range(0, n_c, batch_samples):
                s1 = min(n_c, s0 + batch_samples)
                samples, tokens, layers, topk, _ = slice_batch(tables, None, s0, s1, n_tokens, nl, nl * top_k,
                                                               len(lenses))
                writer.write_batch(samples=samples, tokens=tokens, layers=layers, topk=topk)
            del tables
            chunks += 1
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return {"samples": n_samples, "chunks": chunks, "chunk_samples": chunk_samples}
