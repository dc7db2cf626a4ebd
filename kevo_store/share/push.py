"""``push``: upload a local store to any fsspec URL, data first and ``manifest.json`` last.

The store's files are uploaded and checksummed on the way (a file that changed or rotted since
its commit stops the push), the upload is checked against the manifest's sizes, and only then is
``manifest.json`` written, last. A reader that finds no manifest finds no store, so a push killed
at any moment leaves nothing that opens as a store; pushing again completes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kevo_store.errors import CorruptStoreError
from kevo_store.manifest import Manifest
from kevo_store.share.safety import (
    MANIFEST,
    HashingSizeCap,
    UnsafeStoreError,
    declared_files,
    is_zarr_meta,
)
from kevo_store.share.transfer import (
    BLOCK,
    ShareError,
    copy_checked,
    progress_bar,
    run_parallel,
    store_layout,
)


@dataclass
class PushResult:
    url: str
    files: int
    bytes: int
    up_to_date: bool = False  # the destination already held exactly this store


def _push(store: str | os.PathLike, url: str, *, force: bool = False, jobs: int = 8,
         progress: bool = True) -> PushResult:
    """Upload a local store to ``url`` (any fsspec URL), data first and ``manifest.json`` last.

    Refuses a destination that already holds a store (unless ``force``: its manifest is removed
    first, so readers see no store rather than a mixture), and a non-empty destination that is not
    a store or the remains of an interrupted push. Holds the store's lock meanwhile, so no writer
    changes it under the upload.
    """
    from kevo_store.fs import LocalFS, is_url
    from kevo_store.lock import StoreLock
    from kevo_store.share.remote import TargetFS

    if is_url(store):
        raise ShareError(f"push uploads a local store; {store} is a URL (pull it first, or copy with fsspec)")
    src = LocalFS(store)
    manifest = Manifest.load(src)
    lock = StoreLock(src, purpose="push")
    lock.acquire()
    try:
        manifest = Manifest.load(src)  # what the lock now protects
        manifest_bytes = src.read_bytes(MANIFEST)
        if manifest.get("partial"):
            raise ShareError(f"{src.root} is a partial pull; push the whole store from its origin instead")
        if manifest.get("state") == "open" and not force:
            raise ShareError(f"{src.root} is open (its writer was interrupted, or is still running): finish it with "
                             f"`kevo store compact {src.root}` (or re-run the ingest), "
                             "or pass --force to push it as it is")
        declared = declared_files(manifest, src.read_bytes, src.root)
        missing = [rel for rel in declared if not src.exists(rel)]
        if missing:
            raise CorruptStoreError(f"{src.root}: {len(missing)} file(s) named by the manifest are missing, "
                                    f"e.g. {missing[0]!r}; run `kevo store verify {src.root}`")
        dst = TargetFS(url)
        dst.invalidate()
        if dst.exists(MANIFEST) and not force and dst.read_bytes(MANIFEST) == manifest_bytes and all(
                dst.exists(rel) and dst.size(rel) == e["size"]
                for rel, e in declared.items() if e.get("size") is not None):
            # a re-run of a push that finished (e.g. interrupted after its manifest went up)
            return PushResult(url=url, files=0, bytes=0, up_to_date=True)
        if dst.exists(MANIFEST):
            if not force:
                raise ShareError(f"{url} already holds a kevo store; use --force to replace it")
            dst.remove(MANIFEST)  # from here on the destination is "not a store" until we finish
        existing = dst.listing()
        strangers = [rel for rel in existing if rel not in declared and not store_layout(rel)]
        if strangers:
            raise ShareError(f"{url} is not empty and is not a kevo store (it holds {strangers[0]!r}); "
                             "push to an empty prefix")
        items = sorted(declared, key=lambda r: (is_zarr_meta(r), r))  # array metadata after its chunks
        sizes = {rel: (declared[rel]["size"] if declared[rel]["size"] is not None else src.size(rel))
                 for rel in items}
        # skip what an interrupted push already uploaded whole: same size, and (checked below) same bytes
        todo = [rel for rel in items if existing.get(rel) != sizes[rel] or declared[rel]["sha256"] is None]
        resumed = [rel for rel in items if rel not in set(todo)]
        if resumed:  # same size is not same bytes (uncompressed shards of one shape all have one size)
            stale = _stale_remote(dst, {r: declared[r] for r in resumed}, jobs)
            if stale and not force:
                raise ShareError(f"{url}: {stale[0]!r} fails its checksum: a stale object from an earlier push: "
                                 "push with --force")
            todo += stale
        total = sum(sizes[r] for r in todo)
        with progress_bar(total, f"push {Path(src.root).name}", progress) as bar:

            def up(rel: str) -> None:
                copy_checked(lambda: src.open(rel, "rb"), lambda: dst.open(rel, "wb"), rel, declared[rel],
                             src.root, bar)

            run_parallel(up, todo, jobs)
        # the upload is complete and of the declared sizes before the manifest makes it a store
        dst.invalidate()
        now = dst.listing()
        for rel in items:
            if now.get(rel) != sizes[rel]:
                raise ShareError(f"{url}: {rel!r} did not arrive whole ({now.get(rel)} of {sizes[rel]} bytes); "
                                 "push again")
        for rel in now:
            if rel not in declared and rel != MANIFEST:
                dst.remove(rel)  # leftovers of the store this push replaced
        dst.write_last(MANIFEST, manifest_bytes)  # the push's final, single, atomic step
    finally:
        lock.release()
    return PushResult(url=url, files=len(items), bytes=sum(sizes.values()) + len(manifest_bytes))


def _stale_remote(dst, entries: Mapping[str, Mapping], jobs: int) -> list[str]:
    """The objects among ``entries`` whose bytes are not the declared ones (sorted)."""
    bad: list[str] = []

    def check(rel: str) -> None:
        cap = HashingSizeCap(rel, entries[rel]["size"], "", entries[rel]["sha256"])
        try:
            with dst.open(rel, "rb") as f:
                while block := f.read(BLOCK):
                    cap.update(block)
            cap.check(entries[rel]["sha256"])
        except UnsafeStoreError:
            bad.append(rel)

    run_parallel(check, sorted(entries), jobs)
    return sorted(bad)


def push(store: str | os.PathLike, url: str, *, force: bool = False, jobs: int = 8,
         progress: bool = True) -> PushResult:
    """Upload a local store to ``url``, data first and ``manifest.json`` last (see ``_push``).

    Network, credential and permission failures become one RemoteStoreError naming ``url``.
    """
    from kevo_store.share.remote import remote_errors

    with remote_errors(url, not_found=True):
        return _push(store, url, force=force, jobs=jobs, progress=progress)


