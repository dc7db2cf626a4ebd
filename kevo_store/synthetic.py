"""Synthetic stores with planted, known patterns, built without any model.

Tests and benchmarks need stores whose right answers are known in advance: a token whose top-1
emerges at layer 20 and is displaced at layer 27 by another candidate, a hallucinated object token
that mutates, a token that never stands out. ``build_synthetic_store`` plans every token's
layer-by-layer story, renders it into the store's tables (vectorised numpy, no per-token Python
loops, so it reaches AMBER scale: 1,004 samples x 100 tokens x 33 layers, top-10) and writes it
through :class:`kevo_store.StoreWriter`. It returns the ground truth of what it planted.

The plan of a token (per lens) is a handful of integers:

- ``critical_layer`` c: the first layer whose top-1 probability reaches tau (0.5). Before c every
  top-1 probability is below 0.45; at c it is at least 0.55 (wide margins, so float32 never blurs it).
- segments: after c the top-1 is held by up to three candidates in turn; the last one is the token
  the model emitted. A candidate may already be top-1 (with probability < tau) ``early`` layers
  before c.
- js_prev is planted as a boolean "high" mask rendered to values: high in [0.2, 0.6] nats, low in
  [0.001, 0.02]. High on layers 1..``critical_layer_js`` (the layer after which divergence calms
  down) and on planted spikes. Every plan keeps the high layers after c a minority, so the token's
  stable-stage median of js_prev is at most 0.02 and the mutation threshold
  max(js_multiple * median, js_min) = 0.1 separates high from low exactly.

The truth follows the definitions of DESIGN.md §5 with the defaults of the named queries
(tau 0.5, theta 0.1, window 3, min_held 3, js_multiple 5, js_min 0.05); ``SyntheticTruth.events(r)``
and ``SyntheticTruth.critical_layers_js(window)`` recompute it for other parameters from the plan.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KINDS = ("stable", "mutation", "swap", "double", "js", "early", "never")
"""Token stories. stable: one candidate from the critical layer on. mutation: candidate A is displaced
by the emitted token with a js_prev spike. swap: the same switch without a js_prev spike (a top-1
event only). double: two displacements. js: a js_prev spike with the top-1 unchanged.
early: a candidate held top-1 for only 2 layers after c (below min_held: no event). never: top-1
probability never reaches tau (no critical layer, no events)."""

LABELS = ("hallucinated", "correct", "safe", None)

# Probability of each kind (in KINDS order) by object label: hallucinated tokens mutate more often.
_KIND_P = {
    "hallucinated": (0.15, 0.30, 0.15, 0.15, 0.10, 0.05, 0.10),
    "correct": (0.45, 0.10, 0.05, 0.05, 0.10, 0.10, 0.15),
    "safe": (0.45, 0.10, 0.05, 0.05, 0.10, 0.10, 0.15),
    None: (0.40, 0.10, 0.05, 0.05, 0.10, 0.10, 0.20),
}
_LABEL_P = (0.15, 0.25, 0.05, 0.55)

# The defaults the planted truth is stated for (the named queries' defaults).
DEFAULTS = {"tau": 0.5, "theta": 0.1, "window": 3, "min_held": 3, "js_multiple": 5.0, "js_min": 0.05}

OBJECT_WORDS = (
    "guitar camera water dog cat table chair car tree person bicycle horse bench boat bottle cup "
    "bowl clock book laptop phone umbrella bag kite plate pizza cake bird sheep cow elephant bear "
    "zebra giraffe train bus truck sign window door grass sky road wall shirt hat fence mountain"
).split()


@dataclass
class Plant:
    """An explicit token story, placed on the first tokens of the first sample (token_uid 0, 1, ...).

    Unset fields are drawn at random like any other token's; every plan is checked to be unambiguous.
    """

    kind: str = "mutation"
    """One of KINDS."""
    critical_layer: int | None = None
    """First layer with top1_prob >= 0.5 (ignored for kind 'never')."""
    mutation_layers: tuple[int, ...] = ()
    """Layers where the top-1 changes (mutation, swap: 1; double: 2) or where js_prev spikes (js: 1)."""
    critical_layer_js: int | None = None
    """Layer after which js_prev stays low (the stabilisation variant); default critical_layer."""
    words: tuple[str, ...] = ()
    """Candidate words in the order they hold top-1; the last is the emitted token (e.g. ('camera', 'water'))."""
    label: str | None = None
    """Object label of the token: 'hallucinated' | 'correct' | 'safe' | None."""
    early: int = 0
    """Layers before the critical layer at which the first candidate is already top-1 (below tau)."""
    spike_width: int = 1
    """Layers a js_prev spike lasts (1 or 2)."""


@dataclass
class SyntheticTruth:
    """What the builder planted. Token rows are keyed by token_uid (the store is written fresh)."""

    n_layers: int
    top_k: int
    lenses: tuple[str, ...]
    tokens: object
    """polars DataFrame: token_uid, sample_id, sample_key, step, lens, kind, label, token_id,
    critical_layer, critical_layer_js, mutation_layer (first event, default params), n_events, candidates."""
    events_default: object
    """polars DataFrame of mutation events under the default parameters."""
    switches: object
    """polars DataFrame: every top-1 change after the critical layer (token_uid, lens, layer,
    displaced_id, new_top1_id, held_layers, js_high)."""
    js_high: dict = field(default_factory=dict)
    """lens -> bool array (n_tokens, n_layers): planted high js_prev layers (layer 0 False)."""
    critical: dict = field(default_factory=dict)
    """lens -> int array (n_tokens,) of critical layers (-1 = none)."""
    dispersion_sigma: np.ndarray | None = None
    """Per layer, the planted spread of answer tokens' hidden states across images (None if no hidden)."""
    answer_token_id: int | None = None
    vocab: dict = field(default_factory=dict)
    """word -> vocab_id for the candidate words."""
    params: dict = field(default_factory=lambda: dict(DEFAULTS))

    def events(self, min_held: int = 3):
        """Mutation events for another ``min_held`` (the js crossings do not depend on it)."""
        import polars as pl

        sw = self.switches.filter(pl.col("held_layers") >= min_held).select(
            "token_uid", "lens", pl.col("layer").alias("mutation_layer"), "displaced_id", "new_top1_id",
            pl.lit(True).alias("is_top1"))
        js = self._crossings()
        ev = sw.join(js, on=["token_uid", "lens", "mutation_layer"], how="full", coalesce=True)
        ev = ev.with_columns(
            pl.col("is_top1").fill_null(False), pl.col("is_js").fill_null(False))
        ev = ev.with_columns(
            pl.when(pl.col("is_top1") & pl.col("is_js")).then(pl.lit("top1+js"))
            .when(pl.col("is_top1")).then(pl.lit("top1")).otherwise(pl.lit("js")).alias("kind"))
        return ev.select("token_uid", "lens", "mutation_layer", "kind", "displaced_id").sort(
            "token_uid", "lens", "mutation_layer")

    def _crossings(self):
        import polars as pl

        rows = []
        for lens in self.lenses:
            h = self.js_high[lens]
            c = self.critical[lens]
            lay = np.arange(h.shape[1])[None, :]
            up = np.zeros_like(h)
            up[:, 1:] = h[:, 1:] & ~h[:, :-1]
            up &= (lay > c[:, None]) & (c[:, None] >= 0)
            t, layer = np.nonzero(up)
            rows.append(pl.DataFrame({"token_uid": t.astype(np.int64), "lens": [lens] * len(t),
                                      "mutation_layer": layer.astype(np.int64), "is_js": [True] * len(t)}))
        return pl.concat(rows)

    def critical_layers_js(self, window: int = 3, lens: str = "final_norm") -> np.ndarray:
        """Stabilisation critical layer per token for another window (-1 = none); 0 = up to the last layer."""
        h = self.js_high[lens]
        n, nl = h.shape
        out = np.full(n, -1, dtype=np.int64)
        for layer in range(nl - 1, -1, -1):  # a loop over layers, not tokens
            if window > 0:
                if layer + window > nl - 1:
                    continue
                ok = ~h[:, layer + 1: layer + window + 1].any(axis=1)
            else:
                ok = ~h[:, layer + 1:].any(axis=1) if layer < nl - 1 else np.zeros(n, bool)
            out[ok] = layer
        return out


