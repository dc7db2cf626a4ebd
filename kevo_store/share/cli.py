"""`kevo store push|pull|merge`: attached to the `store` group of kevo_store/cli.py.

Imports only click at the top (the `kevo` root must stay light); the work is in push.py, pull.py
and merge.py, imported when a command runs.
"""

from __future__ import annotations

import click

from kevo_store.units import human_bytes


@click.command("push")
@click.argument("store_path", metavar="STORE")
@click.argument("url")
@click.option("--force", is_flag=True, help="Replace a store already at URL; push a store that is still open.")
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Files uploaded at once.")
def push(store_path: str, url: str, force: bool, jobs: int) -> None:
    """Upload STORE to URL (s3://, gs://, any fsspec URL): data first, manifest.json last.

    Every file is checksummed on the way; readers never see a half-pushed store (no manifest,
    no store), and pushing again after an interruption completes it. S3-compatible endpoints
    (MinIO, a lab's Ceph): set AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) and the usual
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    """
    from .push import push as do_push

    r = do_push(store_path, url, force=force, jobs=jobs)
    if r.up_to_date:
        click.echo(f"{r.url} already holds this store: nothing to push")
        return
    click.echo(f"pushed {r.files} files, {human_bytes(r.bytes)} to {r.url}")


def _split_tables(values: tuple[str, ...]) -> list[str] | None:
    out = [t.strip() for v in values for t in v.split(",") if t.strip()]
    return out or None


@click.command("pull")
@click.argument("url")
@click.argument("dest", metavar="DIR")
@click.option("--tables", multiple=True, metavar="T[,T…]",
              help="Only these tables (e.g. samples,tokens,layers); repeatable. Default: all.")
@click.option("--layers", metavar="RANGE", help="Only the hidden states of these layers, e.g. 20-32 or 0,16,32.")
@click.option("--no-hidden", is_flag=True, help="No hidden states at all.")
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=8, show_default=True,
              help="Files downloaded at once.")
def pull(url: str, dest: str, tables: tuple[str, ...], layers: str | None, no_hidden: bool, jobs: int) -> None:
    """Download the store at URL into the new directory DIR, verifying every checksum.

    The store is untrusted input: paths that leave the store, files the manifest does not name,
    files larger than declared and newer formats are refused. A partial pull (--tables, --layers,
    --no-hidden) records what it left out, so `kevo store verify DIR` passes and queries on what
    is missing say so.
    """
    from .pull import pull as do_pull

    if no_hidden and layers:
        raise click.UsageError("--layers and --no-hidden contradict each other")
    r = do_pull(url, dest, tables=_split_tables(tables), layers=layers, hidden=not no_hidden, jobs=jobs)
    if r.up_to_date:
        click.echo(f"{r.path} already holds this store (same manifest, every file at its size): nothing to pull")
        return
    what = "partial store" if r.partial else "store"
    click.echo(f"pulled {what} {r.path}: {r.files} files, {human_bytes(r.bytes)}, every checksum verified")
    if r.omitted_tables:
        click.echo(f"  left out tables: {', '.join(r.omitted_tables)}")
    if r.hidden_layers is not None:
        click.echo("  hidden states: " + (f"layers {','.join(map(str, r.hidden_layers))}" if r.hidden_layers
                                          else "none"))


@click.command("merge")
@click.argument("stores", nargs=-1, required=True, metavar="STORE STORE…")
@click.option("--out", "-o", required=True, help="The merged store (new, or an interrupted merge to resume).")
@click.option("--force", is_flag=True,
              help="Merge stores made with different model/lens/generation/capture settings "
                   "(recorded in the manifest), keeping the first copy of a duplicated sample.")
def merge(stores: tuple[str, ...], out: str, force: bool) -> None:
    """Merge stores (per-node parts of an ingest, or several datasets) into one.

    sample_id and token_uid are renumbered (A's samples first, then B's, ...); everything else,
    hidden states included, is copied bit for bit. Stores made with different settings are
    refused unless --force.
    """
    from .merge import merge_stores

    stats = merge_stores(list(stores), out, force=force, progress=True)
    click.echo(f"merged into {out}: {stats}")


COMMANDS = (push, pull, merge)
