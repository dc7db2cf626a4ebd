"""kevo query / embed / plot / report. Heavy imports (matplotlib, openTSNE) happen inside the commands."""

from __future__ import annotations

import json
import sys

import click

from kevo_store.errors import KevoError
from kevo_store.units import json_default

FORMATS = ["table", "csv", "json", "parquet"]


def _parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"{p!r} is not KEY=VALUE", param_hint="--param")
        k, v = p.split("=", 1)
        out[k.strip()] = v
    return out


def _params_line(res) -> str:
    ps = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in res.params.items())
    return f"# {res.name}  {ps}  stores: {' '.join(res.stores)}"


def write_result(res, fmt: str, output: str | None, max_rows: int = 40) -> None:
    """Write a QueryResult with its parameters recorded next to the rows."""
    import polars as pl

    df = res.frame
    info = res.info()
    if fmt == "parquet":
        if not output:
            raise KevoError("--format parquet needs --output FILE")
        import pyarrow.parquet as pq

        t = df.to_arrow()
        meta = dict(t.schema.metadata or {})
        meta[b"kevo.query"] = json.dumps(info, default=json_default).encode()
        pq.write_table(t.replace_schema_metadata(meta), output, compression="zstd")
        return
    if fmt == "json":
        text = json.dumps({**info, "rows": df.to_dicts()}, default=json_default, ensure_ascii=False) + "\n"
    elif fmt == "csv":
        text = df.write_csv()
        if output:  # CSV has no place for metadata: a sidecar keeps the parameters
            with open(output + ".params.json", "w") as f:
                json.dump(info, f, default=json_default, indent=1)
        else:
            click.echo(_params_line(res), err=True)
    else:
        with pl.Config(tbl_rows=max_rows, tbl_cols=-1, fmt_str_lengths=40, tbl_width_chars=220):
            text = _params_line(res) + "\n" + str(df) + "\n"
    if output:
        with open(output, "w") as f:
            f.write(text)
    else:
        click.echo(text, nl=False)


def _echo_params(q, fmt: str) -> None:
    """A query's parameters as declared in its file and the fragments it includes (the one place they are written)."""
    import json

    rows = [{"name": p.name, "type": p.type, "default": p.default, "choices": list(p.choices),
             "description": p.description} for p in q.params]
    if fmt == "json":
        click.echo(json.dumps({r["name"]: r for r in rows}, indent=1))
        return
    if not rows:
        click.echo(f"{q.name} takes no parameters")
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        default = "(required)" if r["default"] is None else f"= {r['default']!r}"
        choices = f" in ({', '.join(r['choices'])})" if r["choices"] else ""
        click.echo(f"{r['name']:<{width}}  {r['type']} {default}{choices}  {r['description']}".rstrip())


@click.command("query")
@click.argument("name", required=False)
@click.argument("stores", nargs=-1, metavar="STORE...")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE", help="Set a parameter (repeatable).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the result to this file.")
@click.option("--list", "list_", is_flag=True, help="List the named queries, one per line.")
@click.option("--show-sql", is_flag=True, help="Print the bound SQL (copyable into duckdb) and exit.")
@click.option("--params", "show_params", is_flag=True,
              help="List the query's parameters (type, default, choices, meaning) and exit; --format json for tools.")
@click.option("--engine", type=click.Choice(["duckdb", "polars"]), default="duckdb", show_default=True,
              help="Run the SQL through DuckDB or Polars' SQL engine (the same text).")
@click.option("--hallucinated", is_flag=True, help="Shorthand for --param label=hallucinated.")
@click.option("--max-rows", type=int, default=40, show_default=True, help="Rows shown by --format table (-1: all).")
def query(name, stores, params, fmt, output, list_, show_sql, show_params, engine, hallucinated, max_rows):
    """Run a named analysis query (the paper's analyses as SQL files in queries/sql/).

    \b
    kevo query --list
    kevo query critical-layers amber.kevo --param tau=0.6
    kevo query mutation-events amber.kevo --hallucinated --format csv -o events.csv
    kevo query top-candidates amber.kevo --param token_uid=1234
    kevo query compare-stores base.kevo skip.kevo
    kevo query stages --show-sql
    kevo query mutation-events --params
    """
    from . import library
    from .engine import run_bound

    if list_:
        qs = library.list_queries()
        width = max(len(q.name) for q in qs)
        for q in qs:
            click.echo(f"{q.name:<{width}}  {q.description}")
        return
    if not name:
        raise click.UsageError("give a query NAME and STORE(s), or --list")
    if show_params:
        _echo_params(library.load(name), fmt)
        return
    kv = _parse_params(params)
    if hallucinated:
        kv["label"] = "hallucinated"
    bound = library.bind(name, **kv)
    if show_sql:
        click.echo(bound.sql.rstrip() + ";")
        return
    if not stores:
        raise click.UsageError(f"query {name} needs {bound.query.stores} STORE argument(s)")
    res = run_bound(bound, list(stores), engine=engine, check_label=True)
    write_result(res, fmt, output, max_rows)


