"""``kevo report STORE -o report.html``: one self-contained HTML page a collaborator opens in a browser.

Everything is inside the file: figures as PNG data URIs, the key tables as HTML, the manifest's
provenance (model, dataset, lens, generation, capture, format and kevo versions, file count and
total size). Every table and figure names the query and parameters it came from.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import time

import polars as pl

from kevo_store import open_store
from kevo_store.errors import KevoError

from . import plots
from .engine import result
from .library import load


def _png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plots.plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _fmt(v) -> str:
    if v is None:
        return "<span class=null>–</span>"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def table_html(df: pl.DataFrame, max_rows: int = 30) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    rows = []
    for r in df.head(max_rows).iter_rows():
        rows.append("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in r) + "</tr>")
    more = f"<p class=more>{df.height - max_rows} more rows not shown</p>" if df.height > max_rows else ""
    return f"<div class=tw><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>{more}"


def _params(params: dict) -> str:
    return html.escape(", ".join(f"{k}={v!r}" for k, v in params.items()))


def _provenance(store) -> str:
    m = store.manifest
    rows = []
    for sec in ("model", "dataset", "lens", "generation", "capture"):
        for k, v in (m.get(sec) or {}).items():
            rows.append((sec, k, json.dumps(v) if isinstance(v, (dict, list)) else v))
    for k in ("format_version", "kevo_version", "created", "updated", "commits", "state"):
        if k in m:
            rows.append(("store", k, m[k]))
    files = m.get("files") or {}
    rows.append(("store", "files", f"{len(files)} (sha256 and size of each in manifest.json)"))
    rows.append(("store", "bytes", sum(int(f.get("size", 0)) for f in files.values())))
    for t in ("samples", "tokens", "layers", "topk", "errors"):
        rows.append(("rows", t, store.rows(t)))
    df = pl.DataFrame({"section": [r[0] for r in rows], "key": [r[1] for r in rows],
                       "value": [str(r[2]) for r in rows]})
    return table_html(df, max_rows=200)


def comparison_section(store) -> tuple[str, str]:
    """The experiment comparison a `kevo experiment` command stored with the store (derived tables)."""
    derived = store.manifest.get("derived") or {}
    params = (derived.get("comparison") or {}).get("params") or {}
    kind = params.get("experiment", "?")
    shown = {k: v for k, v in params.items() if k != "derivation_sql"}
    body = f"<p class=q>derived table comparison: {_params(shown)}</p>"
    body += table_html(store.sql("SELECT * FROM comparison"), max_rows=60)
    for name, sql in (params.get("derivation_sql") or {}).items():
        body += f"<details><summary>SQL that derived the {html.escape(name.replace('_', ' '))}</summary>" \
                f"<pre>{html.escape(sql)}</pre></details>"
    if "comparison_distribution" in store.tables and "comparison_js_prev" in store.tables:
        dist = store.sql("SELECT * FROM comparison_distribution WHERE layer IS NOT NULL ORDER BY layer")
        js = store.sql("SELECT * FROM comparison_js_prev ORDER BY layer")
        fig, (a1, a2) = plots.plt.subplots(1, 2, figsize=(10, 3.4))
        x = dist["layer"].to_list()
        a1.bar([v - 0.2 for v in x], dist["lvlm"].to_list(), 0.4, label="LVLM")
        a1.bar([v + 0.2 for v in x], dist["llm"].to_list(), 0.4, label="LLM (same text)")
        a1.set_xlabel("critical layer")
        a1.set_ylabel("share of generated tokens")
        a1.legend(fontsize=8)
        a2.plot(js["layer"].to_list(), js["lvlm"].to_list(), marker="o", label="LVLM")
        a2.plot(js["layer"].to_list(), js["llm"].to_list(), marker="s", label="LLM (same text)")
        a2.set_xlabel("layer")
        a2.set_ylabel("mean js_prev (nats)")
        a2.legend(fontsize=8)
        body += "<p class=q>comparison_distribution, comparison_js_prev</p>" + table_html(dist, max_rows=60)
        body += f"<img alt='comparison' src='{_png_data_uri(fig)}'>"
    title = {"skip": "Skip experiment: variants against the baseline",
             "llm": "LVLM against its LLM on the same tokens"}.get(kind, f"Comparison ({kind})")
    return title, body


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f3b57;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85}main{padding:10px 28px 40px;max-width:1200px}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:14px 18px;margin:16px 0}
h2{font-size:17px;margin:0 0 6px}p.q{color:#666;font-size:12px;margin:0 0 8px;font-family:monospace}
img{max-width:100%;height:auto}table{border-collapse:collapse;font-size:12px;margin:6px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f0f3f6}
td:first-child,th:first-child{text-align:left}.null{color:#aaa}.more{color:#777;font-size:12px}
.tw{overflow-x:auto}.grid{display:grid;grid-template-columns:1fr 1fr;gap:12px}
@media(max-width:900px){.grid{grid-template-columns:1fr}}
"""


