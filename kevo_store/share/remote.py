"""Stores at a URL, read in place: DuckDB and Zarr over an fsspec filesystem.

A store URL is any fsspec URL (``s3://bucket/amber.kevo``, ``gs://…``, ``https://…``,
``memory://…``; ``file://`` and plain paths stay local). :func:`store_fs` returns a
:class:`RemoteFS` for a URL (the store's root on that filesystem, read-only) and a
``kevo_store.fs.LocalFS`` for a path, and the reader needs nothing else:

- ``fsspec()`` is a read-only view of the store under a private protocol (``kevo<N>://``) that
  the reader registers with its DuckDB connection, and ``full(rel)`` names a Parquet file through
  it, so ``read_parquet`` fetches only the byte ranges a query touches (footers, the row groups
  and columns it needs; no read-ahead cache) and nothing outside the store is reachable;
- ``zarr_store("hidden")`` is a read-only Zarr store that fetches only the chunks a selection
  touches, and only chunks the manifest's checksummed chunk index names.

Both refuse any file the manifest does not name, and any file whose size differs from the one
declared, before a byte of it is parsed (the manifest is untrusted input, see ``safety``).
Opening a store for SQL reads the manifest and the Parquet footers, nothing more.

Configuration (S3 and S3-compatible stores such as MinIO or a lab's Ceph):
the standard AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``) and fsspec's own
configuration (``~/.config/fsspec/*.json`` or ``FSSPEC_S3_ENDPOINT_URL=…``-style variables) are
honoured; ``KEVO_STORAGE_OPTIONS`` may hold a JSON object of extra options for the filesystem.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import posixpath
import threading
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from kevo_store.errors import KevoError
from kevo_store.fs import LocalFS, StoreFS, is_url, write_atomic_local
from kevo_store.share.safety import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    UnsafeStoreError,
    check_zarr_metadata,
    is_zarr_meta,
    parse_manifest,
    zarr_metas,
)


class RemoteStoreError(KevoError):
    """A store URL could not be reached or is not a store."""


# ---------------------------------------------------------------------------------------------
# URLs


def scheme_of(location: str | os.PathLike) -> str:
    """The URL scheme of a location ('' for a plain path). Windows drive letters are paths."""
    s = os.fspath(location)
    if "://" not in s:
        return ""
    return urlsplit(s).scheme.lower()


def storage_options(url: str) -> dict:
    """Options for the filesystem of ``url``, from the environment (fsspec's config applies too).

    For S3 the endpoint comes from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (unless fsspec's
    config already sets one), so ``export AWS_ENDPOINT_URL=http://minio:9000`` is all it takes to
    use MinIO. ``KEVO_STORAGE_OPTIONS`` (a JSON object) is merged on top.
    """
    import fsspec.config

    scheme = scheme_of(url)
    opts: dict = {}
    if scheme in ("s3", "s3a"):
        conf = fsspec.config.conf.get("s3", {})
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in conf and "endpoint_url" not in conf.get("client_kwargs", {}):
            opts["endpoint_url"] = endpoint
    extra = os.environ.get("KEVO_STORAGE_OPTIONS")
    if extra:
        try:
            more = json.loads(extra)
        except ValueError as e:
            raise RemoteStoreError(f"KEVO_STORAGE_OPTIONS is not valid JSON: {e}") from None
        if not isinstance(more, dict):
            raise RemoteStoreError("KEVO_STORAGE_OPTIONS must be a JSON object of filesystem options")
        opts.update(more)
    return opts


_NETWORK_MODULES = ("botocore", "aiobotocore", "s3fs", "gcsfs", "aiohttp", "google", "adlfs", "azure", "requests")


def _from_network_library(e: BaseException) -> bool:
    return any(c.__module__.startswith(_NETWORK_MODULES) for c in type(e).__mro__)


@contextlib.contextmanager
def remote_errors(where: str, *, not_found: bool = False):
    """Turn filesystem failures (network, credentials, permissions, and with ``not_found`` a
    missing file) into one clear RemoteStoreError naming ``where``, instead of a traceback."""
    try:
        yield
    except KevoError:
        raise
    except Exception as e:
        if _from_network_library(e):
            hint = ""
            if scheme_of(where) in ("s3", "s3a"):
                hint = ("; check AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) and the credentials "
                        "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)")
            raise RemoteStoreError(f"{where}: cannot reach the store ({type(e).__name__}: {e}){hint}") from None
        if isinstance(e, (OSError, TimeoutError)) and (not_found or not isinstance(e, FileNotFoundError)):
            raise RemoteStoreError(f"{where}: {type(e).__name__}: {e}") from None
        raise


def filesystem(url: str, *, asynchronous: bool = False):
    """``(fs, root)`` for a URL; a clear error when its filesystem is not installed."""
    import fsspec

    scheme = scheme_of(url) or "file"
    try:
        cls = fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as e:
        hint = " (pip install s3fs, or kevo[s3])" if scheme in ("s3", "s3a") else ""
        raise RemoteStoreError(f"{url}: no filesystem for '{scheme}://' URLs{hint}: {e}") from None
    opts = storage_options(url)
    if asynchronous and getattr(cls, "async_impl", False):
        opts["asynchronous"] = True
    fs, root = fsspec.core.url_to_fs(url, **opts)
    # fsspec shares one instance (and its listing cache) per configuration: another process may
    # have pushed to this URL since, so what is cached about it is stale
    fs.invalidate_cache()
    return fs, root.rstrip("/")


def is_local_fs(fs) -> bool:
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return proto in ("file", "local")


def can_list(fs) -> bool:
    protos = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return not protos & {"http", "https"}


def object_store(fs) -> bool:
    """Object stores have no directories to create (and creating one on S3 would create a bucket)."""
    protos = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return bool(protos & {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "memory", "r2"})


def list_sizes(fs, root: str) -> dict[str, int]:
    """``{rel: size}`` of every file below ``root`` on an fsspec filesystem."""
    try:
        found = fs.find(root, detail=True, withdirs=False)
    except FileNotFoundError:
        return {}
    prefix = root.rstrip("/") + "/"
    return {name[len(prefix):]: int(info.get("size") or 0) for name, info in found.items()
            if name.startswith(prefix) and info.get("type", "file") == "file"}


# ---------------------------------------------------------------------------------------------
# the read-only view DuckDB sees

_protocol_ids = itertools.count()
_protocol_lock = threading.Lock()


class _CountingFile:
    """A read-only file that adds the bytes it fetches to its filesystem's ``bytes_read``.

    Fetched, not returned: with a read-ahead cache the two differ, and the network cost is what
    ``bytes_read`` is for.
    """

    def __init__(self, f, owner, rel: str):
        self._f, self._owner, self._rel = f, owner, rel
        self._returned = 0
        self._counted = 0

    def _count(self, n: int) -> None:
        self._returned += n
        cache = getattr(self._f, "cache", None)
        fetched = self._returned
        if cache is not None and getattr(cache, "name", "none") != "none":
            fetched = max(getattr(cache, "total_requested_bytes", 0), 0)
        delta, self._counted = fetched - self._counted, fetched
        self._owner.bytes_read += delta
        self._owner.bytes_read_by[self._rel] = self._owner.bytes_read_by.get(self._rel, 0) + delta

    def read(self, n=-1):
        data = self._f.read(n)
        self._count(len(data))
        return data

    def readinto(self, b):
        n = self._f.readinto(b)
        self._count(n or 0)
        return n

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __iter__(self):
        return iter(self._f)


def _ro_filesystem_class():
    from fsspec.implementations.dirfs import DirFileSystem

    class ManifestFileSystem(DirFileSystem):
        """The store's root as a read-only filesystem that serves only the files the manifest names.

        DuckDB routes ``<protocol>://rel`` here; paths are relative to the store root, so a query
        cannot name anything outside the store, cannot write (``COPY … TO`` fails), and a file
        whose size differs from the manifest's is refused before DuckDB parses it.
        """

        cachable = False  # one instance per opened store (each has its own protocol)

        def __init__(self, fs, root: str, declared: Mapping[str, int], protocol: str, where: str):
            super().__init__(path=root, fs=fs)
            self.protocol = (protocol,)
            self._prefix = protocol + "://"
            self._declared = dict(declared)
            self._where = where
            self.bytes_opened = 0  # sum of the sizes of files opened (diagnostics)
            self.bytes_read = 0  # bytes actually fetched through this filesystem (diagnostics, tests)
            self.bytes_read_by: dict[str, int] = {}  # the same, per store file

        def _strip_protocol(self, path):
            if isinstance(path, str):
                path = path.removeprefix(self._prefix)
                return path.lstrip("/")
            return path

        def _rel(self, path) -> str:
            rel = self._strip_protocol(path)
            if rel not in self._declared:
                raise UnsafeStoreError(f"{self._where}: refused: {rel!r} is not named by the store's manifest")
            return rel

        def open(self, path, mode="rb", *args, **kwargs):
            if "r" not in mode or any(c in mode for c in "wax+"):
                raise PermissionError(f"{self._where} is opened read-only (mode {mode!r})")
            rel = self._rel(path)
            # no read-ahead cache: s3fs would otherwise fetch 50 MB past every position DuckDB reads,
            # and DuckDB already asks for exactly the byte ranges (footer, column chunks) it needs
            kwargs.setdefault("cache_type", "none")
            f = super().open(rel, mode, *args, **kwargs)
            size = getattr(f, "size", None)
            if size is None:
                size = self.fs.size(self._join(rel))
            if size != self._declared[rel]:
                f.close()
                raise UnsafeStoreError(
                    f"{self._where}: refused: {rel!r} is {size} bytes, the manifest declares {self._declared[rel]}"
                )
            self.bytes_opened += size
            return _CountingFile(f, self, rel)

        def info(self, path, **kwargs):
            rel = self._rel(path)
            out = dict(super().info(rel, **kwargs))
            out["name"] = rel
            return out

        def modified(self, path):
            # DuckDB asks; HTTP servers may not say. A store's files never change in place, so a
            # fixed time is honest for caching purposes.
            try:
                return self.fs.modified(self._join(self._rel(path)))
            except (NotImplementedError, KeyError, ValueError, TypeError):
                import datetime

                return datetime.datetime.fromtimestamp(0, tz=datetime.UTC)

        def _refuse_write(self, *args, **kwargs):
            raise PermissionError(f"{self._where} is opened read-only")

        rm = rm_file = mkdir = makedirs = pipe = pipe_file = put = put_file = mv = cp_file = touch = _refuse_write
        _rm = _rm_file = _mkdir = _makedirs = _pipe = _pipe_file = _put = _put_file = _mv = _cp_file = _touch = (
            _refuse_write
        )

    return ManifestFileSystem


def _ro_zarr_store_class():
    from zarr.storage import FsspecStore

    class ManifestZarrStore(FsspecStore):
        """Read-only Zarr store over fsspec that fetches only keys the manifest names.

        A key the manifest does not name is absent (Zarr fills it: the writer skips chunks that are
        all fill value) and is never requested; a fetched key must have the declared size.
        """

        supports_writes = False
        supports_deletes = False

        def __init__(self, fs, path: str, declared: Mapping[str, int], where: str):
            super().__init__(fs=fs, read_only=True, path=path)
            self._declared = dict(declared)
            self._where = where
            self.bytes_fetched = 0

        async def get(self, key, prototype, byte_range=None):
            if key not in self._declared:
                return None
            value = await super().get(key, prototype, byte_range)
            if value is not None:
                n = len(value)
                self.bytes_fetched += n
                declared = self._declared[key]
                if byte_range is None and declared is not None and n != declared:
                    raise UnsafeStoreError(
                        f"{self._where}: refused: hidden/{key} is {n} bytes, the manifest declares {declared}"
                    )
            return value

        async def exists(self, key):
            return key in self._declared

        def with_read_only(self, read_only: bool = False):
            if not read_only:
                raise PermissionError(f"{self._where} is opened read-only")
            return self

    return ManifestZarrStore


# ---------------------------------------------------------------------------------------------
# the store filesystem for a URL


def _guarded(fn):
    """Report network and credential failures inside ``fn`` as one clear RemoteStoreError naming the store."""

    @functools.wraps(fn)
    def method(self, *args, **kwargs):
        with remote_errors(self.root):
            return fn(self, *args, **kwargs)

    return method


class RemoteFS(StoreFS):
    """Read-only access to a store at a URL, trusting nothing the store says until checked.

    What :func:`store_fs` gives for a URL (so ``open_store(url)`` uses it): the manifest is read
    size-capped and parsed strictly, every other read goes only to files the manifest declares,
    DuckDB reads through a private read-only protocol, and Zarr through a manifest-checked store.
    Every access reports network and credential failures as one clear message (``_guarded``).
    """

    def __init__(self, url: str):
        fs, path = filesystem(url)
        self._fs = fs
        self._path = path.rstrip("/")
        self.protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.root = url.rstrip("/")
        self._manifest: dict | None = None
        self._files: dict[str, dict] | None = None
        self._declared: dict[str, dict] | None = None
        self._manifest_bytes: bytes | None = None
        self._duck_fs = None

    def _p(self, rel: str) -> str:
        return f"{self._path}/{rel}" if rel else self._path

    @_guarded
    def named(self) -> dict[str, dict]:
        """The files the manifest itself names (Parquet, index parts, tail), checked; loaded once.

        What SQL needs: opening a store for queries reads the manifest and nothing else of it."""
        if self._files is None:
            from kevo_store.manifest import Manifest
            from kevo_store.share.safety import check_manifest_paths

            raw = self._read_raw(MANIFEST, MAX_MANIFEST_BYTES)
            manifest = Manifest.parse(raw, self.root)
            check_manifest_paths(manifest, self.root)
            self._manifest, self._manifest_bytes = manifest, raw
            self._files = dict(manifest.get("files", {}))
            for rel in zarr_metas(manifest.get("hidden")):
                self._files.setdefault(rel, {"sha256": None, "size": None})
        return self._files

    def manifest(self):
        """(the Manifest, the exact bytes it was parsed from): one fetch, checked strictly."""
        self.named()
        return self._manifest, self._manifest_bytes

    @_guarded
    def listing(self) -> dict[str, int]:
        """``{rel: size}`` of every file under the root: what ``safety.check_listing`` compares with the
        manifest. Links in a local store are refused outright; HTTP cannot list, so there a store is
        what its manifest declares (each file is size-capped and hashed when it is fetched)."""
        if is_local_fs(self._fs):
            from kevo_store.hidden import CHECKPOINT
            from kevo_store.lock import LOCK
            from kevo_store.share.safety import local_listing

            out = local_listing(Path(self._path), self.root)
            out.pop(LOCK, None)  # a local store's writer lock (never part of the store)
            out.pop(CHECKPOINT, None)  # ... and its writer's checkpoint, a copy of an earlier manifest
            return out
        if not self._can_list():
            return {rel: e["size"] if e["size"] is not None else 0 for rel, e in self.declared().items()}
        return list_sizes(self._fs, self._path)

    @_guarded
    def declared(self) -> dict[str, dict]:
        """Every file the store declares, hidden chunks included (``safety.declared_files``: follows the
        checksummed chunk index parts, so only when hidden states are read); loaded once."""
        if self._declared is None:
            from kevo_store.share.safety import declared_files

            self.named()
            self._declared = declared_files(self._manifest, self._read_declared_part, self.root)
        return self._declared

    def _read_declared_part(self, rel: str) -> bytes:
        return self._read_raw(rel, MAX_MANIFEST_BYTES)

    def _read_raw(self, rel: str, cap: int | None) -> bytes:
        p = self._p(rel)
        try:
            if cap is not None:
                size = self._fs.size(p)
                if size is not None and size > cap:
                    raise UnsafeStoreError(f"{self.root}: refused: {rel!r} is {size} bytes (at most {cap} expected)")
            return self._fs.cat_file(p)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise RemoteStoreError(f"{self.root}: cannot read {rel!r}: {e}") from None

    def _check_declared(self, rel: str) -> dict:
        hidden_data = rel.startswith("hidden/") and "/c/" in rel[len("hidden"):]  # v1 chunks, v2 shards/coordinates
        entry = (self.declared() if hidden_data else self.named()).get(rel)
        if entry is None:
            raise UnsafeStoreError(f"{self.root}: refused: {rel!r} is not named by the store's manifest")
        return entry

    # -- StoreFS interface --------------------------------------------------------------------
    @_guarded
    def read_bytes(self, rel: str) -> bytes:
        if rel == MANIFEST:
            return self._read_raw(rel, MAX_MANIFEST_BYTES)
        entry = self._check_declared(rel)
        data = self._read_raw(rel, entry["size"] if entry["size"] is not None else MAX_MANIFEST_BYTES)
        if entry["size"] is not None and len(data) != entry["size"]:
            raise UnsafeStoreError(f"{self.root}: refused: {rel!r} is {len(data)} bytes, "
                                   f"the manifest declares {entry['size']}")
        if is_zarr_meta(rel):
            check_zarr_metadata(parse_manifest(data, f"{self.root}/{rel}"), f"{self.root}/{rel}")
        return data

    @_guarded
    def open(self, rel: str, mode: str = "rb"):
        if "r" not in mode or any(c in mode for c in "wax+"):
            raise PermissionError(f"{self.root} is a remote store, opened read-only")
        if rel != MANIFEST:
            self._check_declared(rel)
        return self._fs.open(self._p(rel), mode)

    @_guarded
    def exists(self, rel: str) -> bool:
        if rel == "" and not self._can_list():
            return self._fs.exists(self._p(MANIFEST))  # an HTTP "directory" is not an object
        return self._fs.exists(self._p(rel))

    @_guarded
    def isdir(self, rel: str) -> bool:
        if rel == "" and not self._can_list():
            return True
        return self._fs.isdir(self._p(rel))

    @_guarded
    def size(self, rel: str) -> int:
        return int(self._fs.size(self._p(rel)))

    @_guarded
    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(posixpath.basename(p.rstrip("/")) for p in self._fs.ls(self._p(rel), detail=False))
        except FileNotFoundError:
            return []

    @_guarded
    def walk_files(self, rel: str) -> list[str]:
        if not self._can_list():  # HTTP cannot list; a store there is what its manifest names
            prefix = rel.rstrip("/") + "/" if rel else ""
            return sorted(r for r in self.declared() if r.startswith(prefix))
        base = self._path + "/"
        return sorted(p[len(base):] for p in self._fs.find(self._p(rel)))

    @_guarded
    def disk_usage(self, rel: str = "") -> int:
        if not self._can_list():  # HTTP cannot list: what the manifest declares
            prefix = rel.rstrip("/") + "/" if rel else ""
            return sum(e["size"] or 0 for r, e in self.declared().items() if r.startswith(prefix))
        return int(self._fs.du(self._p(rel)))

    sha256 = _guarded(StoreFS.sha256)

    def _can_list(self) -> bool:
        return can_list(self._fs)

    def fsspec(self):
        if self._duck_fs is None:
            with _protocol_lock:
                proto = f"kevo{next(_protocol_ids)}"
            sizes = {rel: e["size"] for rel, e in self.named().items() if e["size"] is not None}
            self._duck_fs = _ro_filesystem_class()(self._fs, self._path, sizes, proto, self.root)
        return self._duck_fs

    def full(self, rel: str) -> str:
        # Parquet files are read by DuckDB, through the read-only protocol; every other path is
        # only named in messages, so it stays the URL the user gave
        if rel.endswith(".parquet"):
            return f"{self.fsspec().protocol[0]}://{rel}"
        return f"{self.root}/{rel}" if rel else self.root

    def zarr_store(self, rel: str, read_only: bool = True):
        if not read_only:
            raise PermissionError(f"{self.root} is a remote store, opened read-only")
        from zarr.storage._fsspec import _make_async

        prefix = rel.rstrip("/") + "/"
        declared = {}
        for k, e in self.declared().items():
            if k.startswith(prefix):
                declared[k[len(prefix):]] = e["size"]
        meta = f"{prefix}zarr.json"
        if meta in self.declared():
            self.read_bytes(meta)  # checked by check_zarr_metadata before Zarr parses it
        return _ro_zarr_store_class()(_make_async(self._fs), self._p(rel), declared, self.root)


class TargetFS(StoreFS):
    """A push destination: a store root at any fsspec URL (or a local path), written file by file.

    The store's filesystem layer for a place the writer cannot write (no lock files, no renames on
    an object store): files are uploaded whole, and :meth:`write_last` writes the manifest in one
    atomic step (a rename locally, a single PUT on an object store).
    """

    writable = True

    def __init__(self, url: str):
        self._fs, self._path = filesystem(url)
        self.root = url.rstrip("/")

    def _p(self, rel: str) -> str:
        return f"{self._path}/{rel}" if rel else self._path

    def full(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def invalidate(self) -> None:
        """Forget what the filesystem cached about the destination (another process may have written it)."""
        if hasattr(self._fs, "invalidate_cache"):
            self._fs.invalidate_cache()

    def exists(self, rel: str) -> bool:
        return self._fs.exists(self._p(rel))

    def isdir(self, rel: str) -> bool:
        return self._fs.isdir(self._p(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self._fs.cat_file(self._p(rel))

    def size(self, rel: str) -> int:
        return int(self._fs.size(self._p(rel)))

    def listing(self) -> dict[str, int]:
        """``{rel: size}`` of every file under the root."""
        return list_sizes(self._fs, self._path)

    def walk_files(self, rel: str) -> list[str]:
        prefix = rel.rstrip("/") + "/" if rel else ""
        return sorted(r for r in self.listing() if r.startswith(prefix))

    def open(self, rel: str, mode: str = "rb"):
        if any(c in mode for c in "wax"):
            dst = self._p(rel)
            if is_local_fs(self._fs):
                os.makedirs(os.path.dirname(dst), exist_ok=True)
            elif not object_store(self._fs):  # sftp, hdfs, ...: real directories
                self._fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
        return self._fs.open(self._p(rel), mode)

    def remove(self, rel: str) -> None:
        self._fs.rm_file(self._p(rel))

    def write_last(self, rel: str, data: bytes) -> None:
        """Write ``rel`` in one atomic step: readers see no file or the whole file."""
        if is_local_fs(self._fs):
            write_atomic_local(self._p(rel), data)
        else:
            self._fs.pipe_file(self._p(rel), data)  # one PUT: an object store shows the whole object or none


def store_fs(root: str | os.PathLike | StoreFS) -> StoreFS:
    """The filesystem layer for a store root: a local path or ``file://`` URL (:class:`LocalFS`), any
    other fsspec URL (:class:`RemoteFS`: endpoint and credentials from the environment and fsspec's
    config, manifest-checked read-only access for DuckDB and Zarr)."""
    if isinstance(root, StoreFS):
        return root
    if is_url(root):
        return RemoteFS(os.fspath(root))
    return LocalFS(root)
