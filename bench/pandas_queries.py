"""The baseline of benchmark 4: named queries written the way an analyst would write them in pandas
(read the Parquet files, merge, groupby, shift), with the same definitions (docs/analyses.md) \
and the defaults the SQL fragments declare. Each function reads what it needs from the store's files itself, \
so its time is
comparable to a DuckDB query over the same files. Each returns a DataFrame that
:func:`check` compares with the DuckDB answer (the benchmark's correctness guard).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from queries.library import definition_defaults

_D = definition_defaults()
TAU, THETA, WINDOW, MIN_HELD, JS_MULTIPLE, JS_MIN = (
    _D["tau"], _D["theta"], _D["window"], _D["min_held"], _D["js_multiple"], _D["js_min"])


def _files(store, table: str) -> list[str]:
    return store.table_files(table)


def _read(store, table: str, columns: list[str], filters=None) -> pd.DataFrame:
    parts = [pd.read_parquet(f, columns=columns, filters=filters) for f in _files(store, table)]
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]


def _layers(store, cols: list[str], lens: str = "final_norm", role: str = "generated"):
    y = _read(store, "layers", ["token_uid", "layer", *cols], filters=[("lens", "==", lens)])
    t = _read(store, "tokens", ["token_uid", "sample_id", "step", "piece", "object", "label", "role"])
    t = t[t.role == role]
    y = y[y.token_uid.isin(t.token_uid)]
    return y.sort_values(["token_uid", "layer"], kind="stable").reset_index(drop=True), t


def _critical(y: pd.DataFrame) -> pd.DataFrame:
    g = y.groupby("token_uid")
    crit = y[y.top1_prob >= TAU].groupby("token_uid").layer.min().rename("critical_layer")
    out = pd.DataFrame({"last_layer": g.layer.max()}).join(crit)
    calm = y[y.js_prev < THETA][["token_uid", "layer"]].copy()
    calm["run"] = calm.layer - calm.groupby("token_uid").cumcount()
    runs = calm.groupby(["token_uid", "run"]).layer.agg(["min", "max"]).reset_index()
    runs = runs[runs["max"] - runs["min"] + 1 >= WINDOW]
    out = out.join((runs.groupby("token_uid")["min"].min() - 1).rename("critical_layer_js"))
    return out.reset_index()


def critical_layers(store) -> pd.DataFrame:
    y, t = _layers(store, ["top1_prob", "js_prev"])
    return _critical(y).merge(t, on="token_uid").sort_values("token_uid").reset_index(drop=True)


def critical_layer_distribution(store) -> pd.DataFrame:
    y, _ = _layers(store, ["top1_prob", "js_prev"])
    c = _critical(y)
    a = c.critical_layer.value_counts(dropna=False).rename("n_critical")
    b = c.critical_layer_js.value_counts(dropna=False).rename("n_critical_js")
    out = pd.concat([a, b], axis=1).fillna(0).astype(int)
    out["frac_critical"] = out.n_critical / len(c)
    out["frac_critical_js"] = out.n_critical_js / len(c)
    return out.rename_axis("layer").reset_index().sort_values("layer", na_position="last").reset_index(drop=True)


def divergence_curves(store) -> pd.DataFrame:
    y, t = _layers(store, ["js_prev", "js_final"])
    y = y.merge(t[["token_uid", "label"]], on="token_uid")
    y["token_class"] = y.label.fillna("non-object")
    g = y.groupby(["token_class", "layer"])
    out = pd.DataFrame({
        "n_tokens": g.size(), "js_prev_median": g.js_prev.median(), "js_prev_q25": g.js_prev.quantile(0.25),
        "js_prev_q75": g.js_prev.quantile(0.75), "js_prev_mean": g.js_prev.mean(),
        "js_final_median": g.js_final.median(),
    })
    return out.reset_index()


def _events(y: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Mutation events (token_uid, mutation_layer, kind) and each token's critical layer."""
    crit = y[y.top1_prob >= TAU].groupby("token_uid").layer.min().rename("critical_layer")
    w = y.join(crit, on="token_uid")
    w = w[w.layer >= w.critical_layer].copy()
    g = w.groupby("token_uid")
    w["top1_before"] = g.top1_id.shift()
    w["js_before"] = g.js_prev.shift()
    med = w[w.layer > w.critical_layer].groupby("token_uid").js_prev.median().rename("js_median")
    starts = w[(w.layer == w.critical_layer) | (w.top1_id != w.top1_before)].copy()
    starts["held_since"] = starts.groupby("token_uid").layer.shift()
    top1 = starts[starts.held_since.notna() & (starts.layer - starts.held_since >= MIN_HELD)]
    top1 = top1[["token_uid", "layer"]].assign(is_top1=1)
    w = w.join(med, on="token_uid")
    thr = np.maximum(JS_MULTIPLE * w.js_median, JS_MIN)
    js = w[(w.layer > w.critical_layer) & (w.js_prev > thr) & (w.js_before.isna() | (w.js_before <= thr))]
    js = js[["token_uid", "layer"]].assign(is_js=1)
    ev = top1.merge(js, on=["token_uid", "layer"], how="outer").fillna(0)
    ev["kind"] = np.where((ev.is_top1 == 1) & (ev.is_js == 1), "top1+js", np.where(ev.is_top1 == 1, "top1", "js"))
    return ev.rename(columns={"layer": "mutation_layer"}).sort_values(["token_uid", "mutation_layer"]), crit


