"""Running bound named queries: through DuckDB (the store's own connection) or Polars' SQL engine.

Both engines get the same literal SQL text. The Polars path asks the store for each table's
committed files (``Store.table_files``) and registers them under the view names the SQL uses: a
local store's through ``polars.scan_parquet``, a remote one's (``s3://``, ``https://``) through
the store's own read-only filesystem, so both engines read exactly what the manifest names.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from kevo_store import Store, Stores, open_store, open_stores
from kevo_store.errors import KevoError, QueryError
from kevo_store.schema import DERIVED_TABLES, TABLES

from .library import BoundQuery, bind

STORE_ALIASES = ("a", "b")


@dataclass
class QueryResult:
    """A named query's answer with everything needed to reproduce it."""

    name: str
    frame: pl.DataFrame
    params: dict = field(default_factory=dict)
    stores: list = field(default_factory=list)
    sql: str = ""

    def info(self) -> dict[str, Any]:
        return {"query": self.name, "params": self.params, "stores": self.stores}


def as_store(s: Any) -> Store:
    """A Store from a Store or a path/URL (opened)."""
    if isinstance(s, Store):
        return s
    if isinstance(s, (str, os.PathLike)):
        return open_store(s)
    raise KevoError(f"not a store: {s!r}")


def _connection(bound: BoundQuery, stores: Any):
    """(connection-like with .sql(), list of store paths, [Store...]) for the query's store count."""
    n = bound.query.stores
    if n == 1:
        if isinstance(stores, (list, tuple)):
            if len(stores) != 1:
                raise KevoError(f"query {bound.name} reads one store, got {len(stores)}")
            stores = stores[0]
        s = as_store(stores)
        return s, [s.path], [s]
    if isinstance(stores, Stores):
        missing = [a for a in STORE_ALIASES if a not in stores.stores]
        if missing:
            raise KevoError(f"query {bound.name} needs stores aliased {STORE_ALIASES}")
        return stores, [stores[a].path for a in STORE_ALIASES], [stores[a] for a in STORE_ALIASES]
    if not isinstance(stores, (list, tuple)) or len(stores) != 2:
        raise KevoError(f"query {bound.name} compares two stores (A B), got {stores!r}")
    paths = []
    for s in stores:
        paths.append(s.path if isinstance(s, Store) else os.fspath(s))
    m = open_stores(dict(zip(STORE_ALIASES, paths)))
    return m, paths, [m[a] for a in STORE_ALIASES]


def _check_lens(bound: BoundQuery, stores: list[Store]) -> None:
    lens = bound.params.get("lens")
    if lens is None:
        return
    for s in stores:
        modes = s.lens_modes
        if modes and lens not in modes:
            raise KevoError(f"{s.path} has no lens {lens!r} (lenses: {', '.join(modes)}); use --param lens=...")


def _check_label(bound: BoundQuery, stores: list[Store]) -> None:
    """A label no token of the store carries (a typo such as 'halucinated') would select nothing."""
    label = bound.params.get("label")
    if not label or not isinstance(label, str):  # '' selects every token
        return
    for s in stores:
        present = [r[0] for r in s.con.execute("SELECT DISTINCT label FROM tokens WHERE label IS NOT NULL "
                                               "ORDER BY 1").fetchall()]
        if label not in present:
            have = ", ".join(present) if present else "none (the store has no object labels)"
            raise KevoError(f"--param label={label!r}: no token of {s.path} has that label; labels present: {have}")


def run_bound(bound: BoundQuery, stores: Any, engine: str = "duckdb", check_label: bool = False) -> QueryResult:
    """``check_label``: refuse a ``label`` no token carries (the CLI's ``-p label=``; the library API binds
    any value as a literal and simply selects nothing)."""
    con, paths, objs = _connection(bound, stores)
    _check_lens(bound, objs)
    if check_label:
        _check_label(bound, objs)
    if engine == "duckdb":
        frame = _integers(con.sql(bound.sql))
    elif engine == "polars":
        frame = run_polars(bound.sql, objs, two=bound.query.stores == 2)
    else:
        raise KevoError(f"unknown engine {engine!r} (duckdb | polars)")
    return QueryResult(bound.name, frame, dict(bound.params), [str(p) for p in paths], bound.sql)


