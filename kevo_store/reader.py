"""Reading a store: DuckDB views over the manifest's Parquet files, hidden states from Zarr.

Opening a store reads manifest.json and creates one view per table over exactly the files the
manifest names (so a writer's uncommitted files are invisible); nothing else is read until a
query runs.
"""

from __future__ import annotations

import os
import re
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from . import readcheck
from .confine import ReadOnlyConnection, connect, lock
from .errors import CorruptStoreError, KevoError, QueryError, StoreError
from .fs import LocalFS, StoreFS
from .hidden import HiddenReader
from .localcheck import check_named_files
from .manifest import Manifest
from .readcheck import ReadCheck
from .schema import DERIVED_TABLES, TABLES
from .share.remote import store_fs

_DUCK_TYPES = {
    pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
    pa.float32(): "FLOAT", pa.float64(): "DOUBLE", pa.string(): "VARCHAR", pa.bool_(): "BOOLEAN",
}


def _q(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _ident(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


def _empty_select(schema: pa.Schema) -> str:
    cols = ", ".join(f"CAST(NULL AS {_DUCK_TYPES.get(f.type, 'VARCHAR')}) AS {_ident(f.name)}" for f in schema)
    return f"SELECT {cols} WHERE false"


def view_sql(fs: StoreFS, files: list[str], schema: pa.Schema | None) -> str:
    if not files:
        if schema is None:
            raise StoreError(f"{fs.root}: a derived table has no files")
        return _empty_select(schema)
    lst = ", ".join(_q(fs.full(f)) for f in files)
    return f"SELECT * FROM read_parquet([{lst}])"


def _table_entries(m: dict) -> list[tuple[str, list[str], pa.Schema | None]]:
    out = [(name, m["tables"].get(name, {}).get("files", []), schema) for name, schema in TABLES.items()]
    for name, d in (m.get("derived") or {}).items():
        out.append((name, d.get("files", []), DERIVED_TABLES.get(name)))
    # a partial pull has no files for the tables it left out: no view for them
    omitted = m.omitted_tables
    return [e for e in out if e[0] not in omitted]


def _connect(confined: bool = True) -> duckdb.DuckDBPyConnection:

    return connect(confined)


def _view_files(fs: StoreFS, m: dict) -> list[str]:
    """What the views read (the only files a confined connection may open)."""
    return [fs.full(f) for _n, files, _s in _table_entries(m) for f in files]


def _confine(con: duckdb.DuckDBPyConnection, files: list[str], confined: bool, check: ReadCheck | None = None):
    if not confined:
        return con
    lock(con, files)
    return ReadOnlyConnection(con, check.before if check is not None else None)


def _read_check(enabled: bool | None, stores: list[tuple[StoreFS, dict]]) -> ReadCheck | None:
    if not (readcheck.enabled_by_default() if enabled is None else enabled):
        return None
    check = ReadCheck()
    for fs, m in stores:
        check.add(fs, m, [(name, files) for name, files, _s in _table_entries(m)])
    return check


def _attach(con: duckdb.DuckDBPyConnection, fs: StoreFS, m: dict, schema_name: str | None) -> None:
    ffs = fs.fsspec()
    # one store may be attached twice (open_stores: under its alias and unqualified): register once
    if ffs is not None and ((ffs.protocol if isinstance(ffs.protocol, str) else ffs.protocol[0])
                            not in con.list_filesystems()):
        con.register_filesystem(ffs)
    prefix = ""
    if schema_name:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema_name)}")
        prefix = _ident(schema_name) + "."
    for name, files, schema in _table_entries(m):
        try:
            con.execute(f"CREATE OR REPLACE VIEW {prefix}{_ident(name)} AS {view_sql(fs, files, schema)}")
        except duckdb.Error as e:  # creating the view reads the first file's footer
            raise CorruptStoreError(f"{fs.root}: table '{name}' cannot be read ({one_line(e)}); "
                                    f"run `kevo store verify {fs.root}`") from None


