"""Before an engine opens a local store's file: is it the file the manifest describes?

DuckDB, Zarr and numpy open what they are given: a FIFO in place of a Parquet file blocks the
reader forever, a symbolic link reads a file outside the store, and a file shorter or longer than
declared reads as garbage or fails deep inside an engine. One ``lstat`` per file (never following
a link, never opening anything) rules all three out and names the file; it costs microseconds next
to reading a Parquet footer. What the bytes say is ``verify``'s job (sha256 of every file).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping

from .errors import CorruptStoreError
from .share.safety import UnsafeStoreError


def kind_problem(path: str, rel: str) -> str | None:
    """Why ``path`` is not a plain file that can be opened without blocking, or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{rel!r} cannot be examined ({e.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return f"{rel!r} is a symbolic link; a store holds only regular files and directories"
    if not stat.S_ISREG(st.st_mode):
        what = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device" if stat.S_ISBLK(st.st_mode)
                or stat.S_ISCHR(st.st_mode) else "not a regular file")
        return f"{rel!r} is {what}, not a regular file"
    return None


def refuse_kind(root: str, rel: str) -> None:
    """Raise UnsafeStoreError if ``root/rel`` exists and is not a regular file (link, FIFO, dir, ...)."""
    p = kind_problem(os.path.join(root, *rel.split("/")), rel)
    if p:
        raise UnsafeStoreError(f"{root}: refused: {p}")


def check_named_files(root: str, manifest: Mapping, rels: Iterable[str]) -> None:
    """Every file in ``rels`` exists, is a regular file (no link, FIFO, directory) and has the size the
    manifest declares; otherwise raise, naming the file."""
    files = manifest.get("files", {})
    for rel in rels:
        path = os.path.join(root, *rel.split("/"))
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise CorruptStoreError(f"{root}: {rel} is missing (named by the manifest); "
                                    f"run `kevo store verify {root}`") from None
        except OSError as e:
            raise CorruptStoreError(f"{root}: {rel} cannot be examined ({e.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeStoreError(f"{root}: refused: {kind_problem(path, rel)}")
        want = (files.get(rel) or {}).get("size")
        if want is not None and st.st_size != want:
            raise CorruptStoreError(f"{root}: {rel} is {st.st_size} bytes, the manifest says {want} "
                                    f"(truncated or overwritten); run `kevo store verify {root}`")


def check_chunks(root: str, hidden_dir: str, keys: Iterable[str]) -> None:
    """The hidden chunks a read is about to open are regular files (or absent: Zarr's fill value is
    then the hidden-state reader's concern), never links or FIFOs."""
    for key in keys:
        rel = f"{hidden_dir}/{key}"
        p = kind_problem(os.path.join(root, *rel.split("/")), rel)
        if p:
            raise UnsafeStoreError(f"{root}: refused: {p}")