def _integers(frame: pl.DataFrame) -> pl.DataFrame:
    """DuckDB's SUM of integers is a HUGEINT (Decimal(38, 0) in Polars): give counts back as Int64."""
    dec = [c for c, dt in frame.schema.items() if isinstance(dt, pl.Decimal) and (dt.scale or 0) == 0]
    return frame.with_columns(pl.col(c).cast(pl.Int64) for c in dec) if dec else frame


def result(stores: Any, name: str, engine: str = "duckdb", **params: Any) -> QueryResult:
    """Run a named query and keep its parameters, stores and SQL with the answer."""
    return run_bound(bind(name, **params), stores, engine)


def run(stores: Any, name: str, engine: str = "duckdb", **params: Any) -> pl.DataFrame:
    """``queries.run(store, "critical-layers", tau=0.6)`` -> polars.DataFrame.

    ``stores``: a Store or a path; for two-store queries (compare-*) a pair of them, or an
    ``open_stores({"a": ..., "b": ...})``."""
    return result(stores, name, engine, **params).frame


_COMMENT = re.compile(r"--[^\n]*")
_WORD = re.compile(r"(?<![\w.])(?:(a|b)\.)?([A-Za-z_]\w*)")


def _scan(store: Store, name: str) -> pl.LazyFrame | None:
    files = store.table_files(name)  # raises, naming the table, if a partial pull left it out
    if not files:
        schema = TABLES.get(name) or DERIVED_TABLES.get(name)
        return pl.from_arrow(schema.empty_table()).lazy() if schema is not None else None
    ffs = store.fs.fsspec()
    if ffs is None:
        return pl.scan_parquet(files)
    import pyarrow.dataset as ds
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    # a remote store: through its filesystem, which serves only the manifest's files at their declared sizes
    dataset = ds.dataset([ffs._strip_protocol(f) for f in files], format="parquet",
                         filesystem=PyFileSystem(FSSpecHandler(ffs)))
    return pl.scan_pyarrow_dataset(dataset)


def polars_tables(store: Store, names: Any = None) -> dict[str, pl.LazyFrame]:
    """The store's tables (or only ``names``) as Polars LazyFrames over exactly the manifest's files."""
    known = list(TABLES) + list(store.manifest.get("derived") or {})
    out: dict[str, pl.LazyFrame] = {}
    for name in (store.tables if names is None else [n for n in names if n in known]):
        lf = _scan(store, name)
        if lf is not None:
            out[name] = lf
    return out


def _referenced(sql: str, alias: str | None) -> set[str]:
    """Names the SQL mentions outside comments (``a.name`` for a two-store query's store ``a``): a superset
    of the tables it reads, so only those are registered (and a left-out one is refused by name)."""
    return {n.lower() for a, n in _WORD.findall(_COMMENT.sub("", sql)) if (a or None) == alias}


def run_polars(sql: str, stores: list[Store], two: bool = False) -> pl.DataFrame:
    """The same SQL through Polars' SQL engine."""
    ctx = pl.SQLContext()
    if two:
        for alias, s in zip(STORE_ALIASES, stores):
            for name, lf in polars_tables(s, _referenced(sql, alias)).items():
                ctx.register(f"{alias}.{name}", lf)
    else:
        for name, lf in polars_tables(stores[0], _referenced(sql, None)).items():
            ctx.register(name, lf)
    try:
        return ctx.execute(sql, eager=True)
    except Exception as e:  # polars raises several exception types for SQL problems
        raise QueryError(f"polars: {str(e).splitlines()[0]}") from None