def _run(con: duckdb.DuckDBPyConnection, query: str, roots: list[str] | None = None,
         manifests: list[dict] | None = None, check: ReadCheck | None = None):
    if check is not None and not isinstance(con, ReadOnlyConnection):
        check.before(query)  # a confined connection checks the files itself, after refusing writes
    try:
        return con.sql(query)  # a confined connection refuses statements that write first
    except duckdb.Error as e:
        raise query_error(e, roots, manifests) from None


# Errors in the SQL itself; anything else while reading (a bare duckdb.Error, IO, invalid input,
# serialization) may be a damaged file, which DuckDB does not always name.
_SQL_ERRORS = tuple(getattr(duckdb, n) for n in (
    "ParserException", "BinderException", "CatalogException", "ConversionException", "OutOfRangeException",
    "NotImplementedException", "ConstraintException", "TypeMismatchException", "SyntaxException",
    "InterruptException", "OutOfMemoryException", "PermissionException") if hasattr(duckdb, n))


def query_error(e: BaseException, roots: list[str] | None = None, manifests: list[dict] | None = None) -> QueryError:
    """One line; when reading failed for a reason other than the SQL, say how to find the damaged file;
    a table a partial pull left out is named as such (DuckDB only says it does not exist)."""
    msg = one_line(e)
    for m in manifests or []:
        part = m.get("partial") or {}
        for t in part.get("omitted_tables", []):
            if "does not exist" in msg and re.search(rf"\b{re.escape(t)}\b", msg):
                return QueryError(f"{msg} (table '{t}' is not in this store: a partial pull of "
                                  f"{part.get('source', 'another store')} left it out; pull it with --tables {t})")
    if not isinstance(e, _SQL_ERRORS):
        which = " or ".join(f"`kevo store verify {r}`" for r in (roots or ["STORE"]))
        msg += f" (if a store file is damaged, {which} names it)"
    return QueryError(msg)


def one_line(e: BaseException) -> str:
    """DuckDB errors span several lines (a caret under the query); keep the message and any hint."""
    text = "".join(c if c.isprintable() or c == "\n" else f"\\x{ord(c):02x}" for c in str(e))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and lines[0].startswith("Traceback"):
        # a Python filesystem (a remote store's, kevo_store/share/remote.py) raised inside DuckDB: keep
        # its exception line, e.g. "UnsafeStoreError: s3://…: refused: 'x' is 9 bytes, …"
        import re

        for ln in reversed(lines):
            m = re.match(r"^(?:\w+\.)*(\w*(?:Error|Exception)\w*): (.+)$", ln)
            if m:
                return f"{m.group(1)}: {m.group(2)}"
    keep = [lines[0]] if lines else [type(e).__name__]
    keep += [ln for ln in lines[1:] if ln.startswith(("Did you mean", "Candidate"))]
    return " ".join(keep)


def reader_files(manifest: Manifest) -> list[str]:
    """The files a reader may open: every named file except those a partial pull left out on purpose."""
    files = list(manifest.get("files", {}))
    skip = manifest.omitted_files(files)
    return [f for f in files if f not in skip]


def check_local_store(fs: StoreFS, m: dict) -> dict:
    """Local stores: every file a reader may open is a regular file of its declared size (one lstat
    each) before DuckDB or Zarr touches it. Returns the manifest checked (re-read once if a writer
    committed, e.g. compacted parts away, between reading the manifest and the check)."""
    if not isinstance(fs, LocalFS):
        return m  # remote stores: kevo_store/share/remote.py serves only named files at their declared sizes
    for attempt in (0, 1):
        try:
            check_named_files(fs.root, m, reader_files(m))
            return m
        except CorruptStoreError:
            m2 = Manifest.load(fs)
            if attempt or m2 == m:
                raise
            m = m2
    return m


