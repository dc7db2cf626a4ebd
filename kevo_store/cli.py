"""The `kevo` command: the root group, `kevo sql` and `kevo store info|verify`.

Subcommands are listed in pyproject's ``[project.entry-points."kevo.commands"]`` and imported
only when they run, so `kevo --help` and `kevo sql` never import torch. This module imports
nothing heavy at the top: duckdb and polars load inside the commands that need them.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points

import click

from .errors import KevoError
from .units import human_bytes, json_default

ENTRY_GROUP = "kevo.commands"


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_GROUP)}


class LazyGroup(click.Group):
    """A click group whose subcommands come from entry points, imported on use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_entry_points()))

    def get_command(self, ctx: click.Context, name: str):
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        ep = _entry_points().get(name)
        if ep is None:
            return None
        try:
            return ep.load()
        except Exception as e:  # a broken subcommand must not take the others down
            return _unavailable(name, ep.value, e)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KevoError as e:
            click.echo(f"kevo: error: {e}", err=True)
            ctx.exit(1)
        except OSError as e:
            msg = os_error_message(e)
            if msg is None:
                raise
            click.echo(f"kevo: error: {msg}", err=True)
            ctx.exit(1)


def os_error_message(e: OSError) -> str | None:
    """One line for the filesystem failures a user can fix (full disk, read-only, a file in the way);
    None for anything else (a bug: the traceback is wanted). Writers commit batch by batch, so what was
    committed before the failure is kept and a re-run continues from it."""
    import errno

    code = e.errno
    if code is None:  # pyarrow's IO errors carry the reason in the text only
        text = str(e)
        code = next((c for c, t in ((errno.ENOSPC, "No space left"), (errno.EROFS, "Read-only file system"),
                                    (errno.EDQUOT, "quota exceeded")) if t in text), None)
    where = f" ({e.filename})" if e.filename else ""
    kept = "; committed work is kept: free some space and re-run to continue"
    return {
        errno.ENOSPC: f"no space left on the device{where}{kept}",
        errno.EDQUOT: f"disk quota exceeded{where}{kept}",
        errno.EROFS: f"read-only file system{where}: write somewhere writable",
        errno.ENOTDIR: f"a path component is a file, not a directory{where}",
        errno.EACCES: f"permission denied{where}",
        errno.EFBIG: f"file too large for the file system{where}",
    }.get(code)


def _unavailable(name: str, target: str, err: Exception) -> click.Command:
    msg = f"`kevo {name}` is unavailable: importing {target} failed ({type(err).__name__}: {err})"

    @click.command(name, help=f"(unavailable: {type(err).__name__})", context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def cmd(args):
        raise KevoError(msg)

    return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kevo", prog_name="kevo")
def main() -> None:
    """kevo: an activation store and query engine for how knowledge evolves across the layers of
    vision-language models.

    \b
    kevo ingest amber --data ~/AMBER --model llava-hf/llava-1.5-7b-hf --out amber.kevo
    kevo sql amber.kevo "SELECT layer, avg(p_out) FROM layers GROUP BY layer ORDER BY layer"
    kevo store info amber.kevo
    """


# ---------------------------------------------------------------------------------- kevo sql
def _parse_store_args(args: tuple[str, ...]) -> dict[str, str]:
    from .reader import alias_for

    stores: dict[str, str] = {}
    for a in args:
        if ("=" in a and not a.startswith(("s3://", "gs://", "file://", "memory://"))
                and a.split("=", 1)[0].isidentifier()):
            alias, path = a.split("=", 1)
        else:
            alias, path = alias_for(a), a
        if alias in stores:
            raise KevoError(f"two stores are both called {alias!r} ({stores[alias]}, {path}); name them: NAME=PATH")
        stores[alias] = path
    return stores


def warn_if_open(path: str, manifest: dict) -> None:
    """A store whose writer has not closed it holds only what was committed so far."""
    if manifest.get("state") == "open":
        click.echo(f"warning: {path} is open (a writer is running, or was interrupted): it holds the samples "
                   f"committed so far; `kevo store compact {path}` finishes an interrupted one", err=True)


def _export_paths(output: str | None) -> list[str]:
    """The export file, and the temporary sibling DuckDB writes first when the file exists."""
    if not output:
        return []
    d, b = os.path.split(os.path.abspath(output))
    return [os.path.join(d, b), os.path.join(d, "tmp_" + b)]


@click.command("sql")
@click.argument("args", nargs=-1, required=True, metavar="STORE... SQL")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True, help="Output format (parquet needs --output).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the result to this file.")
@click.option("--max-rows", type=int, default=40, show_default=True, help="Rows shown by --format table (-1: all).")
@click.option("--allow-external", is_flag=True,
              help="Run DuckDB unconfined: other files, COPY ... TO, ATTACH, extensions (default: the stores only).")