def trace_section(store, fig) -> tuple[str, str]:
    """Causal tracing (`kevo trace`): every run's peaks over the dataset, its heatmaps, the patch grid."""
    names = store.sql("SELECT DISTINCT name FROM trace_runs ORDER BY name")["name"].to_list()
    body = ("<p class=q>causal tracing (docs/tracing.md): p(answer) with the clean state restored; AIE = mean of "
            "p_restored - p_corrupt</p>")
    for name in names:
        peaks = result(store, "trace-peaks", trace_run=name, per="dataset")
        body += f"<h3>{html.escape(name)}</h3><p class=q>trace-peaks: {_params(peaks.params)}</p>"
        body += table_html(peaks.frame) + fig("trace", trace_run=name)
    if "attention_contributions" in store.tables:
        body += fig("attention-patches")
    return (f"Causal tracing ({len(names)} run(s))", body)


def build_report(store_path, output, **params) -> str:
    """Write the report; returns its path. ``params`` go to every query that has them (lens, tau, ...)."""
    t0 = time.perf_counter()
    store = open_store(store_path)
    if store.rows("layers") == 0:
        raise KevoError(f"{store.path} has no layers rows: nothing to report")

    def q(name, **extra):
        known = {p.name for p in load(name).params}
        return result(store, name, **{k: v for k, v in {**params, **extra}.items() if k in known})

    def fig(kind, **kw):
        try:
            return f"<img alt='{kind}' src='{_png_data_uri(plots.figure(kind, store, **kw, **params))}'>"
        except KevoError as e:
            return f"<p class=more>{html.escape(kind)}: {html.escape(str(e))}</p>"

    sections = []
    crit = q("critical-layers")
    c = crit.frame
    summary = pl.DataFrame({
        "definition": [f"tau ({crit.params['definition']})", "js_prev settles"],
        "tokens": [c.height, c.height],
        "reached": [c["critical_layer"].drop_nulls().len(), c["critical_layer_js"].drop_nulls().len()],
        "mean": [c["critical_layer"].mean(), c["critical_layer_js"].mean()],
        "median": [c["critical_layer"].median(), c["critical_layer_js"].median()],
    })
    sections.append(("Critical layers", f"<p class=q>critical-layers: {_params(crit.params)}</p>"
                     + table_html(summary) + fig("critical-layers")))
    sections.append(("Stages and mutation events", fig("stages")))
    contrast = q("hallucination-contrast")
    sections.append(("Hallucinated vs correct object tokens",
                     f"<p class=q>hallucination-contrast: {_params(contrast.params)}</p>"
                     + table_html(contrast.frame) + fig("hallucination")))
    ev = q("mutation-events")
    evf = ev.frame.sort(pl.col("label").eq("hallucinated").fill_null(False), "js_ratio", descending=True,
                        nulls_last=True)
    cols = [x for x in ("token_uid", "piece", "label", "critical_layer", "mutation_layer", "kind", "displaced_piece",
                        "new_top1_piece", "held_layers", "js_prev", "js_ratio") if x in evf.columns]
    sections.append((f"Mutation events ({ev.frame.height})", f"<p class=q>mutation-events: {_params(ev.params)}</p>"
                     + table_html(evf.select(cols), max_rows=25)))
    token = None
    top1 = evf.filter(pl.col("displaced_id").is_not_null())
    if top1.height:
        token = int(top1["token_uid"][0])
    figs = [fig("candidates", token_uid=token) if token is not None else "", fig("js-heatmap", norm="column"),
            fig("js-heatmap", norm="global"), fig("divergence")]
    sections.append(("A token's candidates (Fig. 2), JS heatmaps, divergence curves",
                     "<div class=grid>" + "".join(f"<div>{f}</div>" for f in figs if f) + "</div>"))
    if "embeddings" in store.tables:
        sections.append(("Embedding of hidden states (t-SNE)", fig("tsne")))
    if "comparison" in store.tables:
        sections.append(comparison_section(store))
    if "traces" in store.tables and "trace_runs" in store.tables:
        sections.append(trace_section(store, fig))
    sections.append(("Provenance", _provenance(store)))
    model = store.model.get("id", "?")
    dataset = store.dataset.get("name", "?")
    body = "".join(f"<section><h2>{html.escape(t)}</h2>{b}</section>" for t, b in sections)
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>kevo report: {html.escape(model)} on "
            f"{html.escape(dataset)}</title><style>{CSS}</style></head><body><header><h1>kevo report — "
            f"{html.escape(str(model))} on {html.escape(str(dataset))}</h1><p>{html.escape(str(store.path))} · "
            f"{store.rows('samples')} samples · {store.rows('tokens')} tokens · generated in "
            f"{time.perf_counter() - t0:.1f} s</p></header><main>{body}</main></body></html>")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        f.write(page)
    return str(output)