class Store:
    """A read-only view of one store. Create it with :func:`open_store`."""

    def __init__(self, path: str | os.PathLike | StoreFS, con: duckdb.DuckDBPyConnection | None = None,
                 confined: bool = True, allow_paths: list[str] = (), check_reads: bool | None = None):
        self.fs = store_fs(path)
        self.path = self.fs.root
        self.manifest = Manifest.load(self.fs)
        self.manifest = check_local_store(self.fs, self.manifest)
        self._check = _read_check(check_reads, [(self.fs, self.manifest)])
        if con is not None:  # the caller's own connection: left as it is
            self.con = con
            _attach(self.con, self.fs, self.manifest, None)
        else:
            raw = _connect(confined)
            _attach(raw, self.fs, self.manifest, None)
            self.con = _confine(raw, _view_files(self.fs, self.manifest) + list(allow_paths), confined, self._check)
        self._hidden: HiddenReader | None = None

    # --- queries
    def sql(self, query: str):
        """Run SQL over the views; returns a polars.DataFrame. The files of the tables it names are
        checked against the manifest's checksums first (kevo_store/readcheck.py)."""
        rel = _run(self.con, query, [self.path], [self.manifest], self._check)
        if rel is None:
            return None
        try:
            return rel.pl()
        except duckdb.Error as e:
            raise query_error(e, [self.path], [self.manifest]) from None

    def arrow(self, query: str) -> pa.Table:
        rel = _run(self.con, query, [self.path], [self.manifest], self._check)
        try:
            return rel.to_arrow_table() if rel is not None else pa.table({})
        except duckdb.Error as e:
            raise query_error(e, [self.path], [self.manifest]) from None

    # --- manifest accessors
    @property
    def model(self) -> dict[str, Any]:
        return self.manifest.get("model", {})

    @property
    def dataset(self) -> dict[str, Any]:
        return self.manifest.get("dataset", {})

    @property
    def n_layers(self) -> int:
        """L: layers are numbered 0..L (manifest model.n_layers, else the largest layer stored)."""
        n = self.model.get("n_layers")
        if n is not None:
            return int(n)
        v = self.con.execute("SELECT max(layer) FROM layers").fetchone()[0]
        if v is None:
            raise StoreError(f"{self.path}: number of layers unknown (no model.n_layers, no layers rows)")
        return int(v)

    @property
    def lens_modes(self) -> list[str]:
        modes = self.manifest.get("lens", {}).get("modes")
        if modes:
            return list(modes)
        return [r[0] for r in self.con.execute("SELECT DISTINCT lens FROM layers ORDER BY 1").fetchall()]

    @property
    def hidden_layers(self) -> list[int]:
        return self.manifest.hidden_layers_present()  # a partial pull may hold only some layers

    @property
    def tables(self) -> list[str]:
        return [name for name, _f, _s in _table_entries(self.manifest)]

    def table_files(self, name: str) -> list[str]:
        """The paths (URLs for a remote store, as ``self.fs`` names them) of a table's committed files.

        Exactly the manifest's files, so a writer's uncommitted parts never show. A table a partial
        pull left out raises, naming it, rather than answering as if it were empty."""
        m = self.manifest
        partial = m.partial or {}
        if name in m.omitted_tables:
            raise StoreError(f"{self.path}: table '{name}' is not in this store: a partial pull of "
                             f"{partial.get('source', 'another store')} left it out "
                             "(pull it with --tables to query it)")
        if name in m["tables"]:
            files = m["tables"][name].get("files", [])
        elif name in (m.get("derived") or {}):
            files = m["derived"][name].get("files", [])
        else:
            raise KevoError(f"{self.path} has no table {name!r}; tables: {', '.join(self.tables)}")
        if self._check is not None:  # the caller reads them (e.g. Polars' engine): checked as for SQL
            self._check.before(name)
        return [self.fs.full(f) for f in files]

    def rows(self, table: str) -> int:
        if table in self.manifest["tables"]:
            return int(self.manifest["tables"][table]["rows"])
        if table in (self.manifest.get("derived") or {}):
            return int(self.manifest["derived"][table]["rows"])
        raise KevoError(f"{self.path} has no table {table!r}; tables: {self.tables}")

    # --- hidden states
    def hidden(self, token_uids: Any, layers: Any = None, out: np.ndarray | None = None) -> np.ndarray:
        """Hidden states (n, n_layers, D) of ``token_uids`` at ``layers`` (default: all captured).

        float16 stores give float16; bfloat16 stores give float32 (exact). ``out``: an array of exactly
        that shape and dtype to read into (returned), e.g. one buffer reused layer after layer."""
        h = self.manifest.get("hidden")
        if not h:
            raise KevoError(f"{self.path} holds no hidden states (captured without them)")
        if self.manifest.partial:  # a partial pull: Zarr would fill missing layers with zeros
            layers = self.hidden_layers if layers is None else layers
            self.manifest.check_hidden_layers_present([layers] if np.isscalar(layers) else layers, self.path)
        if self._hidden is None:  # checks every shard it reads (kevo_store/hidden.py)
            self._hidden = HiddenReader(self.fs, h, self.manifest.get("files"))
        return self._hidden.read(token_uids, layers, out)

    def hidden_xarray(self):
        """All hidden states as a lazy, dask-backed ``xarray.DataArray`` hidden(token, layer, hidden_dim)
        with coordinates ``token_uid`` and ``sample_id`` (along token) and ``layer`` (the layer numbers):
        hand it to dask (or compute a slice) without converting the store. Blocks are one shard of tokens x
        one layer, each read through ``Store.hidden`` (so every read is checked; tails and partial pulls
        included); bfloat16 stores give float32. Needs the ``array`` extra: ``pip install 'kevo[array]'``."""
        try:
            import dask.array as da
            import xarray as xr
        except ImportError:
            raise KevoError("hidden_xarray needs xarray and dask: pip install 'kevo[array]'") from None
        h = self.manifest.get("hidden")
        if not h:
            raise KevoError(f"{self.path} holds no hidden states (captured without them)")
        layers = self.hidden_layers
        n = int(h["rows"])
        dtype = np.dtype(np.float32 if h["logical_dtype"] == "bfloat16" else h["dtype"])
        src = _HiddenBlocks(self, layers, (n, len(layers), int(h["hidden_size"])), dtype)
        unit = int(h.get("shard_tokens") or 64)
        data = da.from_array(src, chunks=(unit, 1, src.shape[2]), meta=np.empty((0, 0, 0), dtype), asarray=False)
        sid = self.con.execute("SELECT sample_id FROM tokens ORDER BY token_uid").fetchnumpy()["sample_id"] \
            if "tokens" in self.tables else np.zeros(n, np.int64)
        return xr.DataArray(data, dims=("token", "layer", "hidden_dim"), name="hidden",
                            coords={"token_uid": ("token", np.arange(n, dtype=np.int64)),
                                    "sample_id": ("token", np.asarray(sid, dtype=np.int64)),
                                    "layer": ("layer", np.asarray(layers, dtype=np.int64))},
                            attrs={"logical_dtype": h["logical_dtype"], "store": self.path})

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.path!r}, samples={self.rows('samples')}, tokens={self.rows('tokens')})"


