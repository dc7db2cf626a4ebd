"""Sharing a store: push it to any fsspec URL, pull it back (whole or in part), verify either end.

- ``push``: the store's files are uploaded and checksummed on the way (a file that changed or
  rotted since its commit stops the push), the upload is checked against the manifest's sizes,
  and only then is ``manifest.json`` written, last. A reader that finds no manifest finds no
  store, so a push killed at any moment leaves nothing that opens as a store; pushing again
  completes it.
- ``pull``: the manifest is untrusted input (``safety``): it is parsed strictly, every path it
  names must stay inside the store, the source must hold no file it does not name, every file is
  downloaded with a size cap and its sha256 checked before it is renamed into place, and the
  manifest is written last. ``tables=``/``layers=``/``hidden=False`` pull part of a store: only
  those Parquet files, only the Zarr chunks of those layers (plus the array metadata), and the
  pulled manifest records what was left out on purpose (``partial``), so ``verify`` tells a
  deliberate omission from a lost file and the reader refuses to answer from what is not there.
- ``verify_files``: the file-level half of ``kevo store verify`` for any store, local or remote.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import sys
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from kevo_store.errors import CorruptStoreError, KevoError, StoreError
from kevo_store.fs import write_atomic_local
from kevo_store.layerspec import parse_layer_list
from kevo_store.safety import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    ZARR_META,
    HashingSizeCap,
    UnsafeStoreError,
    check_format_version,
    check_listing,
    check_zarr_metadata,
    declared_files,
    local_listing,
    parse_manifest,
    safe_join,
)

BLOCK = 4 << 20
_CHUNK_LAYER = re.compile(r"^hidden/c/[0-9]+/([0-9]+)/[0-9]+$")


class ShareError(KevoError):
    """A push or pull could not be done as asked (destination not empty, unknown table, ...)."""


# ---------------------------------------------------------------------------------------------
# partial stores


def parse_layers(spec: str | Iterable[int] | None) -> list[int] | None:
    """``"20-32"``, ``"0,5,10-12"`` or a list of ints -> sorted layer numbers (None stays None)."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        return sorted({int(x) for x in spec})
    return parse_layer_list(spec, option="--layers", error=ShareError)


def table_files(manifest: Mapping) -> dict[str, list[str]]:
    """``{table name: [files]}`` for the tables and the derived tables of a manifest."""
    out: dict[str, list[str]] = {}
    for section in ("tables", "derived"):
        for name, t in (manifest.get(section) or {}).items():
            out[name] = list((t or {}).get("files", []))
    return out


def _chunk_layer_pos(rel: str) -> int | None:
    m = _CHUNK_LAYER.match(rel)
    return int(m.group(1)) if m else None


def omitted_files(manifest: Mapping, declared: Iterable[str]) -> set[str]:
    """The files a partial store leaves out on purpose (empty for a whole store)."""
    partial = manifest.get("partial")
    if not partial:
        return set()
    out: set[str] = set()
    tf = table_files(manifest)
    for name in partial.get("omitted_tables", []):
        out.update(tf.get(name, []))
    keep = partial.get("hidden_layers")  # None: all captured layers; []: no hidden states at all
    hidden = manifest.get("hidden") or {}
    if keep is not None and hidden:
        if not keep:
            out.update(r for r in declared if r.startswith("hidden/"))
        else:
            pos_keep = {hidden["layers"].index(x) for x in keep}
            out.update(r for r in declared if (p := _chunk_layer_pos(r)) is not None and p not in pos_keep)
    return out


def present_tables(manifest: Mapping) -> set[str]:
    """Tables whose files a store holds (all of them unless the store is a partial pull)."""
    omitted = set((manifest.get("partial") or {}).get("omitted_tables", []))
    return {name for name in table_files(manifest) if name not in omitted}


def hidden_layers_present(manifest: Mapping) -> list[int]:
    """Layers whose hidden states a store holds (the captured ones, or the pulled subset)."""
    hidden = manifest.get("hidden") or {}
    layers = list(hidden.get("layers", []))
    keep = (manifest.get("partial") or {}).get("hidden_layers")
    return layers if keep is None else [x for x in layers if x in set(keep)]


