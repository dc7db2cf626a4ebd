"""The one small filesystem layer every store path goes through.

A store is addressed by a root (a local directory, or an fsspec URL such as ``s3://b/x.kevo``)
plus paths relative to it, always with ``/``. Writing is local only (it needs O_EXCL lock files
and atomic renames): :class:`LocalFS`. Reading works on any fsspec filesystem through the same
interface (``kevo_store.share.remote.RemoteFS``), so the reader does not know the difference;
``kevo_store.share.remote.store_fs(location)`` picks one.
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
    """File access relative to a store root. Subclasses: :class:`LocalFS`, ``share.remote.RemoteFS``."""

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