class _HiddenBlocks:
    """An array-like over a store's hidden states for ``dask.array.from_array``: each block it is asked
    for is one checked ``Store.hidden`` read."""

    def __init__(self, store: Store, layers: list[int], shape: tuple[int, int, int], dtype: np.dtype):
        self.store, self.layers, self.shape, self.dtype, self.ndim = store, layers, shape, dtype, 3

    def __getitem__(self, key):
        t, lay, d = key  # dask asks with slices; integers drop their axis as in numpy
        uids = np.atleast_1d(np.arange(self.shape[0])[t])
        ls = np.atleast_1d(np.asarray(self.layers)[lay])
        if uids.size == 0 or ls.size == 0:
            out = np.empty((uids.size, ls.size, self.shape[2]), self.dtype)[:, :, d]
        else:
            out = self.store.hidden(uids, layers=ls.tolist())[:, :, d]
        if np.ndim(np.arange(len(self.layers))[lay]) == 0:
            out = out[:, 0]
        if np.ndim(np.arange(self.shape[0])[t]) == 0:
            out = out[0]
        return out


def open_store(path: str | os.PathLike, confined: bool = True, check_reads: bool | None = None) -> Store:
    """Open a store (a directory or an fsspec URL) for reading. Its connection can read the store's
    files only and runs read-only SQL (kevo_store/confine.py); ``confined=False`` lifts both. The
    Parquet files a statement reads are checked against the manifest's sha256 first, once per process
    (kevo_store/readcheck.py; ``check_reads=False`` or ``KEVO_CHECK_READS=0`` turns it off)."""
    return Store(path, confined=confined, check_reads=check_reads)