def partial_summary(partial: Mapping) -> str:
    """One line saying what a partial pull left out."""
    keep = partial.get("hidden_layers")
    hidden = ("all hidden layers" if keep is None else f"hidden layers {_ranges(sorted(keep))} only" if keep
              else "no hidden states")
    left = ", ".join(partial.get("omitted_tables") or []) or "none"
    return f"pulled from {partial.get('source', '?')}; tables left out: {left}; {hidden}"


def check_hidden_layers_present(manifest: Mapping, layers: Iterable[int] | None, where: str) -> None:
    """Refuse to read hidden states of layers a partial pull left out (Zarr would fill them with 0)."""
    partial = manifest.get("partial")
    if not partial or partial.get("hidden_layers") is None:
        return
    have = set(hidden_layers_present(manifest))
    if not have:
        raise StoreError(f"{where} is a partial pull without hidden states (pulled with --no-hidden)")
    want = list((manifest.get("hidden") or {}).get("layers", [])) if layers is None else [int(x) for x in layers]
    missing = [x for x in want if x not in have]
    if missing:
        raise StoreError(
            f"{where} is a partial pull holding hidden states for layers {sorted(have)} only; "
            f"layer(s) {missing} were left out (pull them with `kevo store pull … --layers`)"
        )


# ---------------------------------------------------------------------------------------------
# helpers


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not enabled or None,
                file=sys.stderr, leave=False)


def _copy_checked(read_open, write_open, rel: str, entry: Mapping, where: str, bar) -> None:
    """Stream ``rel`` from ``read_open()`` to ``write_open()``, checking size cap and sha256."""
    size = entry["size"] if entry["size"] is not None else MAX_MANIFEST_BYTES
    cap = HashingSizeCap(rel, size, where)
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


def _run_parallel(fn, items: list, jobs: int) -> None:
    if jobs <= 1:
        for it in items:
            fn(it)
        return
    with ThreadPoolExecutor(max_workers=jobs) as ex:
        for _ in ex.map(fn, items):
            pass


def _read_source_manifest(fs, root: str, where: str) -> tuple[dict, bytes]:
    """(manifest, the exact bytes it was parsed from), checked strictly."""
    from kevo_store.manifest import check_format

    p = f"{root}/{MANIFEST}"
    try:
        size = fs.size(p)
    except FileNotFoundError:
        raise StoreError(f"{where} is not a kevo store (no {MANIFEST})") from None
    if size > MAX_MANIFEST_BYTES:
        raise UnsafeStoreError(f"{where}: refused: {MANIFEST} is {size} bytes")
    raw = fs.cat_file(p)
    manifest = parse_manifest(raw, where)
    check_format_version(manifest, where)
    check_format(manifest, where)
    return manifest, raw