def mutation_events(store) -> pd.DataFrame:
    y, t = _layers(store, ["top1_id", "top1_prob", "js_prev", "p_out"])
    ev, _ = _events(y)
    return ev.merge(t, on="token_uid").reset_index(drop=True)


def hallucination_curves(store) -> pd.DataFrame:
    y, t = _layers(store, ["top1_id", "top1_prob", "js_prev", "p_out"])
    ev, crit = _events(y)
    y = y.merge(t[["token_uid", "label"]], on="token_uid")
    y["token_class"] = y.label.fillna("non-object")
    y["is_critical"] = (y.layer == y.token_uid.map(crit)).astype(int)
    n_ev = ev.groupby(["token_uid", "mutation_layer"]).size().rename("n_ev")
    y = y.join(n_ev, on=["token_uid", "layer"])
    g = y.groupby(["token_class", "layer"])
    out = pd.DataFrame({
        "n_tokens": g.size(), "p_out_median": g.p_out.median(), "p_out_q25": g.p_out.quantile(0.25),
        "p_out_q75": g.p_out.quantile(0.75), "p_out_mean": g.p_out.mean(), "n_critical": g.is_critical.sum(),
        "n_mutation_events": g.n_ev.sum().astype(int),
    })
    return out.reset_index()


def top_candidates(store, token_uid: int) -> pd.DataFrame:
    lf = [("token_uid", "==", token_uid), ("lens", "==", "final_norm")]
    y = _read(store, "layers", ["layer", "top1_id", "top1_prob", "p_out"], filters=lf).sort_values("layer")
    k = _read(store, "topk", ["layer", "vocab_id", "prob", "rank"], filters=lf)
    emitted = int(_read(store, "tokens", ["token_id"], filters=[("token_uid", "==", token_uid)]).token_id.iloc[0])
    c = y[y.top1_prob >= TAU].layer.min()
    start = y.layer.max() if pd.isna(c) else c
    cand = y[y.layer >= start].groupby("top1_id").layer.agg(["min", "size"]).reset_index()
    cand.columns = ["vocab_id", "first_top1_layer", "n_top1_layers"]
    grid = y[["layer", "p_out"]].merge(cand, how="cross").merge(k, on=["layer", "vocab_id"], how="left")
    grid["prob"] = grid.prob.where(grid.prob.notna(), grid.p_out.where(grid.vocab_id == emitted))
    return grid.sort_values(["first_top1_layer", "vocab_id", "layer"]).reset_index(drop=True)


PANDAS = {
    "critical-layers": critical_layers,
    "critical-layer-distribution": critical_layer_distribution,
    "divergence-curves": divergence_curves,
    "mutation-events": mutation_events,
    "hallucination-curves": hallucination_curves,
    "top-candidates": top_candidates,
}


def check(name: str, duck, pdf: pd.DataFrame) -> tuple[bool, str]:
    """Does the pandas answer equal DuckDB's (polars frame)? Returns (ok, what was compared)."""
    d = duck.to_pandas()
    if len(d) != len(pdf):
        return False, f"rows {len(d)} (duckdb) vs {len(pdf)} (pandas)"
    if name == "critical-layers":
        ok = all(np.array_equal(d[c].fillna(-1).to_numpy(), pdf[c].fillna(-1).to_numpy())
                 for c in ("token_uid", "critical_layer", "critical_layer_js"))
        return ok, "token_uid, critical_layer, critical_layer_js of every token"
    if name == "critical-layer-distribution":
        a = d.fillna(-1).sort_values("layer")
        b = pdf.fillna(-1).sort_values("layer")
        ok = np.array_equal(a.n_critical.to_numpy(), b.n_critical.to_numpy()) and np.array_equal(
            a.n_critical_js.to_numpy(), b.n_critical_js.to_numpy())
        return ok, "counts per layer, both definitions"
    if name == "divergence-curves":
        ok = all(np.allclose(d[c].fillna(-1), pdf[c].fillna(-1), rtol=1e-5, atol=1e-7)
                 for c in ("js_prev_median", "js_prev_q75", "js_final_median"))
        return ok, "js_prev median and q75, js_final median per class and layer"
    if name == "mutation-events":
        a = d[["token_uid", "mutation_layer", "kind"]].astype(str).agg("|".join, axis=1).sort_values().to_numpy()
        b = pdf[["token_uid", "mutation_layer", "kind"]].astype({"mutation_layer": int}).astype(str).agg(
            "|".join, axis=1).sort_values().to_numpy()
        return bool(np.array_equal(a, b)), "(token_uid, mutation_layer, kind) of every event"
    if name == "hallucination-curves":
        ok = np.array_equal(d.n_critical.to_numpy(), pdf.n_critical.to_numpy()) and np.array_equal(
            d.n_mutation_events.to_numpy(), pdf.n_mutation_events.to_numpy()) and np.allclose(
            d.p_out_median, pdf.p_out_median, rtol=1e-5)
        return ok, "n_critical, n_mutation_events, p_out median per class and layer"
    if name == "top-candidates":
        ok = np.array_equal(d.vocab_id.to_numpy(), pdf.vocab_id.to_numpy()) and np.allclose(
            d.prob.fillna(-1), pdf.prob.fillna(-1))
        return ok, "candidate ids and probabilities per layer"
    return False, "no check"
