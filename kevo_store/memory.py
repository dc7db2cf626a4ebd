"""Memory for the arrays a hidden-state read hands back.

A layer across every token of an AMBER-scale store is 784 MiB (100,400 tokens x 4,096 x float16).
Copied into a fresh array, those bytes cost three passes over memory on top of the read: the kernel
zeroes every new page as the copy first touches it, the copy writes it, the crc32c check reads it.
Two ways round that, both measured in BENCHMARKS.md ("Reads at AMBER scale"):

- :func:`new_array`: an array of its own anonymous mapping with transparent huge pages asked for
  (``MADV_HUGEPAGE``: one page fault per 2 MiB instead of per 4 KiB, where the kernel's THP setting
  is ``madvise`` or ``always``), for results that must be assembled (several layers, scattered rows).
- :class:`Mapping`: address space into which file ranges (the inner chunks of shard files) are
  mapped copy-on-write (``MAP_PRIVATE | MAP_FIXED``), so a one-layer read of whole chunks hands back
  the page cache's own pages: no copy and no new memory; the crc32c check faults them in. Writes to
  the array stay private to it. The store's writers never change a shard file in place (a rewritten
  shard is a new file renamed over the old one, ``shards.write_file``), so a mapped array keeps the
  bytes that were checked; only truncating a store's file from outside while an array maps it
  would fault (SIGBUS), as with any memory-mapped file (``numpy.memmap`` alike).

Each mapped chunk is one kernel memory area; the process may hold at most ``vm.max_map_count`` of
them (65,530 by default), so mappings stop at a quarter of that (:data:`MAX_MAPPED`), counting those
still alive, and the rest of a read is copied.
"""

from __future__ import annotations

import mmap
import sys
import threading
import weakref
from typing import Any

import numpy as np

PAGE = mmap.PAGESIZE
"""The memory page: a mapped file range must start on one (in the file and in memory)."""
HUGE_ARRAY_BYTES = 8 << 20
"""From this size on :func:`new_array` gives an array its own huge-page mapping."""
MAP_MIN_BYTES = 8 << 20
"""Reads smaller than this are copied, not mapped (a few chunks: the copy costs less than the areas)."""


def _max_map_count() -> int:
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65530


MAX_MAPPED = _max_map_count() // 4
"""At most this many chunks mapped at once in this process (the rest of a read is copied)."""
_MAP_FIXED = getattr(mmap, "MAP_FIXED", 0x10)  # 0x10 on every Linux architecture
_live = 0
_lock = threading.RLock()  # reentrant: a release may run from a collection inside a locked section
_libc_mmap: Any = None


def new_array(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """``np.empty(shape, dtype)``; from :data:`HUGE_ARRAY_BYTES` on backed by its own huge-page anonymous
    mapping, released when the array is. Contents undefined (zero in practice)."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if n < HUGE_ARRAY_BYTES or advice is None:
        return np.empty(shape, dt)
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        m.madvise(advice)
    except OSError:  # a kernel without transparent huge pages: ordinary pages
        pass
    return np.frombuffer(m, dtype=dt).reshape(shape)


def _mmap_fn():
    """libc's mmap (Linux only: MAP_FIXED over part of a mapping is what Mapping relies on), or None."""
    global _libc_mmap
    if _libc_mmap is None:
        _libc_mmap = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                fn = ctypes.CDLL(None, use_errno=True).mmap
                fn.restype = ctypes.c_void_p
                fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                               ctypes.c_int64]
                _libc_mmap = fn
            except (OSError, AttributeError):
                pass
    return _libc_mmap or None


def can_map() -> bool:
    return _mmap_fn() is not None


def mapped_now() -> int:
    """Chunks mapped by arrays still alive in this process."""
    return _live


def _release(count: list[int]) -> None:
    global _live
    with _lock:
        _live -= count[0]


class Mapping:
    """``nbytes`` of private anonymous memory (zeros) into which :meth:`map` places file ranges; the
    array of :meth:`array` keeps it alive, and unmapping it (when the array goes) unmaps them all."""

    def __init__(self, nbytes: int):
        self._region = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.buf = np.frombuffer(self._region, dtype=np.uint8)
        self._base = self.buf.ctypes.data
        self._n = [0]
        weakref.finalize(self._region, _release, self._n)

    def map(self, at: int, fd: int, offset: int, nbytes: int) -> bool:
        """Map ``nbytes`` of file ``fd`` from ``offset`` at byte ``at`` of the region, copy-on-write.
        False, with nothing changed, when it cannot be (an offset or address off a page boundary, the
        process's mapping budget spent, the kernel refusing): the caller then reads the bytes in."""
        global _live
        fn = _mmap_fn()
        if fn is None or at % PAGE or offset % PAGE or at + nbytes > len(self.buf):
            return False
        with _lock:
            if _live >= MAX_MAPPED:
                return False
            _live += 1
            self._n[0] += 1
        addr = self._base + at
        got = fn(addr, nbytes, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | _MAP_FIXED, fd, offset)
        if got != addr:  # MAP_FAILED: the range is still the region's own zeros
            with _lock:
                _live -= 1
                self._n[0] -= 1
            return False
        return True

    def array(self, dtype: Any) -> np.ndarray:
        return self.buf.view(np.dtype(dtype))