# ---------------------------------------------------------------------------------------------
# push


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
    from kevo_store.manifest import load_manifest
    from kevo_store.remote import filesystem

    if is_url(store):
        raise ShareError(f"push uploads a local store; {store} is a URL (pull it first, or copy with fsspec)")
    src = LocalFS(store)
    manifest = load_manifest(src)
    lock = StoreLock(src, purpose="push")
    lock.acquire()
    try:
        manifest = load_manifest(src)  # what the lock now protects
        manifest_bytes = src.read_bytes(MANIFEST)
        if manifest.get("partial"):
            raise ShareError(f"{src.root} is a partial pull; push the whole store from its origin instead")
        if manifest.get("state") == "open" and not force:
            raise ShareError(f"{src.root} is open (its writer was interrupted, or is still running): finish it with "
                             f"`kevo store compact {src.root}` (or re-run the ingest), or pass --force to push it as it is")
        declared = declared_files(manifest, src.read_bytes, src.root)
        missing = [rel for rel in declared if not src.exists(rel)]
        if missing:
            raise CorruptStoreError(f"{src.root}: {len(missing)} file(s) named by the manifest are missing, "
                                    f"e.g. {missing[0]!r}; run `kevo store verify {src.root}`")
        fs, root = filesystem(url)
        dest_manifest = f"{root}/{MANIFEST}"
        if hasattr(fs, "invalidate_cache"):
            fs.invalidate_cache()
        if fs.exists(dest_manifest) and not force and fs.cat_file(dest_manifest) == manifest_bytes and all(
                fs.exists(f"{root}/{rel}") and fs.size(f"{root}/{rel}") == e["size"]
                for rel, e in declared.items() if e.get("size") is not None):
            # a re-run of a push that finished (e.g. interrupted after its manifest went up)
            return PushResult(url=url, files=0, bytes=0, up_to_date=True)
        if fs.exists(dest_manifest):
            if not force:
                raise ShareError(f"{url} already holds a kevo store; use --force to replace it")
            fs.rm_file(dest_manifest)  # from here on the destination is "not a store" until we finish
        existing = _listing(fs, root)
        strangers = [rel for rel in existing if rel not in declared and not _store_layout(rel)]
        if strangers:
            raise ShareError(f"{url} is not empty and is not a kevo store (it holds {strangers[0]!r}); "
                             "push to an empty prefix")
        items = sorted(declared, key=lambda r: (r == ZARR_META, r))  # array metadata after its chunks
        sizes = {rel: (declared[rel]["size"] if declared[rel]["size"] is not None else src.size(rel))
                 for rel in items}
        # skip what an interrupted push already uploaded whole: same size, and (checked below) same bytes
        todo = [rel for rel in items if existing.get(rel) != sizes[rel] or declared[rel]["sha256"] is None]
        resumed = [rel for rel in items if rel not in set(todo)]
        total = sum(sizes[r] for r in todo)
        with _progress(total, f"push {Path(src.root).name}", progress) as bar:

            def up(rel: str) -> None:
                dst = f"{root}/{rel}"
                if _is_local_fs(fs):
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                elif not _object_store(fs):  # sftp, hdfs, ...: real directories
                    fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
                _copy_checked(lambda: src.open(rel, "rb"), lambda: fs.open(dst, "wb"), rel, declared[rel],
                              src.root, bar)

            _run_parallel(up, todo, jobs)
        if resumed:
            _check_remote_sums(fs, root, {r: declared[r] for r in resumed}, url, jobs)
        # the upload is complete and of the declared sizes before the manifest makes it a store
        if hasattr(fs, "invalidate_cache"):
            fs.invalidate_cache()
        now = _listing(fs, root)
        for rel in items:
            if now.get(rel) != sizes[rel]:
                raise ShareError(f"{url}: {rel!r} did not arrive whole ({now.get(rel)} of {sizes[rel]} bytes); "
                                 "push again")
        for rel in now:
            if rel not in declared and rel != MANIFEST:
                fs.rm_file(f"{root}/{rel}")  # leftovers of the store this push replaced
        _write_last(fs, root, manifest_bytes)
    finally:
        lock.release()
    return PushResult(url=url, files=len(items), bytes=sum(sizes.values()) + len(manifest_bytes))


def _is_local_fs(fs) -> bool:
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return proto in ("file", "local")


def _can_list(fs) -> bool:
    protos = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return not protos & {"http", "https"}


def _object_store(fs) -> bool:
    """Object stores have no directories to create (and creating one on S3 would create a bucket)."""
    protos = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return bool(protos & {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "memory", "r2"})


def _store_layout(rel: str) -> bool:
    """A path a store (or an interrupted push of one) may hold: leftovers a new push replaces."""
    return rel.startswith(("tables/", "hidden/", "derived/", f"{MANIFEST}.tmp-"))


def _listing(fs, root: str) -> dict[str, int]:
    try:
        found = fs.find(root, detail=True, withdirs=False)
    except FileNotFoundError:
        return {}
    prefix = root.rstrip("/") + "/"
    return {name[len(prefix):]: int(info.get("size") or 0) for name, info in found.items()
            if name.startswith(prefix) and info.get("type", "file") == "file"}


def _check_remote_sums(fs, root: str, entries: Mapping[str, Mapping], where: str, jobs: int) -> None:
    def check(rel: str) -> None:
        cap = HashingSizeCap(rel, entries[rel]["size"], where)
        with fs.open(f"{root}/{rel}", "rb") as f:
            while block := f.read(BLOCK):
                cap.update(block)
        cap.check(entries[rel]["sha256"])

    try:
        _run_parallel(check, sorted(entries), jobs)
    except UnsafeStoreError as e:
        raise ShareError(f"{e}; a stale object from an earlier push: push with --force") from None


