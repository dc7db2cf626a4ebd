"""The plan of a synthetic store: every token's layer-by-layer story as a handful of integers.

A plan (per lens) holds, per token:

- ``c``, the critical layer: the first layer whose top-1 probability reaches tau. The renderer
  keeps every top-1 probability below 0.45 before c and at least 0.55 from c on (wide margins, so
  float32 never blurs it), which is why the plan holds for any tau in (0.45, 0.55].
- segments: after c the top-1 is held by up to three candidates in turn (``cand``; the last one is
  the token the model emitted), switching at ``m1`` and ``m2``. A candidate may already be top-1
  (with probability < tau) ``early`` layers before c.
- js_prev as a boolean "high" mask (rendered as high in [0.2, 0.6] nats, low in [0.001, 0.02]):
  high on layers 1..``cjs`` (the layer after which divergence calms down) and on planted spikes.
  Every plan keeps the high layers after c a minority, so the token's stable-stage median of
  js_prev is at most 0.02 and the mutation threshold max(js_multiple x median, js_min) separates
  high from low exactly.

The definitions and their defaults are those of docs/analyses.md ("Critical layer", "Mutation
events"), read from the SQL fragments that define them (``queries.library.definition_defaults``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from queries.library import definition_defaults

KINDS = ("stable", "mutation", "swap", "double", "js", "early", "never")
"""Token stories. stable: one candidate from the critical layer on. mutation: candidate A is displaced
by the emitted token with a js_prev spike. swap: the same switch without a js_prev spike (a top-1
event only). double: two displacements. js: a js_prev spike with the top-1 unchanged.
early: a candidate held top-1 for only 2 layers after c (below min_held: no event). never: top-1
probability never reaches tau (no critical layer, no events)."""

LABELS = ("hallucinated", "correct", "safe", None)

# Probability of each kind (in KINDS order) by object label: hallucinated tokens mutate more often.
KIND_P = {
    "hallucinated": (0.15, 0.30, 0.15, 0.15, 0.10, 0.05, 0.10),
    "correct": (0.45, 0.10, 0.05, 0.05, 0.10, 0.10, 0.15),
    "safe": (0.45, 0.10, 0.05, 0.05, 0.10, 0.10, 0.15),
    None: (0.40, 0.10, 0.05, 0.05, 0.10, 0.10, 0.20),
}
LABEL_P = (0.15, 0.25, 0.05, 0.55)


def _defaults() -> dict:
    """The numeric defaults of the definitions, checked against the margins the renderer plants."""
    d = definition_defaults()
    out = {k: d[k] for k in ("tau", "theta", "window", "min_held", "js_multiple", "js_min")}
    # top-1 p < 0.45 before the critical layer and >= 0.55 from it; js_prev low <= 0.02, high >= 0.2
    if not 0.45 < out["tau"] <= 0.55:
        raise ValueError(f"the synthetic plan renders top-1 probabilities for tau in (0.45, 0.55], not {out['tau']}")
    if not 0.02 < out["theta"] <= 0.2:
        raise ValueError(f"the synthetic plan renders js_prev for theta in (0.02, 0.2], not {out['theta']}")
    if not (0.02 < out["js_min"] < 0.2 and out["js_multiple"] * 0.02 < 0.2):
        raise ValueError("the synthetic plan's js_prev levels do not separate at max(js_multiple x 0.02, js_min) = "
                         f"{max(out['js_multiple'] * 0.02, out['js_min'])}")
    return out


DEFAULTS = _defaults()
"""The definitions' defaults the planted truth is stated for (tau, theta, window, min_held, js_multiple, js_min)."""

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
    """First layer with top1_prob >= tau (ignored for kind 'never')."""
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


def lay_ranges(L: int):
    c_lo, c_hi = max(2, round(0.3 * L)), L - 14
    if c_hi < c_lo:
        raise ValueError(f"synthetic stores need n_layers >= 24 (got {L + 1})")
    return c_lo, c_hi


def _randint(rng, lo, hi):
    """Vectorised inclusive integer draw in [lo, hi] (arrays), hi >= lo required."""
    return lo + np.floor(rng.random(np.shape(lo)) * (hi - lo + 1)).astype(np.int64)


def plan_lens(rng, kinds: np.ndarray, emitted: np.ndarray, L: int, n_cand: int, window: int, r: int):
    """Random plans for tokens of the given kinds; returns a dict of int arrays (-1 = unused)."""
    n = len(kinds)
    c_lo, c_hi = lay_ranges(L)
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


def apply_plants(plan: dict, plants: list[Plant], word_ids: dict, L: int):
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


def segments(plan: dict, L: int):
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


def js_high(plan: dict, L: int) -> np.ndarray:
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


def validate(plan: dict, high: np.ndarray, start: np.ndarray, L: int, window: int, r: int):
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