# ----------------------------------------------------------------------------------------------
# planning


def _lay_ranges(L: int):
    c_lo, c_hi = max(2, round(0.3 * L)), L - 14
    if c_hi < c_lo:
        raise ValueError(f"synthetic stores need n_layers >= 24 (got {L + 1})")
    return c_lo, c_hi


def _randint(rng, lo, hi):
    """Vectorised inclusive integer draw in [lo, hi] (arrays), hi >= lo required."""
    return lo + np.floor(rng.random(np.shape(lo)) * (hi - lo + 1)).astype(np.int64)


def _plan(rng, kinds: np.ndarray, emitted: np.ndarray, L: int, n_cand: int, window: int = 3, r: int = 3):
    """Random plans for tokens of the given kinds; returns a dict of int arrays (-1 = unused)."""
    n = len(kinds)
    c_lo, c_hi = _lay_ranges(L)
    k = {name: kinds == i for i, name in enumerate(KINDS)}
    c = rng.integers(c_lo, c_hi + 1, n)
    cjs = np.maximum(c + rng.integers(-2, 3, n), 2)
    early = rng.integers(0, 3, n)
    ev_lo = np.maximum(c + r, cjs + window + 1)
    width = rng.integers(1, 3, n)
    m1 = np.full(n, -1)
    m2 = np.full(n, -1)
    spike1 = np.full(n, -1)
    spike2 = np.full(n, -1)
    # mutation: A on [c-e, m1), emitted on [m1, L], spike at m1
    mu = k["mutation"]
    m1[mu] = _randint(rng, ev_lo[mu], np.full(mu.sum(), L - 1))
    spike1[mu] = m1[mu]
    # swap: same switch without a spike
    sw = k["swap"]
    m1[sw] = _randint(rng, c[sw] + r, np.full(sw.sum(), L - 1))
    # double: A, B, emitted; spikes at both switches
    db = k["double"]
    m1[db] = _randint(rng, ev_lo[db], np.full(db.sum(), L - 1 - r))
    m2[db] = _randint(rng, m1[db] + r, np.full(db.sum(), L - 1))
    spike1[db], spike2[db] = m1[db], m2[db]
    width[db] = 1
    # js: a spike without a top-1 change
    js = k["js"]
    spike1[js] = _randint(rng, ev_lo[js], np.full(js.sum(), L - 1))
    # early: A held only c, c+1 (2 layers < r), emitted from c+2, no spike
    ea = k["early"]
    m1[ea] = c[ea] + 2
    cjs[ea] = np.minimum(cjs[ea], c[ea] + 1)
    # never: no critical layer; js either high throughout or calm from a late layer
    nv = k["never"]
    c[nv] = -1
    cjs[nv] = np.where(rng.random(nv.sum()) < 0.5, -1, rng.integers(c_lo, L - window, nv.sum()))
    width = np.where(spike1 == L, 1, width)
    # candidates: distinct from each other and from the emitted token
    n_seg = np.where(db, 3, np.where(mu | sw | ea, 2, 1))
    off = rng.integers(1, n_cand, (n, 2))
    off[:, 1] = np.where(off[:, 1] == off[:, 0], (off[:, 0] % (n_cand - 1)) + 1, off[:, 1])
    alt = (emitted[:, None] + off) % n_cand
    cand = np.full((n, 3), -1)
    cand[n_seg == 1, 0] = emitted[n_seg == 1]
    cand[n_seg == 2, 0] = alt[n_seg == 2, 0]
    cand[n_seg == 2, 1] = emitted[n_seg == 2]
    cand[n_seg == 3, 0] = alt[n_seg == 3, 0]
    cand[n_seg == 3, 1] = alt[n_seg == 3, 1]
    cand[n_seg == 3, 2] = emitted[n_seg == 3]
    early[nv] = 0
    return {"kind": kinds, "c": c, "cjs": cjs, "early": early, "m1": m1, "m2": m2, "spike1": spike1,
            "spike2": spike2, "width": width, "cand": cand}