def _write_last(fs, root: str, data: bytes) -> None:
    """Write the manifest as the push's final, single, atomic step."""
    dst = f"{root}/{MANIFEST}"
    if _is_local_fs(fs):
        write_atomic_local(dst, data)
    else:
        fs.pipe_file(dst, data)  # one PUT: an object store shows the whole object or none


# ---------------------------------------------------------------------------------------------
# pull


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
    from kevo_store.remote import filesystem

    where = str(url)
    fs, root = filesystem(os.fspath(url))
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()
    manifest, raw = _read_source_manifest(fs, root, where)
    if manifest.get("partial"):
        raise ShareError(f"{where} is itself a partial pull; pull from the whole store")

    def read_part(rel: str) -> bytes:
        p = f"{root}/{rel}"
        if not fs.exists(p):
            raise CorruptStoreError(f"{where}: the chunk index {rel!r} named by the manifest is missing, so its "
                                    "hidden chunks cannot be checked: the source is damaged (`kevo store verify` it)")
        if fs.size(p) > MAX_MANIFEST_BYTES:
            raise UnsafeStoreError(f"{where}: refused: {rel!r} is too large for an index part")
        return fs.cat_file(p)

    declared = declared_files(manifest, read_part, where)
    # links in a local source are refused outright; elsewhere, every object is listed (except over
    # HTTP, which cannot list: there only the named files are fetched, each size-capped and hashed)
    if _is_local_fs(fs):
        listing = local_listing(Path(root), where)
        listing.pop(".lock", None)  # a local store's writer lock (never pulled)
    elif _can_list(fs):
        listing = _listing(fs, root)
    else:
        listing = {rel: e["size"] if e["size"] is not None else 0 for rel, e in declared.items()}
    check_listing(declared, listing, where)
    sized = {k: v for k, v in declared.items() if v["size"] is not None}
    lost = [rel for rel in sized if rel not in listing]
    if manifest.get("hidden") and ZARR_META in declared and ZARR_META not in listing:
        lost.insert(0, ZARR_META)  # named by structure, not by size: a store without it fails verify
    if lost:
        raise CorruptStoreError(f"{where}: {len(lost)} file(s) named by the manifest are missing, e.g. {lost[0]!r}")

    # what to take
    tf = table_files(manifest)
    if tables is not None:
        tables = list(dict.fromkeys(tables))
        unknown = [t for t in tables if t not in tf]
        if unknown:
            raise ShareError(f"--tables: {unknown} not in {where} (it has: {', '.join(sorted(tf))})")
    keep_tables = set(tf) if tables is None else set(tables)
    omitted_tables = sorted(set(tf) - keep_tables)
    hsec = manifest.get("hidden") or {}
    want_layers = parse_layers(layers)
    if not hidden:
        keep_layers: list[int] | None = []
    elif want_layers is not None:
        if not hsec:
            raise ShareError(f"--layers: {where} holds no hidden states")
        captured = list(hsec.get("layers", []))
        bad = [x for x in want_layers if x not in captured]
        if bad:
            raise ShareError(f"--layers: layer(s) {bad} have no hidden states in {where} "
                             f"(captured: {_ranges(captured)})")
        keep_layers = want_layers
    else:
        keep_layers = None
    partial = bool(omitted_tables) or (keep_layers is not None and bool(hsec))
    new_manifest = dict(manifest)
    if partial:
        new_manifest["partial"] = {"source": where, "omitted_tables": omitted_tables,
                                   "hidden_layers": keep_layers if hsec else None}
    skip = omitted_files(new_manifest, declared)
    take = sorted((rel for rel in declared if rel not in skip and (rel in listing)),
                  key=lambda r: (r == ZARR_META, r))

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
            take_now = [rel for rel in take if not _already_pulled(dest / rel, declared[rel])]
        else:
            take_now = take
        _pull_files(fs, root, dest, take_now, declared, listing, where, jobs, progress)
        from kevo_store.manifest import dump_manifest

        # a whole pull keeps the exact bytes that were validated (not a second, later fetch)
        data = dump_manifest(new_manifest) if partial else raw
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


