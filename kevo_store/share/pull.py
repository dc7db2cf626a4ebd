"""``pull``: download a store from any fsspec URL (or path), whole or in part, every file checksummed.

The manifest is untrusted input (``safety``): it is parsed strictly, every path it names must
stay inside the store, the source must hold no file it does not name, every file is downloaded
with a size cap and its sha256 checked before it is renamed into place, and the manifest is
written last. ``tables=``/``layers=``/``hidden=False`` pull part of a store: only those Parquet
files, only the Zarr chunks of those layers (plus the array metadata), and the pulled manifest
records what was left out on purpose (``partial``), so ``verify`` tells a deliberate omission
from a lost file and the reader refuses to answer from what is not there.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kevo_store.errors import CorruptStoreError, StoreError
from kevo_store.fs import LocalFS
from kevo_store.layerspec import parse_layers
from kevo_store.manifest import Manifest, layer_ranges
from kevo_store.shards import file_ok
from kevo_store.share.safety import (
    MANIFEST,
    check_listing,
    check_zarr_metadata,
    is_zarr_meta,
    parse_manifest,
    safe_join,
    zarr_metas,
)
from kevo_store.share.transfer import (
    ShareError,
    copy_checked,
    progress_bar,
    run_parallel,
)


@dataclass
class PullResult:
    path: Path
    files: int
    bytes: int
    partial: bool
    omitted_tables: list[str] = field(default_factory=list)
    hidden_layers: list[int] | None = None
    up_to_date: bool = False  # DIR already held exactly this store


def _pull(url: str, dest: str | os.PathLike, *, tables: Iterable[str] | None = None,
         layers: str | Iterable[int] | None = None, hidden: bool = True, jobs: int = 8,
         progress: bool = True) -> PullResult:
    """Download the store at ``url`` into the new directory ``dest``, every file checksummed.

    ``tables``: only these tables (and derived tables) arrive; ``layers``: only the hidden states
    of these layers (a range string like ``"20-32"`` or a list); ``hidden=False``: no hidden states.
    The result is read-only (files mode 0444) and records in its manifest what it left out.
    """
    from kevo_store.share.remote import RemoteFS

    where = str(url)
    # every source, a local path too, is read as untrusted input: only what its manifest names
    src = RemoteFS(os.fspath(url))
    try:
        manifest, raw = src.manifest()
    except FileNotFoundError:
        raise StoreError(f"{where} is not a kevo store (no {MANIFEST})") from None
    if manifest.partial:
        raise ShareError(f"{where} is itself a partial pull; pull from the whole store")
    for rel in (manifest.get("hidden") or {}).get("index") or []:
        if isinstance(rel, str) and rel in manifest.get("files", {}) and not src.exists(rel):
            raise CorruptStoreError(f"{where}: the chunk index {rel!r} named by the manifest is missing, so its "
                                    "hidden chunks cannot be checked: the source is damaged (`kevo store verify` it)")
    declared = src.declared()
    # every file is listed (links in a local source are refused outright; HTTP cannot list: there
    # only the named files are fetched, each size-capped and hashed)
    listing = src.listing()
    check_listing(declared, listing, where)
    sized = {k: v for k, v in declared.items() if v["size"] is not None}
    lost = [rel for rel in sized if rel not in listing]
    for rel in zarr_metas(manifest.get("hidden")):  # named by structure, not by size: needed all the same
        if rel in declared and rel not in listing:
            lost.insert(0, rel)
    if lost:
        raise CorruptStoreError(f"{where}: {len(lost)} file(s) named by the manifest are missing, e.g. {lost[0]!r}")

    # what to take
    tf = manifest.table_files()
    if tables is not None:
        tables = list(dict.fromkeys(tables))
        unknown = [t for t in tables if t not in tf]
        if unknown:
            raise ShareError(f"--tables: {unknown} not in {where} (it has: {', '.join(sorted(tf))})")
    keep_tables = set(tf) if tables is None else set(tables)
    omitted_tables = sorted(set(tf) - keep_tables)
    hsec = manifest.get("hidden") or {}
    want_layers = parse_layers(layers, option="--layers", error=ShareError)
    if not hidden:
        keep_layers: list[int] | None = []
    elif want_layers is not None:
        if not hsec:
            raise ShareError(f"--layers: {where} holds no hidden states")
        captured = list(hsec.get("layers", []))
        bad = [x for x in want_layers if x not in captured]
        if bad:
            raise ShareError(f"--layers: layer(s) {bad} have no hidden states in {where} "
                             f"(captured: {layer_ranges(captured)})")
        keep_layers = want_layers
    else:
        keep_layers = None
    partial = bool(omitted_tables) or (keep_layers is not None and bool(hsec))
    new_manifest = Manifest(manifest)
    if partial:
        new_manifest["partial"] = {"source": where, "omitted_tables": omitted_tables,
                                   "hidden_layers": keep_layers if hsec else None}
    skip = new_manifest.omitted_files(declared)
    take = sorted((rel for rel in declared if rel not in skip and (rel in listing)),
                  key=lambda r: (is_zarr_meta(r), r))

    # where to put it
    dest = Path(dest)
    marker = dest / PULL_MARKER
    resume = _resumable_pull(dest, marker, where)
    if not resume and not partial and _same_store(dest, raw, take, declared):
        return PullResult(path=dest, files=0, bytes=0, partial=False, omitted_tables=[], hidden_layers=None,
                          up_to_date=True)
    if dest.exists() and not resume and (not dest.is_dir() or any(dest.iterdir())):
        raise ShareError(f"{dest} already exists and is not an empty directory; pull into a new one")
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    if not resume:
        marker.write_text(json.dumps({"source": where}) + "\n")
    try:
        if resume:  # an interrupted pull of the same store: keep the files that arrived whole
            for left in dest.rglob("*.pulling"):  # a download the interruption cut short
                left.unlink(missing_ok=True)
            take_now = [rel for rel in take if not _already_pulled(dest, rel, declared[rel])]
        else:
            take_now = take
        _pull_files(src, dest, take_now, declared, listing, where, jobs, progress)
        # a whole pull keeps the exact bytes that were validated (not a second, later fetch)
        data = new_manifest.dump() if partial else raw
        tmp = dest / (MANIFEST + ".pulling")
        tmp.write_bytes(data)
        os.chmod(tmp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.replace(tmp, dest / MANIFEST)  # last: until now DIR is not a store
        marker.unlink(missing_ok=True)
    except BaseException:
        # leave no half-pulled directory behind (it was new or empty)
        import shutil

        if resume:
            raise  # what arrived whole stays for the next try
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for child in dest.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        raise
    total = sum(listing.get(r, 0) for r in take)
    return PullResult(path=dest, files=len(take), bytes=total + len(data), partial=partial,
                      omitted_tables=omitted_tables, hidden_layers=keep_layers)


PULL_MARKER = ".kevo-pull"  # present while a pull is under way: {"source": URL}


def _resumable_pull(dest: Path, marker: Path, where: str) -> bool:
    """An interrupted pull of ``where`` into ``dest``: a marker naming the same source (the manifest may be
    in place already if the interruption came between it and the marker's removal)."""
    if not dest.is_dir() or not marker.is_file() or marker.is_symlink():
        return False
    try:
        return json.loads(marker.read_text()).get("source") == where
    except (ValueError, OSError):
        return False


def _same_store(dest: Path, raw: bytes, take: list[str], declared: Mapping) -> bool:
    """``dest`` already holds this whole store (a re-run of a pull that finished): same manifest bytes,
    every file present at its declared size (``verify`` checks the bytes)."""
    try:
        if (dest / MANIFEST).read_bytes() != raw:
            return False
    except OSError:
        return False
    for rel in take:
        try:
            st = os.lstat(dest / rel)
        except OSError:
            return False
        size = declared[rel].get("size")
        if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size):
            return False
    return True


