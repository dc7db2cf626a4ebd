"""Figures from a store (matplotlib, Agg backend; PNG and SVG), all drawn from the named queries.

- candidates: the paper's Fig. 2/3, probability areas of the candidates that hold top-1 from the
  critical layer on, for one token, with its critical and mutation layers marked.
- js-heatmap: js_prev, tokens x layers, normalised none / global / per column (the paper's figure
  normalised per column, which hides how small late divergences are; 'global' shows it).
- stages / critical-layers: dataset-wide stage occupancy per layer and critical-layer histograms.
- tsne: an embeddings run, coloured by layer group (groups split at the median detected critical
  and mutation layers of the embedded tokens).
- divergence / hallucination: js_prev and p_out curves by token class (median and IQR).
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from kevo_store.errors import KevoError  # noqa: E402

from .engine import as_store, run  # noqa: E402
from .library import load  # noqa: E402
from .trace_plots import fig_attention_patches, fig_trace  # noqa: E402

CLASS_COLORS = {"hallucinated": "#d62728", "correct": "#2ca02c", "safe": "#9467bd", "non-object": "#7f7f7f"}
GROUP_COLORS = ("#1f77b4", "#2ca02c", "#d62728")
GROUP_NAMES = ("rapid evolution", "stabilisation", "mutation")


FIGURE_SUFFIXES = (".png", ".svg", ".pdf")


def check_output(output: str | os.PathLike) -> None:
    """A figure file is .png, .svg or .pdf, or has no suffix (then .png and .svg are both written)."""
    suffix = Path(output).suffix.lower()
    if suffix and suffix not in FIGURE_SUFFIXES:
        raise KevoError(f"--output {output}: kevo writes .png, .svg or .pdf figures (or give no suffix for "
                        "both .png and .svg), not {suffix}")


def _save(fig, output: str | os.PathLike, description: str | None = None) -> list[str]:
    out = Path(output)
    check_output(out)
    targets = [out] if out.suffix else [out.with_suffix(".png"), out.with_suffix(".svg")]
    files = []
    for t in targets:
        t.parent.mkdir(parents=True, exist_ok=True)
        # the figure records what drew it (PNG text chunk / SVG <metadata> / PDF Subject)
        key = "Subject" if t.suffix.lower() == ".pdf" else "Description"
        meta = {key: description} if description else None
        fig.savefig(t, dpi=110, bbox_inches="tight", metadata=meta)
        files.append(str(t))
    plt.close(fig)
    return files


def _query_params(name: str, params: dict) -> dict:
    q = load(name)
    known = {p.name for p in q.params}
    return {k: v for k, v in params.items() if k in known}


def default_token(store, **params) -> int:
    """The token a figure shows when none is named: the first token with a top-1 mutation event."""
    ev = run(store, "mutation-events", **_query_params("mutation-events", params))
    top1 = ev.filter(pl.col("displaced_id").is_not_null())
    pick = top1 if top1.height else ev
    if pick.height == 0:
        t = as_store(store).sql("SELECT min(token_uid) AS t FROM tokens")["t"][0]
        if t is None:
            raise KevoError("the store has no tokens")
        return int(t)
    return int(pick["token_uid"][0])


def fig_candidates(store, token_uid: int | None = None, **params):
    store = as_store(store)
    if token_uid is None:
        token_uid = default_token(store, **params)
    df = run(store, "top-candidates", token_uid=token_uid, **_query_params("top-candidates", params))
    if df.height == 0:
        raise KevoError(f"token {token_uid} has no layers rows in {store.path}")
    ev = run(store, "mutation-events", **_query_params("mutation-events", params)).filter(
        pl.col("token_uid") == token_uid)
    tok = store.sql(f"SELECT piece, sample_id, step FROM tokens WHERE token_uid = {int(token_uid)}")
    fig, ax = plt.subplots(figsize=(8, 4.2))
    cmap = plt.get_cmap("tab10")
    for i, (vid, g) in enumerate(df.group_by("vocab_id", maintain_order=True)):
        g = g.sort("layer")
        x = g["layer"].to_numpy()
        y = g["prob"].fill_null(0.0).to_numpy()
        piece = g["piece"][0] or str(vid[0])
        label = piece + (" (emitted)" if g["is_emitted"][0] else "")
        ax.fill_between(x, 0, y, alpha=0.35, color=cmap(i % 10), step=None)
        ax.plot(x, y, color=cmap(i % 10), lw=1.5, label=label)
    crit = df["critical_layer"][0]
    if crit is not None:
        ax.axvline(crit, color="k", lw=1, ls="-", label=f"critical layer {crit}")
    for m in ev["mutation_layer"].to_list():
        ax.axvline(m, color="k", lw=1, ls="--")
    if ev.height:
        ax.plot([], [], color="k", ls="--", lw=1, label="mutation " + ", ".join(map(str, ev["mutation_layer"])))
    ax.set_xlabel("layer")
    ax.set_ylabel("probability (logit lens)")
    ax.set_ylim(0, 1)
    ax.set_xlim(df["layer"].min(), df["layer"].max())
    title = f"token {token_uid}"
    if tok.height:
        title += f" {tok['piece'][0]!r} (sample {tok['sample_id'][0]}, step {tok['step'][0]})"
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return fig


def js_matrix(store, sample_id: int | None = None, where: str | None = None, lens: str = "final_norm",
              norm: str = "column"):
    """(matrix tokens x layers 1..L, token labels, layers) with the chosen normalisation."""
    store = as_store(store)
    if where is None:
        if sample_id is None:
            sample_id = int(store.sql("SELECT min(sample_id) AS s FROM tokens WHERE role = 'generated'")["s"][0])
        where = f"sample_id = {int(sample_id)} AND role = 'generated'"
    from kevo_store.confine import predicate

    lens_q = lens.replace("'", "''")
    df = store.sql(f"""SELECT y.token_uid, y.layer, y.js_prev, t.piece FROM layers y
                       JOIN (SELECT * FROM tokens WHERE ({predicate(where)})) t ON t.token_uid = y.token_uid
                       WHERE y.lens = '{lens_q}' AND y.layer > 0 ORDER BY y.token_uid, y.layer""")
    if df.height == 0:
        raise KevoError(f"no layers rows for tokens where {where} (lens {lens})")
    wide = df.pivot(on="layer", index=["token_uid", "piece"], values="js_prev", sort_columns=True).sort("token_uid")
    layers = [c for c in wide.columns if c not in ("token_uid", "piece")]
    m = wide.select(layers).to_numpy().astype(np.float64)
    if norm == "global":
        m = m / max(np.nanmax(m), 1e-12)
    elif norm == "column":
        lo, hi = np.nanmin(m, axis=0, keepdims=True), np.nanmax(m, axis=0, keepdims=True)
        m = (m - lo) / np.maximum(hi - lo, 1e-12)
    elif norm != "none":
        raise KevoError(f"unknown normalisation {norm!r} (none | global | column)")
    return m, [str(p) for p in wide["piece"]], [int(c) for c in layers]


def fig_js_heatmap(store, sample_id=None, where=None, norm="column", lens="final_norm", **_):
    m, labels, layers = js_matrix(store, sample_id, where, lens, norm)
    fig, ax = plt.subplots(figsize=(max(6, 0.22 * len(layers) + 2), max(3, 0.22 * len(labels) + 1.5)))
    im = ax.imshow(m, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(0, len(layers), max(1, len(layers) // 16)))
    ax.set_xticklabels([layers[i] for i in range(0, len(layers), max(1, len(layers) // 16))])
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("layer")
    unit = {"none": "JS (nats)", "global": "JS / global max", "column": "JS, min-max per layer"}[norm]
    fig.colorbar(im, ax=ax, label=unit)
    ax.set_title(f"js_prev, normalisation: {norm}")
    return fig


def fig_stages(store, **params):
    d = run(store, "stage-distribution", **_query_params("stage-distribution", params)).sort("layer")
    ev = run(store, "mutation-events", **_query_params("mutation-events", params))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    x = d["layer"].to_numpy()
    n = d["n_tokens"].to_numpy().astype(float)
    ys = [d[c].to_numpy() / np.maximum(n, 1) for c in ("n_rapid", "n_stable", "n_mutation")]
    a1.stackplot(x, *ys, labels=GROUP_NAMES, colors=GROUP_COLORS, alpha=0.8)
    a1.set_xlabel("layer")
    a1.set_ylabel("fraction of tokens")
    a1.set_title("stage of each token, per layer")
    a1.legend(loc="center left", fontsize=8)
    a1.set_xlim(x.min(), x.max())
    a1.set_ylim(0, 1)
    bins = np.arange(x.min(), x.max() + 2) - 0.5
    for kind, color in (("top1", "#ff7f0e"), ("js", "#17becf"), ("top1+js", "#8c564b")):
        v = ev.filter(pl.col("kind") == kind)["mutation_layer"].to_numpy()
        a2.hist(v, bins=bins, alpha=0.6, label=f"{kind} ({len(v)})", color=color)
    a2.set_xlabel("mutation layer")
    a2.set_ylabel("events")
    a2.set_title("mutation events by layer")
    a2.legend(fontsize=8)
    return fig


def fig_critical_layers(store, **params):
    kw = _query_params("critical-layer-distribution", params)
    d = run(store, "critical-layer-distribution", **kw)
    definition = kw.get("definition") or load("critical-layer-distribution").param("definition").default
    reached = d.filter(pl.col("layer").is_not_null()).sort("layer")
    never = d.filter(pl.col("layer").is_null())
    fig, ax = plt.subplots(figsize=(8, 4))
    x = reached["layer"].to_numpy()
    ax.bar(x - 0.2, reached["frac_critical"].to_numpy(), width=0.4, label=f"tau ({definition})", color="#1f77b4")
    ax.bar(x + 0.2, reached["frac_critical_js"].to_numpy(), width=0.4, label="js_prev settles", color="#ff7f0e")
    nv = never.to_dicts()[0] if never.height else {"frac_critical": 0, "frac_critical_js": 0}
    ax.set_xlabel("critical layer")
    ax.set_ylabel("fraction of tokens")
    ax.set_title(f"critical layers (never reached: {nv['frac_critical'] or 0:.1%} / {nv['frac_critical_js'] or 0:.1%})")
    ax.legend(fontsize=8)
    return fig


def layer_groups(store, token_uids: list[int], **params) -> tuple[float | None, float | None]:
    """Median critical and mutation layer of the given tokens: the boundaries of the colour groups."""
    st = run(store, "stages", **_query_params("stages", params)).filter(pl.col("token_uid").is_in(token_uids))
    c = st["critical_layer"].drop_nulls()
    m = st["mutation_layer"].drop_nulls()
    return (float(c.median()) if len(c) else None, float(m.median()) if len(m) else None)


def fig_tsne(store, embedding_id: str | None = None, **params):
    store = as_store(store)
    if "embeddings" not in store.tables:
        raise KevoError(f"{store.path} has no embeddings; run `kevo embed {store.path}` first")
    if embedding_id is None:
        runs = list((store.manifest["derived"]["embeddings"].get("params") or {}).get("runs", {}))
        if not runs:
            raise KevoError(f"{store.path}: the embeddings table names no runs")
        embedding_id = runs[-1]
    e = store.sql(f"SELECT * FROM embeddings WHERE embedding_id = '{embedding_id.replace(chr(39), '')}'")
    if e.height == 0:
        raise KevoError(f"{store.path}: no embedding {embedding_id!r}")
    c, m = layer_groups(store, e["token_uid"].unique().to_list(), **params)
    layer = e["layer"].to_numpy()
    last = layer.max()
    cb = c if c is not None else last + 1
    mb = m if m is not None else last + 1
    group = np.where(layer < cb, 0, np.where(layer < mb, 1, 2))
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for gi in range(3):
        sel = group == gi
        if sel.any():
            lo, hi = int(layer[sel].min()), int(layer[sel].max())
            ax.scatter(e["x"].to_numpy()[sel], e["y"].to_numpy()[sel], s=9, alpha=0.75, color=GROUP_COLORS[gi],
                       label=f"{GROUP_NAMES[gi]}: layers {lo}-{hi}")
    n_tok = e["token_uid"].n_unique()
    ax.set_title(f"{embedding_id}: {n_tok} tokens x {len(np.unique(layer))} layers")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, loc="best")
    return fig


def fig_divergence(store, **params):
    d = run(store, "divergence-curves", **_query_params("divergence-curves", params))
    fig, ax = plt.subplots(figsize=(8, 4))
    for cls, g in d.filter(pl.col("layer") > 0).group_by("token_class", maintain_order=True):
        g = g.sort("layer")
        color = CLASS_COLORS.get(cls[0], None)
        x = g["layer"].to_numpy()
        ax.plot(x, g["js_prev_median"].to_numpy(), label=f"{cls[0]} (median)", color=color)
        ax.fill_between(x, g["js_prev_q25"].to_numpy(), g["js_prev_q75"].to_numpy(), alpha=0.2, color=color)
    ax.set_xlabel("layer")
    ax.set_ylabel("js_prev (nats)")
    ax.set_title("JS divergence between consecutive layers, median and IQR")
    ax.legend(fontsize=8)
    return fig


def fig_hallucination(store, **params):
    d = run(store, "hallucination-curves", **_query_params("hallucination-curves", params))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for cls, g in d.group_by("token_class", maintain_order=True):
        g = g.sort("layer")
        color = CLASS_COLORS.get(cls[0], None)
        x = g["layer"].to_numpy()
        a1.plot(x, g["p_out_median"].to_numpy(), label=cls[0], color=color)
        a1.fill_between(x, g["p_out_q25"].to_numpy(), g["p_out_q75"].to_numpy(), alpha=0.2, color=color)
        n = g["n_tokens"].to_numpy().astype(float)
        a2.plot(x, g["n_mutation_events"].to_numpy() / np.maximum(n, 1), label=cls[0], color=color)
    a1.set_xlabel("layer")
    a1.set_ylabel("p_out (median, IQR)")
    a1.set_title("probability of the emitted token")
    a1.legend(fontsize=8)
    a2.set_xlabel("layer")
    a2.set_ylabel("mutation events per token")
    a2.set_title("where mutations happen, by token class")
    a2.legend(fontsize=8)
    return fig


FIGURES = {
    "candidates": fig_candidates,
    "js-heatmap": fig_js_heatmap,
    "stages": fig_stages,
    "critical-layers": fig_critical_layers,
    "tsne": fig_tsne,
    "divergence": fig_divergence,
    "hallucination": fig_hallucination,
    "trace": fig_trace,
    "attention-patches": fig_attention_patches,
}


def figure(kind: str, store, **kw):
    if kind not in FIGURES:
        raise KevoError(f"unknown plot {kind!r}; one of {', '.join(FIGURES)}")
    kw = {k: v for k, v in kw.items() if v is not None}
    return FIGURES[kind](store, **kw)


def plot(kind: str, store, output, **kw) -> list[str]:
    """Draw figure ``kind`` from ``store`` into ``output`` (.png, .svg, or both when no suffix)."""
    import json

    check_output(output)  # before any drawing
    path = store.path if hasattr(store, "path") else os.fspath(store)
    desc = json.dumps({"kevo_plot": kind, "store": str(path),
                       "params": {k: v for k, v in kw.items() if v is not None}}, default=str)
    return _save(figure(kind, store, **kw), output, desc)