def _already_pulled(path: Path, entry: Mapping) -> bool:
    """A file of an interrupted pull that arrived whole (it was renamed into place after its checksum)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or (entry.get("size") is not None and st.st_size != entry["size"]):
        return False
    if not entry.get("sha256"):
        return False
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest() == entry["sha256"]


def _pull_files(fs, root: str, dest: Path, take: list[str], declared: Mapping, listing: Mapping, where: str,
                jobs: int, progress: bool) -> None:
    total = sum(listing.get(r, 0) for r in take)
    with _progress(total, f"pull {dest.name}", progress) as bar:

        def down(rel: str) -> None:
            target = safe_join(dest, rel, where)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".pulling")
            entry = declared[rel]
            try:
                _copy_checked(lambda: fs.open(f"{root}/{rel}", "rb"), lambda: open(tmp, "wb"), rel, entry, where,
                              bar)
                if rel == ZARR_META:
                    check_zarr_metadata(parse_manifest(tmp.read_bytes(), f"{where}/{rel}"), f"{where}/{rel}")
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            os.chmod(tmp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            os.replace(tmp, target)

        _run_parallel(down, take, jobs)


def push(store: str | os.PathLike, url: str, *, force: bool = False, jobs: int = 8,
         progress: bool = True) -> PushResult:
    """Upload a local store to ``url``, data first and ``manifest.json`` last (see ``_push``).

    Network, credential and permission failures become one RemoteStoreError naming ``url``.
    """
    from kevo_store.remote import remote_errors

    with remote_errors(url, not_found=True):
        return _push(store, url, force=force, jobs=jobs, progress=progress)


def pull(url: str, dest: str | os.PathLike, *, tables: Iterable[str] | None = None,
         layers: str | Iterable[int] | None = None, hidden: bool = True, jobs: int = 8,
         progress: bool = True) -> PullResult:
    """Download the store at ``url`` into the new directory ``dest``, whole or in part (see ``_pull``)."""
    from kevo_store.remote import remote_errors

    with remote_errors(os.fspath(url), not_found=True):
        return _pull(url, dest, tables=tables, layers=layers, hidden=hidden, jobs=jobs, progress=progress)


def verify_files(location: str | os.PathLike, *, jobs: int = 8) -> list[str]:
    """File-level check of any store, local or remote (see ``_verify_files``)."""
    from kevo_store.remote import remote_errors

    with remote_errors(os.fspath(location), not_found=True):
        return _verify_files(location, jobs=jobs)


def _ranges(xs: list[int]) -> str:
    if not xs:
        return "none"
    out, start, prev = [], xs[0], xs[0]
    for x in xs[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{start}-{prev}" if prev != start else f"{start}")
        if x is not None:
            start = prev = x
    return ",".join(out)


# ---------------------------------------------------------------------------------------------
# verify (file level)


def _verify_files(location: str | os.PathLike, *, jobs: int = 8) -> list[str]:
    """Check every file a store declares, local or remote; returns the problems found (empty: OK).

    Refused outright (raises): an unsafe manifest, a link, a file the manifest does not name, a
    file larger than declared. Reported: missing files (except those a partial pull left out on
    purpose), size and checksum mismatches, an invalid array metadata file.
    """
    from kevo_store.remote import filesystem

    where = os.fspath(location)
    fs, root = filesystem(where)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()
    manifest, raw = _read_source_manifest(fs, root, where)
    problems: list[str] = []

    def read_part(rel: str) -> bytes:
        return fs.cat_file(f"{root}/{rel}")

    try:
        declared = declared_files(manifest, read_part, where)
    except FileNotFoundError as e:
        return [f"a hidden chunk index part is missing ({e})"]
    except UnsafeStoreError as e:
        return [str(e)]
    if _is_local_fs(fs):
        listing = local_listing(Path(root), where)
    elif _can_list(fs):
        listing = _listing(fs, root)
    else:  # HTTP cannot list: take each named file's size from the server
        listing = {}
        for rel in declared:
            try:
                listing[rel] = int(fs.size(f"{root}/{rel}"))
            except FileNotFoundError:
                pass
    sized = {k: v for k, v in declared.items() if v["size"] is not None}
    from kevo_store.lock import LOCK

    extra = [r for r in listing if r not in declared and r not in (MANIFEST, LOCK)]
    if extra:
        problems.append(f"{len(extra)} file(s) the manifest does not name, e.g. {extra[0]!r}")
    skip = omitted_files(manifest, declared)
    for rel in sorted(sized):
        if rel not in listing and rel not in skip:
            problems.append(f"{rel}: missing")
        elif rel in listing and listing[rel] != sized[rel]["size"]:
            problems.append(f"{rel}: {listing[rel]} bytes, the manifest declares {sized[rel]['size']}")
    if ZARR_META in declared and ZARR_META in listing:
        try:
            check_zarr_metadata(parse_manifest(fs.cat_file(f"{root}/{ZARR_META}"), where), f"{where}/{ZARR_META}")
        except UnsafeStoreError as e:
            problems.append(str(e))
    to_hash = [rel for rel in sorted(sized) if rel in listing and listing[rel] == sized[rel]["size"]]

    def check(rel: str) -> str | None:
        cap = HashingSizeCap(rel, sized[rel]["size"], where)
        try:
            with fs.open(f"{root}/{rel}", "rb") as f:
                while block := f.read(BLOCK):
                    cap.update(block)
            cap.check(sized[rel]["sha256"])
        except UnsafeStoreError:
            return f"{rel}: checksum mismatch (sha256 {cap.h.hexdigest()[:12]}…, manifest {sized[rel]['sha256'][:12]}…)"
        return None

    if jobs > 1:
        with ThreadPoolExecutor(max_workers=jobs) as ex:
            problems.extend(p for p in ex.map(check, to_hash) if p)
    else:
        problems.extend(p for p in map(check, to_hash) if p)
    return problems


def verify_partial(fs, manifest: Mapping, *, checksums: bool = True):
    """``kevo store verify`` of a partial pull: what it kept must be whole; what it left out is noted.

    Every kept file (Parquet, index parts, the chunks of the kept layers) is checked for presence,
    size and sha256, every kept table's Parquet footers against its row count, and the array
    metadata; files of left-out tables and layers are reported as notes, not problems.
    """
    import pyarrow.parquet as pq

    from kevo_store.verify import VerifyReport

    rep = VerifyReport(fs.root)
    no_hidden = (manifest["partial"].get("hidden_layers") == [])
    # without hidden states the chunk index parts were not pulled: do not follow them
    declared = declared_files({**manifest, "hidden": None} if no_hidden else manifest, fs.read_bytes, fs.root)
    skip = omitted_files(manifest, declared)
    partial = manifest["partial"]
    rep.notes.append(f"partial pull: {partial_summary(partial)} ({len(skip)} file(s) left out on purpose)")
    for rel in sorted(declared):
        entry = declared[rel]
        if rel in skip:
            continue
        if not fs.exists(rel):
            rep.problems.append(f"{rel}: missing (named by the manifest, not left out by the partial pull)")
            continue
        if entry["size"] is None:
            if rel == ZARR_META:
                try:
                    check_zarr_metadata(parse_manifest(fs.read_bytes(rel), rel), rel)
                except UnsafeStoreError as e:
                    rep.problems.append(str(e))
            continue
        size = fs.size(rel)
        if size != entry["size"]:
            rep.problems.append(f"{rel}: size {size} bytes, manifest says {entry['size']}")
            continue
        if checksums:
            sha, _ = fs.sha256(rel)
            if sha != entry["sha256"]:
                rep.problems.append(f"{rel}: sha256 mismatch (corrupted): {sha[:16]}... != {entry['sha256'][:16]}...")
                continue
        rep.checked_files += 1
        rep.checked_bytes += size
    tf = table_files(manifest)
    for name in sorted(present_tables(manifest)):
        rows = (manifest.get("tables", {}).get(name) or manifest.get("derived", {}).get(name) or {}).get("rows")
        total = 0
        try:
            for rel in tf[name]:
                with fs.open(rel, "rb") as f:
                    total += pq.ParquetFile(f).metadata.num_rows
        except Exception as e:  # noqa: BLE001 - any footer failure is corruption
            rep.problems.append(f"table '{name}': unreadable Parquet ({type(e).__name__}: {e})")
            continue
        if rows is not None and total != rows:
            rep.problems.append(f"table '{name}': {total} rows in its files, manifest says {rows}")
    return rep