def sql(args: tuple[str, ...], fmt: str, output: str | None, max_rows: int, allow_external: bool) -> None:
    """Run SQL over one or more stores.

    Each store's tables are views named ALIAS.TABLE, where ALIAS is the directory name without
    '.kevo' (or give NAME=PATH). With one store the tables are also available unqualified.
    SQL may be a path to a .sql file. The SQL reads the stores' files only and cannot write
    (COPY, CREATE, ATTACH, INSTALL are refused); --output exports a result, --allow-external lifts
    the confinement.

    \b
    kevo sql amber.kevo "SELECT count(*) FROM tokens"
    kevo sql base=amber.kevo skip=amber_skip.kevo \\
        "SELECT a.layer, avg(a.p_out - b.p_out) FROM base.layers a JOIN skip.layers b \
USING (token_uid, lens, layer) GROUP BY 1"
    """
    if len(args) < 2:
        raise click.UsageError("give at least one STORE and the SQL query (the last argument)")
    *store_args, query = args
    if query.endswith(".sql") and os.path.isfile(query):  # a query kept in a file
        with open(query) as f:
            query = f.read()
    elif query.endswith(".sql") and " " not in query.strip():
        raise KevoError(f"SQL file not found: {query}")
    stores = _parse_store_args(tuple(store_args))
    if fmt == "parquet" and not output:
        raise KevoError("--format parquet needs --output FILE (Parquet is not written to a terminal)")
    from .reader import open_stores, query_error

    if output:
        out_abs = os.path.realpath(output)
        for p in stores.values():
            if "://" not in p and (out_abs + "/").startswith(os.path.realpath(p).rstrip("/") + "/"):
                raise KevoError(f"--output {output} is inside the store {p}; write results outside stores")
    first = next(iter(stores))
    ms = open_stores(stores, unqualified=first if len(stores) == 1 else None, confined=not allow_external,
                     allow_paths=_export_paths(output))
    import duckdb

    for st in ms.stores.values():
        warn_if_open(st.path, st.manifest)
    try:
        rel = ms.con.sql(query)
        if rel is None:  # a statement without a result (SET, CREATE TEMP VIEW, ...)
            return
        if output and fmt in ("parquet", "csv", "json"):
            opts = {"parquet": "FORMAT parquet, COMPRESSION zstd", "csv": "FORMAT csv, HEADER true",
                    "json": "FORMAT json, ARRAY true"}[fmt]
            rel.to_view("__kevo_out", replace=True)
            dst = os.path.abspath(output).replace("'", "''")
            con = ms.con if allow_external else ms.con._con  # kevo's own COPY, to the file the user named
            con.execute(f"COPY (SELECT * FROM __kevo_out) TO '{dst}' ({opts})")
            return
        df = rel.pl()
    except duckdb.Error as e:
        raise query_error(e, ms.roots, ms.manifests) from None
    text = _render(df, fmt, max_rows)
    if output:
        with open(output, "w") as f:
            f.write(text)
    else:
        click.echo(text, nl=not text.endswith("\n"))