@click.command("embed")
@click.argument("store")
@click.option("--tokens", "where", default="is_answer", show_default=True,
              help='SQL predicate on the tokens table choosing the tokens, e.g. "piece = \'▁guitar\' AND is_answer".')
@click.option("--layers", default=None, help="Layers to embed: '0-32', '0,8,16' (default: every captured layer).")
@click.option("--method", type=click.Choice(["tsne", "pca"]), default="tsne", show_default=True)
@click.option("--perplexity", type=float, default=30.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--n-jobs", type=int, default=None, help="Threads for openTSNE (default: all cores).")
@click.option("--name", "embedding_id", default=None, help="embedding_id of the run (default: from the parameters).")
@click.option("--max-points", type=int, default=20000, show_default=True,
              help="Refuse more (token, layer) points than this (t-SNE is quadratic-ish in memory).")
def embed(store, where, layers, method, perplexity, seed, n_jobs, embedding_id, max_points):
    """2-D embedding of hidden states (openTSNE after PCA to 50 dims), written back as the `embeddings` table,
    plus the per-layer dispersion of the chosen tokens across images (printed)."""
    from kevo_store.fs import is_url

    if is_url(store):  # refuse before computing: a remote store is read-only
        from kevo_store.errors import KevoError

        raise KevoError(f"{store} is a remote store, read-only: `kevo store pull` it and embed the local copy")
    from .embed import embed_store, parse_layers

    out = embed_store(store, where=where, layers=parse_layers(layers), method=method, perplexity=perplexity,
                      seed=seed, n_jobs=n_jobs, embedding_id=embedding_id, max_points=max_points,
                      echo=lambda m: click.echo(m, err=True))
    click.echo(f"embeddings: {out.embedding_id} ({out.n_points} points, {out.n_tokens} tokens x "
               f"{len(out.layers)} layers, {out.seconds:.1f} s) written to {store}")
    import polars as pl

    with pl.Config(tbl_rows=-1, tbl_cols=-1):
        click.echo("per-layer dispersion across the selected tokens (mean distance to the centroid / mean norm):")
        click.echo(str(out.dispersion))


PLOT_KINDS = ["candidates", "js-heatmap", "stages", "critical-layers", "tsne", "divergence", "hallucination", "trace",
              "attention-patches"]


@click.command("plot")
@click.argument("kind", type=click.Choice(PLOT_KINDS))
@click.argument("store")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="Figure file: .png, .svg or .pdf (.png and .svg both written if no suffix).")
@click.option("--token", "token_uid", type=int, default=None, help="candidates: the token_uid.")
@click.option("--sample", "sample_id", type=int, default=None,
              help="js-heatmap, trace, attention-patches: the sample (trace/attention-patches default: the average).")
@click.option("--tokens", "where", default=None, help="js-heatmap: SQL predicate on tokens instead of --sample.")
@click.option("--norm", type=click.Choice(["none", "global", "column"]), default="column", show_default=True,
              help="js-heatmap normalisation (per column is what the paper's figure did).")
@click.option("--embedding", "embedding_id", default=None, help="tsne: the embedding_id (default: the latest).")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE", help="Query parameters (lens, tau, ...).")
def plot(kind, store, output, token_uid, sample_id, where, norm, embedding_id, params):
    """Figures from a store (matplotlib, PNG and SVG): candidates (paper Fig. 2/3), js-heatmap, stages,
    critical-layers, tsne, divergence, hallucination, trace (causal tracing heatmaps), attention-patches."""
    from . import plots

    kv = _parse_params(params)
    files = plots.plot(kind, store, output, token_uid=token_uid, sample_id=sample_id, where=where, norm=norm,
                       embedding_id=embedding_id, **kv)
    for f in files:
        click.echo(f)


@click.command("report")
@click.argument("store")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="The HTML file to write.")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE", help="Query parameters (lens, tau, ...).")
def report(store, output, params):
    """One self-contained HTML page: figures (embedded), key tables, the manifest's provenance."""
    from kevo_store import open_store
    from kevo_store.cli import warn_if_open

    from .report import build_report

    with open_store(store) as s:
        warn_if_open(s.path, s.manifest)
    path = build_report(store, output, **_parse_params(params))
    click.echo(path)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(query())