def _apply_plants(plan: dict, plants: list[Plant], word_ids: dict, L: int):
    for i, p in enumerate(plants):
        if p.kind not in KINDS:
            raise ValueError(f"plant {i}: unknown kind {p.kind!r} (one of {', '.join(KINDS)})")
        kind = KINDS.index(p.kind)
        plan["kind"][i] = kind
        c = -1 if p.kind == "never" else (p.critical_layer if p.critical_layer is not None else plan["c"][i])
        plan["c"][i] = c
        plan["cjs"][i] = p.critical_layer_js if p.critical_layer_js is not None else (c if c >= 0 else -1)
        plan["early"][i] = p.early
        plan["width"][i] = p.spike_width
        ml = tuple(p.mutation_layers)
        need = {"mutation": 1, "swap": 1, "double": 2, "js": 1}.get(p.kind, 0)
        if len(ml) != need:
            raise ValueError(f"plant {i} ({p.kind}): needs {need} mutation_layers, got {ml}")
        plan["m1"][i] = plan["m2"][i] = plan["spike1"][i] = plan["spike2"][i] = -1
        if p.kind in ("mutation", "swap", "double"):
            plan["m1"][i] = ml[0]
        if p.kind == "double":
            plan["m2"][i] = ml[1]
        if p.kind in ("mutation", "double", "js"):
            plan["spike1"][i] = ml[0]
        if p.kind == "double":
            plan["spike2"][i] = ml[1]
        if p.kind == "early":
            plan["m1"][i] = c + 2
        n_seg = {"double": 3, "mutation": 2, "swap": 2, "early": 2}.get(p.kind, 1)
        if p.words:
            if len(p.words) != n_seg:
                raise ValueError(f"plant {i} ({p.kind}): needs {n_seg} words, got {p.words}")
            unknown = [w for w in p.words if w not in word_ids]
            if unknown:
                raise ValueError(f"plant {i}: unknown words {unknown}; use words of OBJECT_WORDS")
            plan["cand"][i] = -1
            plan["cand"][i, :n_seg] = [word_ids[w] for w in p.words]
        elif plan["cand"][i, n_seg - 1] < 0 or (n_seg < 3 and plan["cand"][i, n_seg] >= 0):
            raise ValueError(f"plant {i}: give words for a {p.kind} plant")


