"""The answer key: what a synthetic store planted, stated with the definitions of docs/analyses.md.

Everything here follows from the plan (``plan.py``), not from the SQL: the critical layer is
where the plan puts top-1 probabilities above the margin, mutation events are the plan's top-1
switches and js_prev spikes. One case the plan does not decide: with a later critical layer
(``definition`` emitted / emitted_stays) a token may have as many high js_prev layers after it as
low ones, so its stable-stage median is no longer a low value; there the js_prev threshold is
computed from the rendered values (``js_prev``), as the definition says.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from .plan import DEFAULTS, KINDS

DEFINITIONS = ("top1", "emitted", "emitted_stays")
"""The critical layer's definitions (docs/analyses.md, "Critical layer")."""


@dataclass
class SyntheticTruth:
    """What the builder planted. Token rows are keyed by token_uid (the store is written fresh)."""

    n_layers: int
    top_k: int
    lenses: tuple[str, ...]
    tokens: pl.DataFrame
    """token_uid, sample_id, sample_key, step, lens, kind, label, token_id, critical_layer,
    critical_layer_js, candidates, mutation_layer (first event), n_events: under the default parameters."""
    events_default: pl.DataFrame
    """Mutation events under the default parameters (see ``events``)."""
    switches: pl.DataFrame
    """Every top-1 change after the paper's critical layer: token_uid, lens, layer, displaced_id,
    new_top1_id, held_from (first layer the displaced candidate was top-1), held_layers, js_high."""
    js_high: dict = field(default_factory=dict)
    """lens -> bool array (n_tokens, n_layers): planted high js_prev layers (layer 0 False)."""
    critical: dict = field(default_factory=dict)
    """lens -> int array (n_tokens,) of the paper's critical layers (-1 = none)."""
    segments: dict = field(default_factory=dict)
    """lens -> (start, cand) int arrays (n_tokens, 3): first layer and vocab id of each top-1 segment (-1 unused)."""
    js_prev: dict = field(default_factory=dict)
    """lens -> float32 array (n_tokens, n_layers): the rendered js_prev (layer 0 is not stored)."""
    dispersion_sigma: np.ndarray | None = None
    """Per layer, the planted spread of answer tokens' hidden states across images (None if no hidden)."""
    answer_token_id: int | None = None
    vocab: dict = field(default_factory=dict)
    """word -> vocab_id for the candidate words."""
    params: dict = field(default_factory=lambda: dict(DEFAULTS))

    # -- the critical layer

    def critical_layers(self, definition: str = "top1", lens: str = "final_norm") -> np.ndarray:
        """Critical layer per token under ``definition`` (-1 = never stands out).

        From the critical layer c on every top-1 has p >= 0.55, before it < 0.45. top1: c. emitted:
        where the emitted token (the last segment's candidate) first holds top-1 from c on.
        emitted_stays: where it takes top-1 for good, the start of the last segment (c at the earliest).
        """
        if definition not in DEFINITIONS:
            raise ValueError(f"definition must be one of {DEFINITIONS}")
        c = self.critical[lens]
        if definition == "top1":
            return c.copy()
        start, cand = self.segments[lens]
        n_seg = (cand >= 0).sum(1)
        rows = np.arange(len(c))
        emitted = cand[rows, n_seg - 1]
        if definition == "emitted":
            is_em = (cand == emitted[:, None]) & (cand >= 0)
            s = is_em.argmax(1)
        else:
            s = n_seg - 1
        out = np.maximum(start[rows, s], c)
        return np.where(c >= 0, out, -1)

    def critical_layers_js(self, window: int | None = None, lens: str = "final_norm") -> np.ndarray:
        """Stabilisation critical layer per token for a window (-1 = none); 0 = up to the last layer."""
        window = self.params["window"] if window is None else window
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

    # -- mutation events

    def events(self, min_held: int | None = None, definition: str = "top1") -> pl.DataFrame:
        """Mutation events: token_uid, lens, mutation_layer, kind (top1 | js | top1+js), displaced_id,
        held_layers (null for a js_prev jump alone), critical_layer."""
        min_held = self.params["min_held"] if min_held is None else min_held
        crit = pl.concat([pl.DataFrame({"token_uid": np.arange(len(self.critical[lens]), dtype=np.int64),
                                        "lens": [lens] * len(self.critical[lens]),
                                        "critical_layer": self.critical_layers(definition, lens)})
                          for lens in self.lenses])
        held = pl.col("layer") - pl.max_horizontal("held_from", "critical_layer")
        sw = (self.switches.join(crit, on=["token_uid", "lens"])
              .filter((pl.col("layer") > pl.col("critical_layer")) & (held >= min_held))
              .select("token_uid", "lens", pl.col("layer").alias("mutation_layer"), "displaced_id",
                      held.alias("held_layers"), pl.lit(True).alias("is_top1")))
        js = self._crossings(definition)
        ev = sw.join(js, on=["token_uid", "lens", "mutation_layer"], how="full", coalesce=True)
        ev = ev.with_columns(pl.col("is_top1").fill_null(False), pl.col("is_js").fill_null(False))
        ev = ev.with_columns(
            pl.when(pl.col("is_top1") & pl.col("is_js")).then(pl.lit("top1+js"))
            .when(pl.col("is_top1")).then(pl.lit("top1")).otherwise(pl.lit("js")).alias("kind"))
        return ev.join(crit, on=["token_uid", "lens"]).select(
            "token_uid", "lens", "mutation_layer", "kind", "displaced_id", "held_layers",
            "critical_layer").sort("token_uid", "lens", "mutation_layer")

    def _crossings(self, definition: str) -> pl.DataFrame:
        """js_prev crosses max(js_multiple x stable-stage median, js_min) upwards after the critical layer."""
        rows = []
        for lens in self.lenses:
            h = self.js_high[lens]
            c = self.critical_layers(definition, lens)
            nl = h.shape[1]
            lay = np.arange(nl)[None, :]
            after = (lay > c[:, None]) & (c[:, None] >= 0)
            up = np.zeros_like(h)
            up[:, 1:] = h[:, 1:] & ~h[:, :-1]
            up &= after
            # the plan decides wherever the high layers after c are a minority (then the median is low)
            n_after, n_high = after.sum(1), (h & after).sum(1)
            for t in np.nonzero((n_after > 0) & (2 * n_high >= n_after))[0]:
                js = self.js_prev[lens][t].astype(np.float64)
                thr = max(self.params["js_multiple"] * float(np.median(js[c[t] + 1:])), self.params["js_min"])
                hi = js > thr
                up[t] = False
                up[t, c[t] + 1:] = hi[c[t] + 1:] & ~hi[c[t]:-1]
            t, layer = np.nonzero(up)
            rows.append(pl.DataFrame({"token_uid": t.astype(np.int64), "lens": [lens] * len(t),
                                      "mutation_layer": layer.astype(np.int64), "is_js": [True] * len(t)}))
        return pl.concat(rows)

    # -- per token

    def stories(self, definition: str = "top1", min_held: int | None = None) -> pl.DataFrame:
        """Per token and lens under ``definition``: label, token_id, critical_layer, critical_layer_js,
        mutation_layer (first event), n_events, n_displaced and the stage lengths (docs/analyses.md, "Stages")."""
        ev = self.events(min_held, definition)
        per = ev.group_by("token_uid", "lens").agg(
            pl.col("mutation_layer").min(), pl.len().alias("n_events"),
            pl.col("displaced_id").is_not_null().sum().alias("n_displaced"))
        nl = self.n_layers
        crit = pl.concat([pl.DataFrame({"token_uid": np.arange(len(self.critical[lens]), dtype=np.int64),
                                        "lens": [lens] * len(self.critical[lens]),
                                        "c": self.critical_layers(definition, lens)}) for lens in self.lenses])
        t = self.tokens.select("token_uid", "lens", "sample_id", "step", "label", "token_id", "critical_layer_js")
        out = (t.join(crit, on=["token_uid", "lens"])
               .join(per, on=["token_uid", "lens"], how="left")
               .with_columns(pl.when(pl.col("c") >= 0).then(pl.col("c")).alias("critical_layer"),
                             pl.col("n_events").fill_null(0).cast(pl.Int64),
                             pl.col("n_displaced").fill_null(0).cast(pl.Int64)))
        m = pl.col("mutation_layer")
        c = pl.col("critical_layer")
        return out.with_columns(
            pl.coalesce(c, pl.lit(nl)).alias("rapid_layers"),
            pl.when(c.is_null()).then(0).otherwise(pl.coalesce(m, pl.lit(nl)) - c).alias("stable_layers"),
            pl.when(m.is_null()).then(0).otherwise(nl - m).alias("mutation_layers"),
        ).drop("c").sort("lens", "token_uid")


