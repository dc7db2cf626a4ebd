"""A store from someone else is untrusted input: the checks that make reading one safe.

Everything here assumes the worst of a manifest: that it names paths outside the store
(absolute, ``..``, links), hides extra files beside the ones it names, understates a file's
size, claims a format from the future, or is simply malformed. Each check raises
:class:`UnsafeStoreError` with one message naming the store and the offending entry.

Nothing in kevo ever unpickles: Parquet is read by DuckDB/Arrow, the hidden array by Zarr
(no object dtype is accepted), and the manifest is plain JSON parsed with duplicate keys refused
(a duplicate key is a classic way to show one reader one thing and another reader another).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from kevo_store.errors import KevoError

MANIFEST = "manifest.json"
# A manifest names every file of the store with its size and sha256, so it grows with the number
# of Zarr chunks; AMBER scale is a few MB. Anything past this is not a manifest.
MAX_MANIFEST_BYTES = 256 * 1024 * 1024
MAX_PATH_CHARS = 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# a chunk-index entry: a sha256, or a hidden shard's tree digest over its crc32c (kevo_store.shards)
_CHUNK_DIGEST = re.compile(r"^([0-9a-f]{64}|c32t:[0-9]{1,6}:[0-9a-f]{64})$")
# a tree-digested shard is buffered whole to be checked: a shard larger than this is refused
MAX_SHARD_BYTES = 1 << 30
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeStoreError(KevoError):
    """A store (usually someone else's) failed a safety check; nothing was read past it."""


def _refuse(where: str, message: str) -> UnsafeStoreError:
    return UnsafeStoreError(f"{where}: refused: {message}")


# ---------------------------------------------------------------------------------------------
# manifest text -> dict


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _no_constants(name: str) -> float:
    raise ValueError(f"non-standard JSON constant {name}")


def parse_manifest(data: bytes, where: str) -> dict:
    """Parse manifest bytes strictly: size-capped UTF-8 JSON object, no duplicate keys, no NaN."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise _refuse(where, f"{MANIFEST} is {len(data)} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may be")
    try:
        manifest = json.loads(
            data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        raise _refuse(where, f"{MANIFEST} is not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(manifest, dict):
        raise _refuse(where, f"{MANIFEST} is not a JSON object")
    return manifest


# ---------------------------------------------------------------------------------------------
# the manifest's content


def check_relpath(rel: object, where: str) -> str:
    """A path named by a manifest, refused unless it is a plain relative path inside the store.

    Refused: non-strings, empty, absolute (``/x``, ``C:x``, ``~``), backslashes, ``.``/``..``/empty
    components, control characters, overlong paths, and the manifest's own name.
    """
    if not isinstance(rel, str) or not rel:
        raise _refuse(where, f"the manifest names a file with an invalid path {rel!r}")
    if len(rel) > MAX_PATH_CHARS:
        raise _refuse(where, f"the manifest names a path longer than {MAX_PATH_CHARS} characters: {rel[:80]!r}...")
    if any(ord(c) < 32 or c == "\x7f" for c in rel):
        raise _refuse(where, f"the manifest names a path with control characters: {rel!r}")
    if "\\" in rel:
        raise _refuse(where, f"the manifest names a path with a backslash (escapes the store on Windows): {rel!r}")
    if rel.startswith(("/", "~")) or _DRIVE.match(rel):
        raise _refuse(where, f"the manifest names an absolute path, outside the store: {rel!r}")
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise _refuse(where, f"the manifest names a path that escapes the store or is not normal: {rel!r}")
    if rel == MANIFEST:
        raise _refuse(where, f"the manifest names itself as a data file: {rel!r}")
    return rel


def check_file_entries(files: Mapping[str, Mapping], where: str) -> dict[str, dict]:
    """Validate every file entry (path, size, sha256); returns {path: entry}.

    Also refuses two paths that differ only in case: on a case-insensitive disk (macOS, Windows)
    pulling both would let one silently overwrite the other.
    """
    if not isinstance(files, Mapping):
        raise _refuse(where, f"the manifest's file list is not a mapping of path -> entry ({type(files).__name__})")
    seen_folded: dict[str, str] = {}
    out: dict[str, dict] = {}
    for rel, entry in files.items():
        check_relpath(rel, where)
        if not isinstance(entry, Mapping):
            raise _refuse(where, f"the manifest entry for {rel!r} is not an object")
        size = entry.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _refuse(where, f"the manifest entry for {rel!r} has an invalid size {size!r}")
        sha = entry.get("sha256")
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise _refuse(where, f"the manifest entry for {rel!r} has an invalid sha256 {sha!r}")
        folded = rel.casefold()
        if folded in seen_folded:
            raise _refuse(where, f"the manifest names {seen_folded[folded]!r} and {rel!r}, which differ only in case")
        seen_folded[folded] = rel
        out[rel] = dict(entry)
    return out


# ---------------------------------------------------------------------------------------------
# what is actually there


def check_listing(
    declared: Mapping[str, Mapping],
    actual: Mapping[str, int],
    where: str,
    *,
    allowed_extra: Iterable[str] = (),
    omitted: Iterable[str] = (),
) -> list[str]:
    """Compare the files actually present (``{relpath: size}``) with the manifest's entries.

    Refused: a file the manifest does not name (unless in ``allowed_extra``, e.g. the manifest
    itself), and a file larger than declared. Returns the named files that are missing and not
    ``omitted`` on purpose (by a partial pull), for the caller to report.
    """
    allowed = set(allowed_extra) | {MANIFEST}
    for rel, size in actual.items():
        if rel in allowed:
            continue
        if rel not in declared:
            raise _refuse(where, f"{rel!r} is in the store but the manifest does not name it")
        limit = declared[rel].get("size")
        if limit is not None and size > limit:
            raise _refuse(where, f"{rel!r} is {size} bytes, larger than the {limit} the manifest declares")
    skip = set(omitted)
    return sorted(rel for rel in declared if rel not in actual and rel not in skip)


def local_listing(root: Path, where: str) -> dict[str, int]:
    """Every regular file under a local store as ``{relpath: size}``; refuses links and devices.

    Uses ``lstat`` and never follows a symbolic link, so a link planted in a store (pointing at
    ``~/.ssh`` or ``/etc``) is refused instead of read.
    """
    out: dict[str, int] = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = p.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                raise _refuse(where, f"{rel!r} is a symbolic link; a store holds only regular files")
            if name in dirnames:
                continue
            if not stat.S_ISREG(st.st_mode):
                raise _refuse(where, f"{rel!r} is not a regular file")
            out[rel] = st.st_size
    return out


def safe_join(root: Path, rel: str, where: str) -> Path:
    """``root / rel`` after ``check_relpath``, and proven (realpath) to stay inside root."""
    check_relpath(rel, where)
    root_real = Path(os.path.realpath(root))
    target = Path(os.path.realpath(root_real / PurePosixPath(rel)))
    if target != root_real and root_real not in target.parents:
        raise _refuse(where, f"{rel!r} resolves outside the store (through a link?)")
    return target


class HashingSizeCap:
    """Streams bytes into a sha256 while refusing to accept more than the declared size.

    Used while downloading: an entry larger than declared is refused as soon as the extra byte
    arrives, so a hostile store cannot fill a disk through an understated size. ``digest``: the
    expected digest, when it is a hidden shard's tree digest (``kevo_store.shards.check_shard``), whose
    check needs the whole shard: its bytes are kept (at most ``MAX_SHARD_BYTES``) instead of hashed.
    """

    def __init__(self, rel: str, declared_size: int, where: str, digest: str | None = None):
        from kevo_store.shards import is_tree

        self.rel, self.declared, self.where = rel, declared_size, where
        self.n = 0
        self.h = hashlib.sha256()
        self.kept: bytearray | None = bytearray() if digest is not None and is_tree(digest) else None
        if self.kept is not None and declared_size > MAX_SHARD_BYTES:
            raise _refuse(where, f"{rel!r} declares {declared_size} bytes, more than a hidden shard may hold")

    def update(self, chunk: bytes) -> None:
        self.n += len(chunk)
        if self.n > self.declared:
            raise _refuse(self.where, f"{self.rel!r} is larger than the {self.declared} bytes the manifest declares")
        if self.kept is None:
            self.h.update(chunk)
        else:
            self.kept += chunk

    def check(self, expected: str) -> None:
        from kevo_store.shards import check_shard

        if self.n != self.declared:
            raise _refuse(self.where, f"{self.rel!r} is {self.n} bytes, the manifest declares {self.declared}")
        if self.kept is not None:
            problem = check_shard(self.kept, expected)
            if problem:
                raise _refuse(self.where, f"{self.rel!r} fails its checksum ({problem})")
            return
        got = self.h.hexdigest()
        if got != expected:
            raise _refuse(self.where,
                          f"{self.rel!r} fails its checksum (sha256 {got[:12]}…, manifest {expected[:12]}…)")


# ---------------------------------------------------------------------------------------------
# the hidden array's metadata (checked before Zarr parses it)

# Plain numeric types only: no object, string or structured dtypes, so nothing can decode into
# Python objects. Codecs: the standard Zarr v3 set; anything else (a pickle codec) is refused.
ZARR_DATA_TYPES = {"float16", "float32", "float64", "uint8", "uint16", "uint32", "int8", "int16", "int32", "int64",
                   "bfloat16"}
ZARR_CODECS = {"bytes", "transpose", "zstd", "blosc", "gzip", "crc32c", "sharding_indexed"}


def check_zarr_metadata(meta: Mapping, where: str) -> None:
    """Refuse a Zarr array whose metadata could decode to anything but plain numbers (the format v2
    group's own metadata, which decodes to nothing, passes)."""
    if meta.get("zarr_format") == 3 and meta.get("node_type") == "group":
        return
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        raise _refuse(where, "not a Zarr v3 array")
    dtype = meta.get("data_type")
    if not isinstance(dtype, str) or dtype not in ZARR_DATA_TYPES:
        raise _refuse(where, f"the hidden array's data type {dtype!r} is not a plain numeric type")

    def walk(codecs: object) -> None:
        if not isinstance(codecs, list):
            raise _refuse(where, "the hidden array's codec list is malformed")
        for c in codecs:
            name = c.get("name") if isinstance(c, Mapping) else c
            if name not in ZARR_CODECS:
                raise _refuse(where, f"the hidden array uses codec {name!r}, which kevo does not accept")
            if name == "sharding_indexed":
                conf = c.get("configuration", {})
                walk(conf.get("codecs", []))
                walk(conf.get("index_codecs", []))

    walk(meta.get("codecs", []))
    if meta.get("storage_transformers"):
        raise _refuse(where, "the hidden array uses storage transformers, which kevo does not accept")


# ---------------------------------------------------------------------------------------------
# every file a store declares: the manifest's own list plus the hidden array's chunk index

# chunk-index keys (relative to hidden/): v1 chunks c/<t>/<l>/0; v2 shards hidden/c/<s>/<l>/0 and coordinate chunks
_CHUNK_KEY = re.compile(r"^((hidden/)?c(/[0-9]{1,9}){3}|(token_uid|sample_id|layer)/c/[0-9]{1,9})$")
ZARR_META = "hidden/zarr.json"  # v1: the array's metadata; v2: the group's
ZARR_METAS_V2 = (ZARR_META, "hidden/hidden/zarr.json", "hidden/token_uid/zarr.json", "hidden/sample_id/zarr.json",
                 "hidden/layer/zarr.json")


def zarr_metas(hidden: Mapping | None) -> tuple[str, ...]:
    """The Zarr metadata files of a hidden section (named by structure, not by checksum)."""
    if not hidden:
        return ()
    return ZARR_METAS_V2 if "shard_tokens" in hidden else (ZARR_META,)


def is_zarr_meta(rel: str) -> bool:
    return rel in ZARR_METAS_V2


def declared_files(manifest: Mapping, read_bytes, where: str) -> dict[str, dict]:
    """``{relpath: {"sha256", "size"}}`` for every file the store declares (for a hidden shard, ``sha256``
    holds its chunk-index digest: a tree digest over its crc32c, or a sha256 in stores written before).

    The manifest names the Parquet files, the hidden tail and the hidden array's chunk-index parts
    (with their checksums); each index part names the chunks it committed (with theirs). The parts
    are fetched with ``read_bytes(rel)``, checked against the manifest, then trusted for the chunk
    entries: one chain of checksums from the manifest to every chunk. ``hidden/zarr.json`` is
    declared with ``size``/``sha256`` None when the manifest does not name it (the writer resizes
    it in place); its content is checked by :func:`check_zarr_metadata` instead.
    """
    files = check_file_entries(manifest.get("files", {}), where)
    out = dict(files)
    hidden = manifest.get("hidden")
    if hidden:
        if not isinstance(hidden, Mapping) or hidden.get("path", "hidden") != "hidden":
            raise _refuse(where, "the manifest's hidden section is malformed")
        index = hidden.get("index") or []
        if not isinstance(index, list):
            raise _refuse(where, "the manifest's hidden.index is not a list")
        for rel in index:
            if rel not in files:
                raise _refuse(where, f"hidden index part {rel!r} is not among the manifest's files")
            data = read_bytes(rel)
            cap = HashingSizeCap(rel, files[rel]["size"], where)
            cap.update(data)
            cap.check(files[rel]["sha256"])
            part = parse_manifest(data, f"{where}/{rel}")
            chunks = part.get("chunks")
            if not isinstance(chunks, Mapping):
                raise _refuse(where, f"hidden index part {rel!r} has no chunk list")
            for key, val in chunks.items():
                if not isinstance(key, str) or not _CHUNK_KEY.match(key):
                    raise _refuse(where, f"hidden index part {rel!r} names a chunk with an invalid key {key!r}")
                if (not isinstance(val, list) or len(val) != 2 or not isinstance(val[0], str)
                        or not _CHUNK_DIGEST.match(val[0]) or isinstance(val[1], bool) or not isinstance(val[1], int)
                        or val[1] < 0):
                    raise _refuse(where, f"hidden index part {rel!r} has an invalid entry for chunk {key!r}")
                out[f"hidden/{key}"] = {"sha256": val[0], "size": val[1]}
        for rel in zarr_metas(hidden):
            out.setdefault(rel, {"sha256": None, "size": None})
    return out


def check_manifest_paths(manifest: Mapping, where: str) -> None:
    """Every path a manifest can make a reader open, checked: its file entries (``check_file_entries``)
    and the table, derived-table and hidden-array references, which must all be among them."""
    files = check_file_entries(manifest.get("files", {}), where)
    for section in ("tables", "derived"):
        for name, t in (manifest.get(section) or {}).items():
            refs = (t or {}).get("files", [])
            if not isinstance(refs, list):
                raise _refuse(where, f"{section}.{name}.files is not a list")
            for rel in refs:
                check_relpath(rel, where)
                if rel not in files:
                    raise _refuse(where, f"{section}.{name} names {rel!r}, which has no checksum entry")
    hidden = manifest.get("hidden")
    if hidden:
        if not isinstance(hidden, Mapping) or hidden.get("path", "hidden") != "hidden":
            raise _refuse(where, "the manifest's hidden section is malformed (hidden.path must be 'hidden')")
        tails = hidden.get("tails") or []
        if not isinstance(tails, list):
            raise _refuse(where, "the manifest's hidden.tails is not a list")
        for rel in list(hidden.get("index") or []) + ([hidden["tail"]] if hidden.get("tail") else []) + tails:
            check_relpath(rel, where)
            if rel not in files:
                raise _refuse(where, f"hidden names {rel!r}, which has no checksum entry")


def check_local_links(root: str | os.PathLike, manifest: Mapping, where: str) -> None:
    """Refuse a local store in which a named file, or a directory on its way, is a symbolic link.

    A link would make the reader open a file outside the store (``tables/x.parquet -> ~/.ssh/id_rsa``).
    Costs one ``lstat`` per named file and directory (chunks are covered by ``verify``/``pull``).
    """
    root = Path(root)
    seen: set[str] = set()
    rels = list(manifest.get("files", {})) + ["hidden", "hidden/c", *ZARR_METAS_V2] + [
        f"hidden/{a}/c" for a in ("hidden", "token_uid", "sample_id", "layer")]
    for rel in rels:
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub in seen:
                continue
            seen.add(sub)
            try:
                st = os.lstat(root / sub)
            except (FileNotFoundError, NotADirectoryError):
                break
            if stat.S_ISLNK(st.st_mode):
                raise _refuse(where, f"{sub!r} is a symbolic link; a store holds only regular files and directories")
