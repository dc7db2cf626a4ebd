"""What push and pull share: the error, progress bars, checked copies, parallel transfers, listings."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from kevo_store.errors import KevoError, StoreError
from kevo_store.manifest import Manifest
from kevo_store.share.safety import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    HashingSizeCap,
    UnsafeStoreError,
)

BLOCK = 4 << 20


class ShareError(KevoError):
    """A push or pull could not be done as asked (destination not empty, unknown table, ...)."""


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not enabled or None,
                file=sys.stderr, leave=False)


def copy_checked(read_open, write_open, rel: str, entry: Mapping, where: str, bar) -> None:
    """Stream ``rel`` from ``read_open()`` to ``write_open()``, checking size cap and checksum (sha256, or a
    hidden shard's tree digest)."""
    size = entry["size"] if entry["size"] is not None else MAX_MANIFEST_BYTES
    cap = HashingSizeCap(rel, size, where, entry["sha256"])
    with read_open() as fi, write_open() as fo:
        while True:
            block = fi.read(BLOCK)
            if not block:
                break
            cap.update(block)
            fo.write(block)
            if bar is not None:
                bar.update(len(block))
    if entry["sha256"] is not None:
        cap.check(entry["sha256"])


def run_parallel(fn, items: list, jobs: int) -> None:
    if jobs <= 1:
        for it in items:
            fn(it)
        return
    with ThreadPoolExecutor(max_workers=jobs) as ex:
        for _ in ex.map(fn, items):
            pass


def read_source_manifest(fs, root: str, where: str) -> tuple[dict, bytes]:
    """(manifest, the exact bytes it was parsed from), checked strictly."""

    p = f"{root}/{MANIFEST}"
    try:
        size = fs.size(p)
    except FileNotFoundError:
        raise StoreError(f"{where} is not a kevo store (no {MANIFEST})") from None
    if size > MAX_MANIFEST_BYTES:
        raise UnsafeStoreError(f"{where}: refused: {MANIFEST} is {size} bytes")
    raw = fs.cat_file(p)
    return Manifest.parse(raw, where), raw


def store_layout(rel: str) -> bool:
    """A path a store (or an interrupted push of one) may hold: leftovers a new push replaces."""
    return rel.startswith(("tables/", "hidden/", "derived/", f"{MANIFEST}.tmp-"))