def truth_switches(plan: dict, high: np.ndarray, start: np.ndarray, lens: str) -> pl.DataFrame:
    """Every top-1 change after the critical layer, with how long the displaced candidate held after c."""
    c, cand = plan["c"], plan["cand"]
    rows = {"token_uid": [], "layer": [], "displaced_id": [], "new_top1_id": [], "held_from": [], "held_layers": [],
            "js_high": []}
    for s in (1, 2):
        sel = np.nonzero((start[:, s] >= 0) & (start[:, s] > c) & (c >= 0))[0]
        b = start[sel, s]
        rows["token_uid"].append(sel)
        rows["layer"].append(b)
        rows["displaced_id"].append(cand[sel, s - 1])
        rows["new_top1_id"].append(cand[sel, s])
        rows["held_from"].append(start[sel, s - 1])
        rows["held_layers"].append(b - np.maximum(start[sel, s - 1], c[sel]))
        rows["js_high"].append(high[sel, b])
    cat = {k: np.concatenate(v) for k, v in rows.items()}
    df = pl.DataFrame({"token_uid": cat["token_uid"].astype(np.int64), "lens": [lens] * len(cat["layer"]),
                       "layer": cat["layer"].astype(np.int64), "displaced_id": cat["displaced_id"].astype(np.int64),
                       "new_top1_id": cat["new_top1_id"].astype(np.int64),
                       "held_from": cat["held_from"].astype(np.int64),
                       "held_layers": cat["held_layers"].astype(np.int64), "js_high": cat["js_high"]})
    return df.sort("token_uid", "layer")