def _render(df, fmt: str, max_rows: int) -> str:
    import polars as pl

    if fmt == "csv":
        return df.write_csv()
    if fmt == "json":
        import json

        return json.dumps(df.to_dicts(), default=json_default, ensure_ascii=False) + "\n"
    with pl.Config(tbl_rows=max_rows, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200,
                   tbl_hide_dataframe_shape=False):
        return str(df)


# ---------------------------------------------------------------------------------- kevo store
@click.group("store")
def store() -> None:
    """Inspect and check stores."""


def store_summary(path: str) -> dict:
    """What `kevo store info` shows, as a dict (also its --json output)."""
    from .fs import LocalFS
    from .lock import LOCK
    from .manifest import Manifest
    from .share.remote import store_fs

    fs = store_fs(path)
    m = Manifest.load(fs)
    files = m["files"]
    tables = {}
    for name, ent in m["tables"].items():
        tables[name] = {"rows": ent["rows"], "files": len(ent["files"]),
                        "bytes": sum(files.get(f, {}).get("size", 0) for f in ent["files"])}
    derived = {name: {"rows": d["rows"], "bytes": sum(files.get(f, {}).get("size", 0) for f in d["files"]),
                      "params": d.get("params", {})} for name, d in (m.get("derived") or {}).items()}
    h = m.get("hidden")
    hidden = None
    if h:
        have = m.hidden_layers_present()  # a partial pull may hold only some layers
        hidden = {"shape": [h["rows"], len(have), h["hidden_size"]], "dtype": h["logical_dtype"],
                  "layers": have, "bytes": fs.disk_usage(h["path"]) if hasattr(fs, "disk_usage") else None}
    total = fs.disk_usage("") if hasattr(fs, "disk_usage") else None
    lock = None
    if isinstance(fs, LocalFS) and fs.exists(LOCK):
        import json

        try:
            lock = json.loads(fs.read_bytes(LOCK))
        except ValueError:
            lock = {"pid": "?", "host": "?", "since": "?"}
    return {"path": fs.root, "format_version": m["format_version"], "kevo_version": m.get("kevo_version"),
            "state": m.get("state"), "commits": m.get("commits"), "created": m.get("created"),
            "updated": m.get("updated"), "model": m.get("model", {}), "dataset": m.get("dataset", {}),
            "lens": m.get("lens", {}), "generation": m.get("generation", {}), "capture": m.get("capture", {}),
            "tables": tables, "derived": derived, "hidden": hidden, "disk_bytes": total,
            "partial": m.get("partial"), "lock": lock}