def _segments(plan: dict, L: int):
    """(start, end) of the (up to 3) top-1 segments per token, -1 where unused."""
    c, m1, m2, early = plan["c"], plan["m1"], plan["m2"], plan["early"]
    n = len(c)
    start = np.full((n, 3), -1)
    end = np.full((n, 3), -1)
    has = c >= 0
    start[has, 0] = c[has] - early[has]
    end[has, 0] = np.where(m1[has] >= 0, m1[has] - 1, L)
    two = has & (m1 >= 0)
    start[two, 1] = m1[two]
    end[two, 1] = np.where(m2[two] >= 0, m2[two] - 1, L)
    three = has & (m2 >= 0)
    start[three, 2] = m2[three]
    end[three, 2] = L
    # 'never': the emitted token is top-1 (below tau) on the last three layers
    nv = ~has
    start[nv, 0] = L - 2
    end[nv, 0] = L
    return start, end


def _js_high(plan: dict, L: int) -> np.ndarray:
    n = len(plan["c"])
    lay = np.arange(L + 1)[None, :]
    cjs = plan["cjs"].copy()
    cjs = np.where((plan["c"] < 0) & (cjs < 0), L, cjs)  # never + no calm: high throughout
    h = (lay >= 1) & (lay <= cjs[:, None])
    for s in ("spike1", "spike2"):
        sp = plan[s][:, None]
        h |= (sp >= 0) & (lay >= sp) & (lay < sp + plan["width"][:, None])
    h[:, 0] = False
    assert h.shape == (n, L + 1)
    return h


def _validate(plan: dict, high: np.ndarray, start: np.ndarray, L: int, window: int, r: int):
    """Refuse plans whose answer would depend on float noise or on an interpretation."""
    c = plan["c"]
    has = c >= 0
    lay = np.arange(L + 1)[None, :]
    bad = []
    after = (lay > c[:, None]) & has[:, None]
    n_after = after.sum(1)
    n_high = (high & after).sum(1)
    bad.append(("js_prev high on half the layers after the critical layer (median would blur)",
                has & (2 * n_high >= n_after)))
    bad.append(("critical layer must leave >= 9 layers after it", has & (L - c < 9)))
    bad.append(("first candidate starts before layer 1", has & (start[:, 0] < 1)))
    # no js spike inside the calm window that defines critical_layer_js
    cjs = plan["cjs"]
    for s in ("spike1", "spike2"):
        sp = plan[s]
        bad.append((f"{s} inside the critical_layer_js window", (sp >= 0) & (sp <= cjs + window)))
        bad.append((f"{s} must come after the critical layer", (sp >= 0) & (sp <= c)))
    for s, prev in (("m1", "c"), ("m2", "m1")):
        m = plan[s]
        kind_ok = (m >= 0) & (plan["kind"] != KINDS.index("early"))
        bad.append((f"{s} must hold the previous candidate >= {r} layers", kind_ok & (m - plan[prev] < r)))
        bad.append((f"{s} beyond the last layer", m > L))
    for msg, mask in bad:
        if mask.any():
            raise ValueError(f"synthetic plan for token {int(np.argmax(mask))}: {msg}")


