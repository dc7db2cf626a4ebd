"""Integrity on read for the tables: a Parquet file a query is about to read matches its manifest checksum.

DuckDB and Polars do not verify Parquet page CRCs (a flipped bit inside a page decodes to another
value, no error), so before SQL runs over a local store, the files of every table the statement names
are hashed and compared with the sha256 the manifest recorded when they were committed. A file is
hashed once per process and version (its size, mtime, ctime and inode): the next query over the same
store, or another ``open_store`` of it, costs one ``stat`` per file. A mismatch fails the query,
naming the file, before any value is returned.

What it costs is measured in BENCHMARKS.md (query latency with and without the check); the check is
on by default, ``KEVO_CHECK_READS=0`` (or ``open_store(..., check_reads=False)``) turns it off for a
session that has just run ``kevo store verify``. Remote stores are checked as they arrive by
``kevo store pull``; a query straight against a remote store reads byte ranges, which cannot be
hashed as a whole without fetching the whole file, and is not checked here.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from .errors import CorruptStoreError
from .fs import LocalFS, StoreFS

_VERIFIED: dict[str, tuple[int, int, int, int]] = {}  # absolute path -> the version whose sha256 matched
_LOCK = threading.Lock()


def enabled_by_default() -> bool:
    return os.environ.get("KEVO_CHECK_READS", "1").strip().lower() not in ("0", "false", "no", "off")


def _version(path: str) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(4 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)  # releases the GIL: files hash in parallel threads


class ReadCheck:
    """The tables of one or more local stores, checked file by file as statements name them."""

    def __init__(self) -> None:
        self._tables: dict[str, list[tuple[str, str, str, str]]] = {}  # table -> [(root, rel, full, sha256)]
        self._pattern: re.Pattern | None = None

    def add(self, fs: StoreFS, manifest: dict, tables: Iterable[tuple[str, list[str]]]) -> None:
        if not isinstance(fs, LocalFS):
            return
        files = manifest.get("files", {})
        for name, rels in tables:
            for rel in rels:
                want = (files.get(rel) or {}).get("sha256")
                if want:
                    self._tables.setdefault(name.lower(), []).append((fs.root, rel, fs.full(rel), want))
        names = sorted(self._tables, key=len, reverse=True)
        self._pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b", re.I) if names else None

    def before(self, query: str) -> None:
        """Check the files of every table ``query`` names (a word match: a name inside a string literal
        costs a check, never a miss)."""
        if self._pattern is None or not isinstance(query, str):
            return
        todo = []
        for name in dict.fromkeys(m.lower() for m in self._pattern.findall(query)):
            for ent in self._tables.get(name, ()):
                try:
                    v = _version(ent[2])
                except OSError:
                    continue  # a missing file: opening the store refused it already, or DuckDB names it
                if _VERIFIED.get(ent[2]) != v:
                    todo.append((ent, v))
        if not todo:
            return
        if len(todo) == 1:
            got = [_sha256(todo[0][0][2])]
        else:
            with ThreadPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1)) as ex:
                got = list(ex.map(lambda t: _sha256(t[0][2]), todo))
        bad = [(ent, sha) for (ent, _v), sha in zip(todo, got) if sha != ent[3]]
        with _LOCK:
            for (ent, v), sha in zip(todo, got):
                if sha == ent[3]:
                    _VERIFIED[ent[2]] = v
        if bad:
            (root, rel, _full, want), sha = bad[0]
            more = f" (and {len(bad) - 1} more file(s))" if len(bad) > 1 else ""
            raise CorruptStoreError(
                f"{root}: {rel} does not match its checksum in the manifest (sha256 {sha[:16]}... != "
                f"{want[:16]}...): the file changed after it was committed{more}; nothing was read. "
                f"`kevo store verify {root}` checks every file; `kevo store pull` again from the source "
                "(or restore the file) to repair it")