@store.command("info")
@click.argument("store_path", metavar="STORE")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(store_path: str, as_json: bool) -> None:
    """Model, dataset, row counts and disk use of a store."""
    s = store_summary(store_path)
    if as_json:
        import json

        click.echo(json.dumps(s, indent=1))
        return
    md, ds, t = s["model"], s["dataset"], s["tables"]
    lines = [f"store      {s['path']}  (format v{s['format_version']}, kevo {s['kevo_version']}, {s['state']}, "
             f"{s['commits']} commits, updated {s['updated']})"]
    if md:
        extra = ", ".join(f"{k} {md[k]}" for k in ("family", "dtype", "n_layers", "hidden_size", "vocab_size")
                          if k in md)
        lines.append(f"model      {md.get('id', '?')}{' @ ' + str(md['revision']) if md.get('revision') else ''}"
                     f"{'  (' + extra + ')' if extra else ''}")
    if ds:
        lines.append("dataset    " + ", ".join(f"{k}={v}" for k, v in ds.items() if not isinstance(v, (dict, list))))
    if s["lens"]:
        lines.append("lens       " + ", ".join(f"{k}={v}" for k, v in s["lens"].items()))
    if s.get("partial"):  # a partial pull: say what is not here
        from .manifest import Manifest

        lines.append("partial    " + Manifest(partial=s["partial"]).partial_summary())
    lines.append(f"samples    {t['samples']['rows']:,}   errors {t['errors']['rows']:,}")
    for name in ("tokens", "layers", "topk", "vocab"):
        e = t[name]
        lines.append(f"{name:<10} {e['rows']:>13,} rows  {human_bytes(e['bytes']):>10}  in {e['files']} file(s)"
                     + (f"  ({e['bytes'] / e['rows']:.1f} B/row)" if e["rows"] else ""))
    for name, d in s["derived"].items():
        lines.append(f"{name:<10} {d['rows']:>13,} rows  {human_bytes(d['bytes']):>10}  (derived)")
    h = s["hidden"]
    if h:
        ly = h["layers"]
        span = "none" if not ly else f"{ly[0]}..{ly[-1]}" if ly == list(range(ly[0], ly[-1] + 1)) \
            else ",".join(map(str, ly))
        lines.append(f"hidden     {h['shape'][0]:,} x {h['shape'][1]} x {h['shape'][2]} {h['dtype']} (layers {span})"
                     + (f"  {human_bytes(h['bytes'])}" if h["bytes"] is not None else ""))
    else:
        lines.append("hidden     none captured")
    if s["disk_bytes"] is not None:
        lines.append(f"disk       {human_bytes(s['disk_bytes'])} on disk in all (allocated blocks, as du counts)")
    if s.get("lock"):
        lk = s["lock"]
        lines.append(f"writer     pid {lk.get('pid')} on {lk.get('host')} since {lk.get('since')} holds the lock")
    click.echo("\n".join(lines))


@store.command("compact")
@click.argument("store_path", metavar="STORE")
def compact(store_path: str) -> None:
    """Finish a store whose writer did not close (a crash, kill -9): remove the files of the batch
    that was in flight, compact the per-batch parts, write the last hidden chunk. Adds no data."""
    from .writer import StoreWriter

    w = StoreWriter(store_path)
    before = sum(len(e["files"]) for e in w.manifest["tables"].values())
    w.close(progress=f"compact {w.path}")
    after = sum(len(e["files"]) for e in w.manifest["tables"].values())
    click.echo(f"compacted {w.path}: {before} table files -> {after}; {w.n_samples:,} samples, {w.n_tokens:,} tokens")


@store.command("upgrade")
@click.argument("store_path", metavar="STORE")
def upgrade(store_path: str) -> None:
    """Rewrite a format v1 store as format v2 (sharded hidden states). kevo reads v1 stores as they are;
    writers (resume, compact, embed write-back) need v2. Interrupted, run it again."""
    from .upgrade import upgrade_store

    r = upgrade_store(store_path)
    if r.upgraded:
        click.echo(f"upgraded {r.path}: format v{r.from_version} -> v2 ({r.rows:,} hidden-state rows rewritten)")
    else:
        click.echo(f"{r.path} is already format v2; nothing to do")


@store.command("verify")
@click.argument("store_path", metavar="STORE")
@click.option("--quick", is_flag=True, help="Check sizes, footers and counts but skip the sha256 of every file.")
def verify(store_path: str, quick: bool) -> None:
    """Check every file against the manifest: checksums, row counts, hidden shape against tokens."""
    from .verify import verify_store

    rep = verify_store(store_path, checksums=not quick)
    for n in rep.notes:
        click.echo(f"note: {n}", err=True)
    if rep.ok:
        click.echo(f"ok: {rep.path}: {rep.checked_files} files, {human_bytes(rep.checked_bytes)} "
                   f"{'size-checked' if quick else 'checksummed'}; counts, schemas and keys consistent")
        return
    for p in rep.problems:
        click.echo(f"problem: {p}", err=True)
    raise KevoError(f"{rep.path} failed verification: {len(rep.problems)} problem(s), first: {rep.problems[0]}")


# push / pull / merge: defined in share/cli.py, which imports only click
from .share.cli import COMMANDS as _SHARE_COMMANDS  # noqa: E402

for _cmd in _SHARE_COMMANDS:
    store.add_command(_cmd)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