# ----------------------------------------------------------------------------------------------
# rendering


def _string_array(value: str, n: int) -> pa.Array:
    """n copies of one string, built from raw buffers (a Python list of 33M strings would take seconds)."""
    b = value.encode()
    offsets = np.arange(n + 1, dtype=np.int64) * len(b)
    if offsets[-1] >= 2**31:
        raise ValueError("column too large for a 32-bit string array")
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b * n))


def _render_lens(rng, plan: dict, emitted: np.ndarray, L: int, K: int, n_cand: int, n_fill: int):
    """Top-1, top-k, p_out, js_prev ... arrays (n, L+1[, K]) for one lens."""
    n = len(emitted)
    nl = L + 1
    lay = np.arange(nl)[None, :]
    c = plan["c"]
    start, end = _segments(plan, L)
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
    high = _js_high(plan, L)
    js = np.where(high, rng.uniform(0.2, 0.6, (n, nl)), rng.uniform(0.001, 0.02, (n, nl))).astype(np.float32)
    frac = 1.0 - lay / L
    js_final = (np.log(2) * 0.8 * frac * rng.uniform(0.6, 1.0, (n, nl))).astype(np.float32)
    js_final[:, L] = 0.0
    kl_final = (js_final * rng.uniform(2.0, 4.0, (n, nl))).astype(np.float32)
    entropy = np.where(post, rng.uniform(0.5, 2.0, (n, nl)), rng.uniform(3.0, 6.0, (n, nl))).astype(np.float32)
    return {"top1": top1, "prob1": probs[:, :, 0], "ids": ids, "probs": probs, "p_out": p_out.astype(np.float32),
            "rank_out": rank_out, "js": js, "js_final": js_final, "kl_final": kl_final, "entropy": entropy,
            "high": high, "start": start}


def _truth_switches(plan: dict, high: np.ndarray, start: np.ndarray, lens: str):
    """Every top-1 change after the critical layer, with how long the displaced candidate held after c."""
    import polars as pl

    c, cand = plan["c"], plan["cand"]
    rows = {"token_uid": [], "lens": [], "layer": [], "displaced_id": [], "new_top1_id": [], "held_layers": [],
            "js_high": []}
    for s in (1, 2):
        sel = np.nonzero((start[:, s] >= 0) & (start[:, s] > c) & (c >= 0))[0]
        b = start[sel, s]
        rows["token_uid"].append(sel)
        rows["layer"].append(b)
        rows["displaced_id"].append(cand[sel, s - 1])
        rows["new_top1_id"].append(cand[sel, s])
        rows["held_layers"].append(b - np.maximum(start[sel, s - 1], c[sel]))
        rows["js_high"].append(high[sel, b])
    cat = {k: np.concatenate(v) for k, v in rows.items() if k != "lens"}
    df = pl.DataFrame({"token_uid": cat["token_uid"].astype(np.int64), "lens": [lens] * len(cat["layer"]),
                       "layer": cat["layer"].astype(np.int64), "displaced_id": cat["displaced_id"].astype(np.int64),
                       "new_top1_id": cat["new_top1_id"].astype(np.int64),
                       "held_layers": cat["held_layers"].astype(np.int64), "js_high": cat["js_high"]})
    return df.sort("token_uid", "layer")