_ALIAS = re.compile(r"[^0-9A-Za-z_]")


def alias_for(path: str) -> str:
    """Schema name for a store: its directory name without '.kevo', made an identifier."""
    base = os.path.basename(os.fspath(path).rstrip("/")) or "store"
    if base.endswith(".kevo"):
        base = base[: -len(".kevo")]
    a = _ALIAS.sub("_", base) or "store"
    return "s_" + a if a[0].isdigit() else a


class Stores:
    """Several stores in one DuckDB connection: ``<alias>.<table>`` views."""

    def __init__(self, stores: dict[str, Store], con: duckdb.DuckDBPyConnection, check: ReadCheck | None = None):
        self.stores = stores
        self.con = con
        self.check = check

    def __getitem__(self, alias: str) -> Store:
        return self.stores[alias]

    @property
    def roots(self) -> list[str]:
        return [s.path for s in self.stores.values()]

    @property
    def manifests(self) -> list[dict]:
        return [s.manifest for s in self.stores.values()]

    def sql(self, query: str):
        rel = _run(self.con, query, self.roots, self.manifests, self.check)
        try:
            return rel.pl() if rel is not None else None
        except duckdb.Error as e:
            raise query_error(e, self.roots, self.manifests) from None

    def arrow(self, query: str) -> pa.Table:
        rel = _run(self.con, query, self.roots, self.manifests, self.check)
        try:
            return rel.to_arrow_table() if rel is not None else pa.table({})
        except duckdb.Error as e:
            raise query_error(e, self.roots, self.manifests) from None

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Stores:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_stores(stores: dict[str, str | os.PathLike] | list[str], unqualified: str | None = None,
                confined: bool = True, allow_paths: list[str] = (), check_reads: bool | None = None) -> Stores:
    """Attach several stores to one connection, each as a schema named by its alias.

    ``stores`` maps alias -> path (or is a list of paths, aliased by directory name). The views of
    the store named by ``unqualified`` are also created without a schema prefix. The connection is
    confined as :func:`open_store`'s (``allow_paths``: more files it may open, e.g. an export)."""
    if not isinstance(stores, dict):
        d: dict[str, Any] = {}
        for p in stores:
            a = alias_for(os.fspath(p))
            if a in d:
                raise KevoError(f"two stores would both be called {a!r}; name them: {a}=PATH")
            d[a] = p
        stores = d
    con = _connect(confined)
    files: list[str] = list(allow_paths)
    out: dict[str, Store] = {}
    for alias, path in stores.items():
        if not alias.isidentifier():
            raise KevoError(f"store alias {alias!r} is not an SQL identifier")
        if alias in ("main", "temp", "system", "information_schema", "pg_catalog", "memory"):
            raise KevoError(f"store alias {alias!r} is reserved; name it: other={path}")
        fs = store_fs(path)
        m = check_local_store(fs, Manifest.load(fs))
        _attach(con, fs, m, alias)
        files += _view_files(fs, m)
        s = Store.__new__(Store)
        s.fs, s.path, s.manifest, s.con, s._hidden = fs, fs.root, m, con, None
        s._check = _read_check(check_reads, [(fs, m)])
        out[alias] = s
        if unqualified == alias:
            _attach(con, fs, m, None)
    check = _read_check(check_reads, [(s.fs, s.manifest) for s in out.values()])
    con = _confine(con, files, confined, check)
    for s in out.values():
        s.con = con
    return Stores(out, con, check)