def token_table(lens: str, plan: dict, sample_id: np.ndarray, step: np.ndarray, labels: list,
                emitted: np.ndarray) -> pl.DataFrame:
    """The plan's per-token rows for one lens (critical layers as planted, null = none)."""
    n = len(sample_id)
    return pl.DataFrame({
        "token_uid": np.arange(n, dtype=np.int64), "sample_id": sample_id.astype(np.int64),
        "step": step.astype(np.int64), "lens": pl.repeat(lens, n, eager=True),
        "kind": pl.Series(np.asarray(KINDS, dtype=object)[plan["kind"]].astype(str)),
        "label": pl.Series(labels, dtype=pl.String), "token_id": emitted.astype(np.int64),
        "critical_layer": plan["c"].astype(np.int64), "critical_layer_js": plan["cjs"].astype(np.int64),
        "candidates": pl.Series(plan["cand"].astype(np.int64)),
    }).with_columns(
        pl.concat_str(pl.lit("synthetic:"), pl.col("sample_id").cast(pl.String)).alias("sample_key"),
        pl.when(pl.col("critical_layer") >= 0).then(pl.col("critical_layer")).alias("critical_layer"),
        pl.when(pl.col("critical_layer_js") >= 0).then(pl.col("critical_layer_js")).alias("critical_layer_js"),
        pl.col("candidates").arr.to_list().list.eval(pl.element().filter(pl.element() >= 0)),
    ).select("token_uid", "sample_id", "sample_key", "step", "lens", "kind", "label", "token_id",
             "critical_layer", "critical_layer_js", "candidates")