def synthesize(n_samples: int = 8, n_tokens: int = 12, n_layers: int = 33, top_k: int = 10,
               hidden_size: int | None = None, seed: int = 0, plants: list[Plant] | None = None,
               lenses: tuple[str, ...] = ("final_norm",), n_fillers: int = 2000):
    """Plan and render a synthetic store in memory: (tables as pyarrow, hidden or None, SyntheticTruth)."""
    import polars as pl

    if top_k < 2:
        raise ValueError("top_k must be >= 2")
    L = n_layers - 1
    _lay_ranges(L)
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
    label_idx = rng.choice(len(LABELS), size=n, p=_LABEL_P)
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
        kinds[sel] = rng.choice(len(KINDS), size=sel.sum(), p=_KIND_P[lab])
    W, R = DEFAULTS["window"], DEFAULTS["min_held"]
    rendered, truths, switches, highs, crits = {}, [], [], {}, {}
    for lens_i, lens in enumerate(lenses):
        lrng = np.random.default_rng([seed, lens_i, 1])
        plan = _plan(lrng, kinds.copy(), emitted, L, n_cand, W, R)
        if lens_i == 0:
            _apply_plants(plan, plants, word_ids, L)
        plan["cand"] = np.where(plan["cand"] >= 0, plan["cand"], -1)
        start, _ = _segments(plan, L)
        high = _js_high(plan, L)
        _validate(plan, high, start, L, W, R)
        # the emitted token is the last segment's candidate (plants may name it)
        last = np.where(plan["cand"][:, 2] >= 0, plan["cand"][:, 2],
                        np.where(plan["cand"][:, 1] >= 0, plan["cand"][:, 1], plan["cand"][:, 0]))
        if lens_i == 0:
            emitted = last
        elif not np.array_equal(last, emitted):
            raise AssertionError("lens plans disagree on the emitted token")
        r = _render_lens(lrng, plan, emitted, L, top_k, n_cand, n_fillers)
        rendered[lens] = r
        highs[lens] = high
        crits[lens] = plan["c"]
        switches.append(_truth_switches(plan, high, start, lens))
        truths.append((lens, plan))
    label_arr = np.array(LABELS, dtype=object)[label_idx]
    token_text = np.array(vocab_text, dtype=object)[emitted]
    # ---- tables
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
        "role": _string_array("generated", n),
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
    samples = pa.table({
        "sample_key": pa.array([f"synthetic:{i}" for i in range(n_samples)]),
        "dataset": _string_array("synthetic", n_samples),
        "item_id": pa.array([str(i) for i in range(n_samples)]),
        "image_id": pa.array([f"synthetic/{i:05d}.png" for i in range(n_samples)]),
        "image_sha256": pa.array([hashlib.sha256(f"{seed}:{i}".encode()).hexdigest() for i in range(n_samples)]),
        "prompt": _string_array("Describe this image.", n_samples),
        "prompt_text": _string_array("USER: <image>\nDescribe this image. ASSISTANT:", n_samples),
        "response": pa.array(responses),
        "n_prompt_tokens": pa.array(np.full(n_samples, n_prompt, np.int32)),
        "n_generated": pa.array(np.full(n_samples, n_tokens, np.int32)),
        "stop_reason": _string_array("max_new_tokens", n_samples),
        "annotations": _string_array(json.dumps({"synthetic": True}), n_samples),
        "metrics": pa.nulls(n_samples, pa.string()),
    })
    layer_parts, topk_parts = [], []
    nl = L + 1
    for lens in sorted(lenses):  # sorted: the table key is (token_uid, lens, layer)
        r = rendered[lens]
        js_prev = r["js"].reshape(-1).astype(np.float32)
        js_mask = np.tile(np.arange(nl) == 0, n)
        layer_parts.append(pa.table({
            "token_uid": pa.array(np.repeat(np.arange(n, dtype=np.int64), nl)),
            "lens": _string_array(lens, n * nl),
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
            "lens": _string_array(lens, n * nl * top_k),
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
    # ---- hidden states: the answer token ("guitar") agrees across images in the middle layers
    hidden, sigma = None, None
    if hidden_size:
        D = hidden_size
        hrng = np.random.default_rng([seed, 99])
        lay = np.arange(nl)
        neck = L * 0.55
        sigma = (0.15 + 1.5 * (np.abs(lay - neck) / L) ** 1.5 * 4).astype(np.float64)
        centers = hrng.normal(0, 1, (nl, D)) * 3.0
        hidden = centers[None, :, :] + hrng.normal(0, 1, (n, nl, D)) * 1.0
        ans = step == 0
        hidden[ans] = centers[None] + hrng.normal(0, 1, (ans.sum(), nl, D)) * sigma[None, :, None]
        hidden = hidden.astype(np.float16)
    # ---- truth
    tok_rows = []
    ev = None
    for lens, plan in truths:
        cand = plan["cand"]
        tok_rows.append(pl.DataFrame({
            "token_uid": np.arange(n, dtype=np.int64), "sample_id": sample_id.astype(np.int64),
            "step": step.astype(np.int64), "lens": pl.repeat(lens, n, eager=True),
            "kind": pl.Series(np.asarray(KINDS, dtype=object)[plan["kind"]].astype(str)),
            "label": pl.Series(label_arr.tolist(), dtype=pl.String), "token_id": emitted.astype(np.int64),
            "critical_layer": plan["c"].astype(np.int64), "critical_layer_js": plan["cjs"].astype(np.int64),
            "candidates": pl.Series(cand.astype(np.int64)),
        }).with_columns(
            pl.concat_str(pl.lit("synthetic:"), pl.col("sample_id").cast(pl.String)).alias("sample_key"),
            pl.when(pl.col("critical_layer") >= 0).then(pl.col("critical_layer")).alias("critical_layer"),
            pl.when(pl.col("critical_layer_js") >= 0).then(pl.col("critical_layer_js")).alias("critical_layer_js"),
            pl.col("candidates").arr.to_list().list.eval(pl.element().filter(pl.element() >= 0)),
        ).select("token_uid", "sample_id", "sample_key", "step", "lens", "kind", "label", "token_id",
                 "critical_layer", "critical_layer_js", "candidates"))
    truth = SyntheticTruth(
        n_layers=nl, top_k=top_k, lenses=tuple(lenses), tokens=pl.concat(tok_rows),
        events_default=None, switches=pl.concat(switches), js_high=highs, critical=crits,
        dispersion_sigma=sigma, answer_token_id=word_ids["guitar"], vocab=word_ids)
    ev = truth.events(DEFAULTS["min_held"])
    truth.events_default = ev
    first = ev.group_by("token_uid", "lens").agg(pl.col("mutation_layer").min(), pl.len().alias("n_events"))
    truth.tokens = truth.tokens.join(first, on=["token_uid", "lens"], how="left").with_columns(
        pl.col("n_events").fill_null(0)).sort("lens", "token_uid")
    tables = {"samples": samples, "tokens": tokens, "layers": pa.concat_tables(layer_parts),
              "topk": pa.concat_tables(topk_parts), "vocab": vocab}
    return tables, hidden, truth


def _slice_batch(tables: dict, hidden, s0: int, s1: int, n_tokens: int, n_layer_rows: int, n_topk_rows: int,
                 lenses: int):
    """Rows of samples [s0, s1) with batch-local token_uid (0..), as the writer expects."""
    t0, t1 = s0 * n_tokens, s1 * n_tokens
    samples = tables["samples"].slice(s0, s1 - s0).drop_columns([])
    tokens = tables["tokens"].slice(t0, t1 - t0)
    tokens = tokens.set_column(0, "token_uid", pa.array(np.arange(t1 - t0, dtype=np.int64)))
    tokens = tokens.drop_columns(["sample_id"]).append_column(
        "sample_key", pa.array([f"synthetic:{s}" for s in np.repeat(np.arange(s0, s1), n_tokens)]))
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
    meta = {
        "model": {"id": "synthetic", "family": "synthetic", "revision": None, "dtype": "float16",
                  "n_layers": n_layers, "hidden_size": hidden_size, "vocab_size": tables["vocab"].num_rows},
        "lens": {"modes": list(lenses), "top_k": top_k, "dtype": "float32"},
        "generation": {"greedy": True, "max_new_tokens": n_tokens},
        "dataset": {"name": "synthetic", "seed": seed, "n_samples": n_samples},
        "capture": {"roles": ["generated"], "hidden_layers": list(range(n_layers)) if hidden_size else None,
                    "synthetic_plan": {"seed": seed, "n_plants": len(plants or []), "defaults": DEFAULTS}},
    }
    kw = {}
    if hidden_size:
        kw = {"hidden_size": hidden_size, "hidden_layers": list(range(n_layers)), "hidden_dtype": "float16"}
    nl = n_layers
    with StoreWriter(path, meta=meta, compact=compact, **kw) as w:
        w.write_vocab(tables["vocab"])
        for s0 in range(0, n_samples, batch_samples):
            s1 = min(n_samples, s0 + batch_samples)
            samples, tokens, layers, topk, h = _slice_batch(tables, hidden, s0, s1, n_tokens, nl, nl * top_k,
                                                            len(lenses))
            batch = {"samples": samples, "tokens": tokens, "layers": layers, "topk": topk}
            if h is not None:
                batch["hidden"] = h
            w.write_batch(**batch)
    return truth
