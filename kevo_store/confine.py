"""A reader's DuckDB connection is confined to the stores it opened.

DuckDB can read any file (``read_csv('/etc/passwd')``), write anywhere (``COPY ... TO``, even into a
store, after which the store fails its checksums), ``ATTACH`` databases and ``INSTALL`` extensions
from the network. A store reader needs none of it, so every connection a reader makes is locked down
once its views exist:

- ``enable_external_access = false`` with ``allowed_paths`` = exactly the files the manifests name
  (plus an export file the user asked for): nothing else on disk or on the network can be opened;
- extensions are neither auto-installed nor auto-loaded, ``INSTALL``/``LOAD`` are refused;
- DuckDB itself refuses to turn external access back on or to widen ``allowed_paths`` while the
  database runs, so harmless settings (``SET threads``, progress bar) stay available;
- SQL handed to ``Store.sql``/``Stores.sql``/``kevo sql`` and to ``Store.con`` may only read:
  SELECT (with WITH, DESCRIBE, SHOW, SUMMARIZE, FROM-first), EXPLAIN, PRAGMA and SET; ``COPY``,
  ``CREATE``, ``INSERT``, ``ATTACH``, ``EXPORT`` ... are refused before DuckDB runs them (an allowed
  path is writable to DuckDB, so the statement check is what keeps the store's own files intact).

``kevo sql --allow-external`` gives the unconfined connection back for users who want DuckDB's
own exports or other files next to a store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import duckdb

from .errors import QueryError

# settings made when the connection is created (they cannot change once the database runs)
START_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False,
                "allow_community_extensions": False}

_READ_TYPES = {"SELECT", "EXPLAIN", "PRAGMA", "VARIABLE_SET", "SET", "RELATION"}


def connect(confined: bool = True) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(":memory:", config=dict(START_CONFIG) if confined else {})


def _path_forms(p: str) -> list[str]:
    """DuckDB spells a registered filesystem's URL ``proto:///path``; allow both spellings."""
    if "://" not in p:
        return [p]
    proto, rest = p.split("://", 1)
    return [p, f"{proto}:///{rest.lstrip('/')}", f"{proto}://{rest.lstrip('/')}"]


def lock(con: duckdb.DuckDBPyConnection, paths: Iterable[str]) -> None:
    """Allow only ``paths`` and turn external access off (for good: DuckDB refuses to turn it back on)."""
    allowed: list[str] = []
    for p in paths:
        allowed.extend(_path_forms(p))
    lst = ", ".join("'" + p.replace("'", "''") + "'" for p in dict.fromkeys(allowed))
    con.execute(f"SET allowed_paths = [{lst}]")
    con.execute("SET enable_external_access = false")


def check_read_only(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """Refuse, before running it, SQL that would do anything but read (naming the statement)."""
    try:
        stmts = con.extract_statements(query)
    except duckdb.Error:
        return  # a syntax error: DuckDB reports it better when the query runs
    for st in stmts:
        kind = str(st.type).rsplit(".", 1)[-1]
        if kind not in _READ_TYPES:
            verb = kind.replace("_STATEMENT", "").replace("_", " ")
            raise QueryError(f"{verb} statements are refused: a store's SQL connection only reads "
                             "(SELECT, EXPLAIN, PRAGMA, SET); export a result with `kevo sql ... --output FILE`, "
                             "or pass --allow-external to run DuckDB unconfined")


def predicate(text: str, what: str = "--tokens") -> str:
    """``text`` as one SQL expression (DuckDB's own expression parser), re-rendered without comments,
    for ``WHERE (...)``: a predicate cannot close the parenthesis, add a statement or comment the rest."""
    try:
        return str(duckdb.SQLExpression(text))
    except duckdb.Error as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise QueryError(f"{what} {text!r} is not one SQL predicate ({first})") from None


class ReadOnlyConnection:
    """``Store.con``: a DuckDB connection whose statements are checked by :func:`check_read_only`.

    Everything else (``fetchall``, ``list_filesystems``, ...) is the DuckDB connection's own."""

    def __init__(self, con: duckdb.DuckDBPyConnection, before: Callable[[str], None] | None = None):
        object.__setattr__(self, "_con", con)
        object.__setattr__(self, "_before", before)  # e.g. the checksums of the files a statement reads

    def _check(self, query: str) -> None:
        check_read_only(self._con, query)
        if self._before is not None:
            self._before(query)

    def execute(self, query: str, parameters: Any = None):
        self._check(query)
        return self._con.execute(query, parameters) if parameters is not None else self._con.execute(query)

    def sql(self, query: str, *args: Any, **kw: Any):
        self._check(query)
        return self._con.sql(query, *args, **kw)

    query = sql

    def executemany(self, query: str, parameters: Any = None):
        self._check(query)
        return self._con.executemany(query, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._con, name, value)

    def __repr__(self) -> str:
        return f"ReadOnlyConnection({self._con!r})"
