"""The one small filesystem layer every store path goes through.

A store is addressed by a root (a local directory, or an fsspec URL such as ``s3://b/x.kevo``)
plus paths relative to it, always with ``/``. Writing is local only (it needs O_EXCL lock files
and atomic renames); reading works on any fsspec filesystem, so ``kevo_store.remote`` can hand an
URL to ``open_store`` without the reader knowing the difference.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from pathlib import Path
from typing import Any

_HASH_BLOCK = 4 << 20


def is_url(root: str | os.PathLike) -> bool:
    s = os.fspath(root)
    return "://" in s and not s.startswith("file://")


class StoreFS:
    """File access relative to a store root. Subclasses: :class:`LocalFS`, :class:`FsspecFS`."""

    root: str
    writable: bool = False

    def full(self, rel: str) -> str:
        """The path or URL of ``rel`` as DuckDB / zarr / fsspec see it."""
        raise NotImplementedError

    def exists(self, rel: str) -> bool:
        raise NotImplementedError

    def isdir(self, rel: str) -> bool:
        raise NotImplementedError

    def read_bytes(self, rel: str) -> bytes:
        raise NotImplementedError

    def open(self, rel: str, mode: str = "rb"):
        raise NotImplementedError

    def size(self, rel: str) -> int:
        raise NotImplementedError

    def listdir(self, rel: str) -> list[str]:
        """Names (not paths) directly under ``rel``; empty if it does not exist."""
        raise NotImplementedError

    def walk_files(self, rel: str) -> list[str]:
        """Every file below ``rel``, as store-relative paths."""
        raise NotImplementedError

    def sha256(self, rel: str) -> tuple[str, int]:
        """(hex sha256, size in bytes) of a file, streamed."""
        h = hashlib.sha256()
        n = 0
        with self.open(rel, "rb") as f:
            while True:
                block = f.read(_HASH_BLOCK)
                if not block:
                    break
                h.update(block)
                n += len(block)
        return h.hexdigest(), n

    def zarr_store(self, rel: str, read_only: bool = True) -> Any:
        raise NotImplementedError

    def fsspec(self) -> Any:
        """The fsspec filesystem, for DuckDB's register_filesystem (None when local)."""
        return None


class LocalFS(StoreFS):
    """A store in a local directory: reads and writes, with atomic replace."""

    writable = True

    def __init__(self, root: str | os.PathLike):
        s = os.fspath(root)
        if s.startswith("file://"):
            s = s[len("file://"):]
        self.root = str(Path(s).expanduser().absolute())

    def full(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/")) if rel else self.root

    def exists(self, rel: str) -> bool:
        return os.path.exists(self.full(rel))

    def isdir(self, rel: str) -> bool:
        return os.path.isdir(self.full(rel))

    def read_bytes(self, rel: str) -> bytes:
        with open(self.full(rel), "rb") as f:
            return f.read()

    def open(self, rel: str, mode: str = "rb"):
        return open(self.full(rel), mode)

    def size(self, rel: str) -> int:
        return os.path.getsize(self.full(rel))

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self.full(rel)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def walk_files(self, rel: str) -> list[str]:
        base = self.full(rel)
        out = []
        for dirpath, _dirs, files in os.walk(base):
            sub = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            out.extend(posixpath.join(sub, f) for f in files)
        return sorted(out)

    # --- writing (local only) ---
    def makedirs(self, rel: str) -> None:
        os.makedirs(self.full(rel), exist_ok=True)

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel`` so that readers see the old or the new file, never a torn one."""
        write_atomic_local(self.full(rel), data)

    def fsync_file(self, rel: str) -> None:
        fd = os.open(self.full(rel), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def fsync_dir(self, rel: str) -> None:
        try:
            fd = os.open(self.full(rel), os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def remove(self, rel: str) -> None:
        try:
            os.remove(self.full(rel))
        except FileNotFoundError:
            pass

    def rmtree(self, rel: str) -> None:
        import shutil

        shutil.rmtree(self.full(rel), ignore_errors=True)

    def disk_usage(self, rel: str = "") -> int:
        """Bytes allocated on disk, as ``du`` counts them (blocks of files and directories): many small
        chunk files take far more than their lengths add up to."""
        total = 0
        for dirpath, _dirs, files in os.walk(self.full(rel)):
            for name in [None, *files]:
                try:
                    st = os.lstat(dirpath if name is None else os.path.join(dirpath, name))
                except OSError:
                    continue
                total += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
        return total

    def zarr_store(self, rel: str, read_only: bool = True) -> Any:
        from zarr.storage import LocalStore

        return LocalStore(self.full(rel), read_only=read_only)


class FsspecFS(StoreFS):
    """A store under an fsspec URL (s3://, gs://, memory://, ...): read-only access."""

    def __init__(self, root: str, fs: Any = None, **storage_options: Any):
        import fsspec

        if fs is None:
            fs, path = fsspec.core.url_to_fs(root, **storage_options)
        else:
            path = fs._strip_protocol(root)
        self._fs = fs
        self._path = path.rstrip("/")
        self.protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.root = root.rstrip("/")

    def _p(self, rel: str) -> str:
        return f"{self._path}/{rel}" if rel else self._path

    def full(self, rel: str) -> str:
        return f"{self.protocol}://{self._p(rel)}"

    def exists(self, rel: str) -> bool:
        return self._fs.exists(self._p(rel))

    def isdir(self, rel: str) -> bool:
        return self._fs.isdir(self._p(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self._fs.cat_file(self._p(rel))

    def open(self, rel: str, mode: str = "rb"):
        return self._fs.open(self._p(rel), mode)

    def size(self, rel: str) -> int:
        return int(self._fs.size(self._p(rel)))

    def listdir(self, rel: str) -> list[str]:
        try:
            return sorted(posixpath.basename(p.rstrip("/")) for p in self._fs.ls(self._p(rel), detail=False))
        except FileNotFoundError:
            return []

    def walk_files(self, rel: str) -> list[str]:
        base = self._path + "/"
        return sorted(p[len(base):] for p in self._fs.find(self._p(rel)))

    def disk_usage(self, rel: str = "") -> int:
        return int(self._fs.du(self._p(rel)))

    def zarr_store(self, rel: str, read_only: bool = True) -> Any:
        from zarr.storage import FsspecStore

        afs = self._fs
        if not getattr(afs, "async_impl", False):
            from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

            afs = AsyncFileSystemWrapper(afs)
        return FsspecStore(afs, path=self._p(rel), read_only=True)

    def fsspec(self) -> Any:
        return self._fs


def store_fs(root: str | os.PathLike | StoreFS) -> StoreFS:
    """The filesystem layer for a store root: local path, ``file://`` URL or any fsspec URL."""
    if isinstance(root, StoreFS):
        return root
    if is_url(root):
        # sharing helper: URLs go through kevo_store.remote (env/fsspec config for the endpoint,
        # manifest-checked read-only access for DuckDB and Zarr); RemoteFS subclasses FsspecFS.
        from .remote import RemoteFS

        return RemoteFS(os.fspath(root))
    return LocalFS(root)


def write_atomic_local(path: str, data: bytes) -> None:
    """Write ``data`` to a local ``path`` so that readers see the old or the new file, never a torn
    one: a fsynced temporary file renamed over it, then the directory fsynced."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