def _already_pulled(dest: Path, rel: str, entry: Mapping) -> bool:
    """A file of an interrupted pull that arrived whole (it was renamed into place after its checksum)."""
    try:
        st = os.lstat(dest / rel)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or (entry.get("size") is not None and st.st_size != entry["size"]):
        return False
    return bool(entry.get("sha256")) and file_ok(LocalFS(dest), rel, entry["sha256"]) is None


def _pull_files(src, dest: Path, take: list[str], declared: Mapping, listing: Mapping, where: str,
                jobs: int, progress: bool) -> None:
    total = sum(listing.get(r, 0) for r in take)
    with progress_bar(total, f"pull {dest.name}", progress) as bar:

        def down(rel: str) -> None:
            target = safe_join(dest, rel, where)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".pulling")
            entry = declared[rel]
            try:
                copy_checked(lambda: src.open(rel, "rb"), lambda: open(tmp, "wb"), rel, entry, where, bar)
                if is_zarr_meta(rel):
                    check_zarr_metadata(parse_manifest(tmp.read_bytes(), f"{where}/{rel}"), f"{where}/{rel}")
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            os.chmod(tmp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            os.replace(tmp, target)

        run_parallel(down, take, jobs)


def pull(url: str, dest: str | os.PathLike, *, tables: Iterable[str] | None = None,
         layers: str | Iterable[int] | None = None, hidden: bool = True, jobs: int = 8,
         progress: bool = True) -> PullResult:
    """Download the store at ``url`` into the new directory ``dest``, whole or in part (see ``_pull``)."""
    from kevo_store.share.remote import remote_errors

    with remote_errors(os.fspath(url), not_found=True):
        return _pull(url, dest, tables=tables, layers=layers, hidden=hidden, jobs=jobs, progress=progress)
