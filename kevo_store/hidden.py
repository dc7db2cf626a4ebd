"""Hidden states: the commit protocol on top of format v2's sharded Zarr group (``shards``), and
reading both formats.

Format v2 (``shards`` holds the byte layout): a Zarr v3 group ``hidden`` whose array ``hidden``
(token, layer, hidden) is sharded, one shard file = ``shard_tokens`` tokens x 1 layer. Format v1 (read
only; ``kevo store upgrade`` rewrites it as v2): a bare Zarr array ``hidden``, one zstd chunk file per
64 tokens x 1 layer. bfloat16 is kept as its uint16 bit pattern (zarr v3 has no bfloat16) with
``logical_dtype: bfloat16`` in the attributes; float16 is stored as float16.

Commit protocol (crash safety without ever rewriting a committed file):

- Only whole shards are written during ingest. Each commit's rows that do not complete a shard are
  saved as ``hidden/hidden/tail-<commit>.npys`` (its hidden rows and their sample ids), named by the manifest's
  ``hidden.tails``; the tails are dropped in the commit that writes their rows' shard. So a row is
  written at most twice (tail, then shard) and never rewritten. ``zarr_rows`` (a multiple of
  ``shard_tokens`` while the store is open) is how many rows live in the arrays, ``rows`` how many
  the store has.
- Each commit that writes shards writes an index part ``hidden/index/shards-<commit>.json`` (inside the
  array's directory, where Zarr readers do not look) with the digest (a shard's tree digest over its
  crc32c, ``shards.shard_digest``; the sha256 of a coordinate chunk) and size of every file it wrote
  (from memory); the manifest names the index parts (with their
  own checksums). Closing merges them into one index.
- Shards, index parts and the manifest are fsynced before the commit point (the manifest's atomic
  replacement): data first, then the commit record. Tails are not (their rows are written again in
  their shard): a system crash may lose them, which the next writer detects (sha256) and undoes by
  returning to the writer's checkpoint (``kevo_store.writer.CHECKPOINT``; FORMAT.md, "Durability").
- The arrays' ``zarr.json`` shapes may run ahead of the manifest after a crash; readers trust the
  manifest's row counts, and the next writer shrinks them back and deletes the orphan files. On close
  the last partial shard is written and the shapes become exactly ``rows``.
- Every read checks what it reads: each shard it touches must exist as a regular file of the size
  the index gives (else the read fails naming it), and Zarr checks the crc32c of every inner chunk
  and shard index it decodes (a mismatch fails naming the shard). v1 chunks are checked against their
  sha256 on read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any

import numpy as np

from . import memory
from . import shards as sh
from .errors import CorruptStoreError, KevoError, SchemaError, StoreError
from .fs import LocalFS, StoreFS
from .memory import PAGE, Mapping, new_array

HIDDEN_DIR = "hidden"
# v2's own files beside the shards (chunk index parts, tails): in the array's directory, which Zarr
# readers never list (a stray directory in the group would be reported by xarray.open_zarr)
META_DIR = f"{HIDDEN_DIR}/{sh.ARRAY}"
# The last manifest whose every file is on disk (hidden tails are not fsynced at their commit; see
# FORMAT.md, "Durability"): where a resumed writer returns if tails were lost. Kept by the writer, not
# named by the manifest, never part of a pushed or pulled store.
CHECKPOINT = f"{META_DIR}/checkpoint.json"
V1_CHUNK_TOKENS = 64
LOGICAL_DTYPES = {"float16": "float16", "bfloat16": "uint16"}
# Threads gathering, hashing and writing shards: one per core (more only queue on the same cores).
WRITE_THREADS = max(1, min(8, os.cpu_count() or 1))
READ_THREADS = WRITE_THREADS
"""Threads reading the shards of one ``Store.hidden`` call (uncompressed local stores)."""
UPGRADE_HINT = "run `kevo store upgrade {root}` to rewrite it in format v2"


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 bit patterns (uint16), as torch does."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((b >> 16) & 1) + np.uint32(0x7FFF)
    out = ((b + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = np.uint16(0x7FC0)
    return out


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exactly."""
    bits = np.asarray(bits, dtype=np.uint16)
    out = new_array(bits.shape, np.uint32)
    np.left_shift(bits, 16, out=out, dtype=np.uint32)
    return out.view(np.float32)


def to_storage(h: Any, logical_dtype: str, shape_tail: tuple[int, int]) -> np.ndarray:
    """Validate one batch's hidden states and convert them to the stored dtype."""
    if not isinstance(h, np.ndarray):
        if hasattr(h, "numpy"):
            raise SchemaError("hidden must be a numpy array (convert tensors with .cpu().numpy(); "
                              "for bfloat16 pass .view(torch.uint16).numpy())")
        h = np.asarray(h)
    if h.ndim != 3 or tuple(h.shape[1:]) != shape_tail:
        raise SchemaError(f"hidden has shape {tuple(h.shape)}; expected (n_tokens, {shape_tail[0]}, {shape_tail[1]}) "
                          "(tokens x captured layers x hidden size)")
    if logical_dtype == "float16":
        if h.dtype == np.float16:
            return np.ascontiguousarray(h)
        if h.dtype in (np.float32, np.float64):
            return h.astype(np.float16)
        raise SchemaError(f"hidden has dtype {h.dtype}; this store keeps float16 (pass float16 or float32)")
    if h.dtype == np.uint16:
        return np.ascontiguousarray(h)
    if h.dtype in (np.float32, np.float64):
        return float32_to_bf16_bits(h.astype(np.float32))
    raise SchemaError(f"hidden has dtype {h.dtype}; this store keeps bfloat16: pass its uint16 bits "
                      "(tensor.view(torch.uint16).numpy()) or float32")


def is_v2(sec: dict[str, Any]) -> bool:
    return "shard_tokens" in sec


def new_section(layers: list[int], hidden_size: int, logical_dtype: str, codec: str = "none",
                shard_tokens: int | None = None, chunk_tokens: int | None = None) -> dict[str, Any]:
    st = int(shard_tokens or sh.SHARD_TOKENS)
    ct = int(chunk_tokens or min(sh.CHUNK_TOKENS, st))
    if codec not in sh.CODECS:
        raise StoreError(f"hidden codec must be one of {list(sh.CODECS)}, not {codec!r}")
    if st <= 0 or ct <= 0 or st % ct:
        raise StoreError(f"shard_tokens ({st}) must be a positive multiple of chunk_tokens ({ct})")
    return {
        "path": HIDDEN_DIR,
        "dtype": LOGICAL_DTYPES[logical_dtype],
        "logical_dtype": logical_dtype,
        "layers": [int(x) for x in layers],
        "hidden_size": int(hidden_size),
        "shard_tokens": st,
        "chunk_tokens": ct,
        "codec": codec,
        "rows": 0,
        "zarr_rows": 0,
        "tails": [],
        "index": [],
    }


def create(fs: LocalFS, sec: dict[str, Any]) -> dict[str, dict]:
    """Write the empty group into ``fs`` and its first index part into ``sec``; returns the manifest
    file entries to add."""
    files: dict[str, dict] = {}
    HiddenWriter._write_index_to(fs, 0, sh.create_group(fs, sec), sec, files)
    return files


TAIL_SUFFIX = ".npys"
"""A tail file: two ``.npy`` records back to back, the hidden rows then their sample ids (no zip: an
npz's zip layer computes a CRC-32 of every byte on top of the sha256 the manifest keeps). Tails of
stores written before are ``.npz`` (arrays ``hidden``, ``sample_id``), read as such."""


def load_tail(rel: str, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(hidden rows, sample ids) of a tail file's bytes; object arrays are refused (allow_pickle=False)."""
    if rel.endswith(".npz"):
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return z["hidden"], z["sample_id"]
    f = io.BytesIO(data)
    h = np.lib.format.read_array(f, allow_pickle=False)
    sid = np.lib.format.read_array(f, allow_pickle=False)
    if f.tell() != len(data):
        raise ValueError(f"{rel}: {len(data) - f.tell()} bytes after its two arrays")
    return h, sid


class _HashingFile:
    """A write-only file that hashes what it writes (sha256, size): a tail is serialized straight to
    its file in one pass, without a copy in memory."""

    def __init__(self, fd: int):
        self.fd, self.sha, self.size = fd, hashlib.sha256(), 0

    def write(self, b) -> int:
        mv = memoryview(b).cast("B")
        self.sha.update(mv)
        done = 0
        while done < len(mv):
            done += os.write(self.fd, mv[done:])
        self.size += len(mv)
        return len(mv)

    def flush(self) -> None:
        pass

    def read(self, *args):  # numpy takes an object without read() for a path
        raise io.UnsupportedOperation("write-only")


def write_tail(fs: LocalFS, rel: str, h: np.ndarray, sid: np.ndarray) -> dict[str, Any]:
    """Write a tail (``TAIL_SUFFIX``: the hidden rows, then their sample ids) under its new name, NOT
    fsynced (see ``HiddenWriter.sync_tails``); returns its manifest entry (sha256 and size of the bytes
    written). A crash mid-write leaves a file no manifest names, which the next writer removes."""
    fd = os.open(fs.full(rel), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        f = _HashingFile(fd)
        np.lib.format.write_array(f, np.ascontiguousarray(h), allow_pickle=False)
        np.lib.format.write_array(f, np.asarray(sid, dtype=np.int64), allow_pickle=False)
    finally:
        os.close(fd)
    return {"sha256": f.sha.hexdigest(), "size": f.size}


def damaged_tails(fs: LocalFS, sec: dict[str, Any], files: dict[str, dict]) -> list[str]:
    """The tails ``sec`` names that are missing or do not match their manifest entry (size, sha256):
    what an operating-system crash or power failure can leave of tails that were never fsynced."""
    bad = []
    for rel in sec.get("tails") or []:
        ent = files.get(rel)
        try:
            data = fs.read_bytes(rel)
        except FileNotFoundError:
            bad.append(rel)
            continue
        if ent is None or len(data) != ent["size"] or hashlib.sha256(data).hexdigest() != ent["sha256"]:
            bad.append(rel)
    return bad


def _rows(parts: list[np.ndarray], lo: int, hi: int, j: int | None, out: np.ndarray | None = None) -> np.ndarray:
    """Rows [lo, hi) of the concatenation of ``parts`` (at layer ``j``, or all layers if None), copied
    into ``out``'s first rows if given, else a view where they lie in one part."""
    pieces, start = [], 0
    for p in parts:
        a, b = max(lo, start), min(hi, start + len(p))
        if a < b:
            pieces.append(p[a - start: b - start] if j is None else p[a - start: b - start, j])
        start += len(p)
    if out is None:
        if not pieces:
            return parts[0][:0] if j is None else parts[0][:0, j]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    k = 0
    for piece in pieces:
        out[k: k + len(piece)] = piece
        k += len(piece)
    return out


def _cat(parts: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
    return np.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else empty)


class HiddenWriter:
    """Buffers hidden rows and writes whole shards; see the module docstring for the protocol."""

    def __init__(self, fs: LocalFS, sec: dict[str, Any]):
        if not is_v2(sec):
            raise StoreError(f"{fs.root} keeps its hidden states in store format v1, which this kevo reads but "
                             f"does not extend: {UPGRADE_HINT.format(root=fs.root)}")
        self.fs = fs
        self.sec = sec  # the committed section; replaced by stage()'s result on commit
        self.nl = len(sec["layers"])
        self.d = sec["hidden_size"]
        self.st = sec["shard_tokens"]
        self.ct = sec["chunk_tokens"]
        self._empty = np.empty((0, self.nl, self.d), dtype=np.dtype(sec["dtype"]))
        self._base = sec["zarr_rows"]  # first buffered row
        self._h: list[np.ndarray] = []
        self._s: list[np.ndarray] = []
        for rel in sec.get("tails") or []:
            h, s = load_tail(rel, fs.read_bytes(rel))
            self._h.append(h)
            self._s.append(s)
        self._synced: set[str] = set()  # tails known to be on disk (tails found at open may not be)
        self._committed_rows = sum(len(b) for b in self._h)  # buffered rows already in committed tails
        self._committed_parts = len(self._h)  # ... and the buffered parts that hold them
        self._pending_rows = self._committed_rows
        if self._base + self._pending_rows != sec["rows"]:
            raise StoreError(f"{fs.root}: hidden rows {self._base}+{self._pending_rows} do not match the "
                             f"manifest's {sec['rows']}")

    @property
    def rows(self) -> int:
        return self._base + self._pending_rows

    @property
    def durable(self) -> bool:
        """Every tail the committed section names is fsynced (so is every other file it names)."""
        return all(t in self._synced for t in self.sec.get("tails") or [])

    def sync_tails(self) -> None:
        """fsync the committed tails not yet known to be on disk, and their directory."""
        todo = [t for t in self.sec.get("tails") or [] if t not in self._synced]
        for rel in todo:
            self.fs.fsync_file(rel)
        if todo:
            self.fs.fsync_dir(META_DIR)
        self._synced.update(todo)

    def recover(self) -> None:
        """Undo what a crashed commit left: shapes back to the committed rows, orphan files removed."""
        fs, zr = self.fs, self.sec["zarr_rows"]
        sh.set_rows(fs, zr)
        first_orphan = -(-zr // self.st)
        for arr in (sh.ARRAY, *sh.COORDS):
            for name in fs.listdir(f"{HIDDEN_DIR}/{arr}/c"):
                if name.isdigit() and int(name) >= first_orphan:
                    (fs.rmtree if arr == sh.ARRAY else fs.remove)(f"{HIDDEN_DIR}/{arr}/c/{name}")
                elif ".tmp-" in name:  # a coordinate chunk being written (shards.write_file)
                    fs.remove(f"{HIDDEN_DIR}/{arr}/c/{name}")
        # (a shard being written, under its temporary name, is always in an orphan shard's directory: shards
        # are only written from the committed zarr_rows on, and those directories go whole just above)
        committed = set(self.sec["index"]) | set(self.sec.get("tails") or [])
        for name in fs.listdir(f"{META_DIR}/index"):
            if f"{META_DIR}/index/{name}" not in committed:
                fs.remove(f"{META_DIR}/index/{name}")
        for d in (HIDDEN_DIR, *(f"{HIDDEN_DIR}/{a}" for a in (sh.ARRAY, *sh.COORDS, sh.LAYER))):
            for name in fs.listdir(d):
                stray_tail = name.startswith("tail-") and f"{d}/{name}" not in committed
                if stray_tail or ".tmp-" in name:
                    fs.remove(f"{d}/{name}")

    def reopen_partial(self) -> bool:
        """A closed store ends in a partial shard; its rows become a tail again, so that the shard is
        written whole later (the partial shard's files are no longer named then). Returns True if the
        caller must commit (the section changed)."""
        zr = self.sec["zarr_rows"]
        if zr % self.st == 0 or self._pending_rows:
            return False
        start = zr - zr % self.st
        r = HiddenReader(self.fs, self.sec)
        uids = np.arange(start, zr)
        self._h = [r.read_stored(uids)]
        self._s = [r.sample_ids(start, zr)]
        self._base = start
        self._committed_rows = self._committed_parts = 0
        self._pending_rows = zr - start
        return True

    def append(self, h: np.ndarray, sample_ids: np.ndarray) -> None:
        if len(sample_ids) != len(h):
            raise SchemaError(f"hidden has {len(h)} rows but {len(sample_ids)} sample ids")
        self._h.append(h)
        self._s.append(np.asarray(sample_ids, dtype=np.int64))
        self._pending_rows += len(h)

    def _write_shards(self, first: int, last: int, hs: list[np.ndarray], sid: np.ndarray, stop: int
                      ) -> dict[str, list]:
        """Write shards [first, last) from the rows of ``hs`` (buffered parts, concatenated: starting at
        shard ``first``'s first row; only the rows up to ``stop`` are used), ``stop`` the array's row
        count after them. Returns the index entries of every file written."""
        n = stop - first * self.st
        from concurrent.futures import ThreadPoolExecutor

        st, fs, g = self.st, self.fs, HIDDEN_DIR
        sh.set_rows(fs, max(stop, self.sec["zarr_rows"]))
        if self.sec.get("codec", "none") != "none":  # compressed: Zarr's own codec pipeline
            import zarr

            with zarr.config.set({"array.write_empty_chunks": True}):  # every shard a file, as indexed
                arr = zarr.open_array(store=fs.zarr_store(f"{g}/{sh.ARRAY}", read_only=False), mode="r+",
                                      zarr_format=3)
                arr[first * st: stop] = _rows(hs, 0, n, None)
            index = {}
            for s in range(first, last):
                for j in range(self.nl):
                    k = sh.shard_key(s, j)
                    data = fs.read_bytes(f"{g}/{k}")
                    index[k] = [sh.shard_digest(data, st // self.ct), len(data)]
                    fs.fsync_file(f"{g}/{k}")
        else:
            dt = self._empty.dtype.newbyteorder("<")

            def one(job: tuple[int, int]) -> tuple[str, list]:
                s, j = job
                lo = (s - first) * st
                valid = min(st, n - lo)
                block = np.empty((st, self.d), dtype=dt)  # one gather of the strided rows, padded with 0
                _rows(hs, lo, lo + valid, j, block)
                block[valid:] = 0
                k = sh.shard_key(s, j)
                pieces = sh.shard_pieces(block, valid, self.ct)
                return k, sh.write_file(fs, f"{g}/{k}", pieces, sync=False, digest=pieces.digest())

            jobs = [(s, j) for s in range(first, last) for j in range(self.nl)]
            if WRITE_THREADS <= 1 or len(jobs) == 1:
                index = dict(map(one, jobs))
            else:
                with ThreadPoolExecutor(max_workers=WRITE_THREADS) as ex:
                    index = dict(ex.map(one, jobs))
        for s in range(first, last):
            lo = (s - first) * st
            uids = np.arange(s * st, min(s * st + st, stop), dtype=np.int64)
            for name, vals in (("token_uid", uids), ("sample_id", sid[lo: lo + st])):
                k = sh.coord_key(name, s)
                index[k] = sh.write_file(fs, f"{g}/{k}", sh.coord_pieces(vals, st), sync=False)
        # flushed together once all are written: the disk works on the first while the rest are hashed
        sh.fsync_files(fs, [f"{g}/{k}" for k in index], WRITE_THREADS)
        return index

    def _write_index(self, commit: int, index: dict, sec: dict, files: dict) -> None:
        self._write_index_to(self.fs, commit, index, sec, files)

    @staticmethod
    def _write_index_to(fs: LocalFS, commit: int, index: dict, sec: dict, files: dict) -> None:
        fs.makedirs(f"{META_DIR}/index")
        rel = f"{META_DIR}/index/shards-{commit:06d}.json"
        fs.write_atomic(rel, json.dumps({"chunks": index}, separators=(",", ":")).encode())
        sha, size = fs.sha256(rel)
        files[rel] = {"sha256": sha, "size": size}
        sec["index"] = list(sec["index"]) + [rel]

    def stage(self, commit: int) -> tuple[dict[str, Any], dict[str, dict], list[str]]:
        """Write the shards this commit completes, their index part and a tail of this commit's other rows.

        Returns (new hidden section, files to add to the manifest, files made obsolete by it)."""
        sec = dict(self.sec)
        sec["tails"] = list(sec.get("tails") or [])
        sec["zarr_rows"] = self._base
        files: dict[str, dict] = {}
        obsolete: list[str] = []
        total = self.rows
        n_full = (total // self.st) * self.st
        if n_full > self._base:  # shards complete: gathered from the buffered parts, once per shard
            sid = _cat(self._s, np.empty(0, np.int64))
            # the rows past the shards all came with this commit (the old tails held less than a shard)
            new_h, new_s = _rows(self._h, n_full - self._base, total - self._base, None), sid[n_full - self._base:]
            keep_h, keep_s = ([new_h], [new_s]) if len(new_h) else ([], [])
        else:  # only this commit's rows are new: no copy of the rows already in committed tails
            new_h = _cat(self._h[self._committed_parts:], self._empty)
            new_s = _cat(self._s[self._committed_parts:], np.empty(0, np.int64))
            keep_h, keep_s = list(self._h), list(self._s)
        from concurrent.futures import ThreadPoolExecutor

        rel = f"{META_DIR}/tail-{commit:06d}{TAIL_SUFFIX}"
        with ThreadPoolExecutor(max_workers=1) as pool:  # the tail on its own thread while the shards are
            # written (a thread starts only if a tail is submitted; joined on leaving, even if the shards fail)
            tail = pool.submit(write_tail, self.fs, rel, new_h, new_s) if len(new_h) else None  # hashed as written
            if n_full > self._base:
                idx = self._write_shards(self._base // self.st, n_full // self.st, self._h,
                                         sid[: n_full - self._base], n_full)
        if n_full > self._base:
            self._write_index(commit, idx, sec, files)
            obsolete.extend(sec["tails"])
            sec["tails"] = []
            sec["zarr_rows"] = n_full
        if tail is not None:
            files[rel] = tail.result()
            sec["tails"].append(rel)
        sec["rows"] = total
        self._staged = (sec["zarr_rows"], keep_h, keep_s)
        return sec, files, obsolete

    def committed(self, sec: dict[str, Any]) -> None:
        """The manifest naming ``sec`` is on disk: move the buffer forward."""
        zr, hs, ss = self._staged
        self.sec = sec
        self._synced &= set(sec.get("tails") or [])
        self._base = zr
        self._h, self._s = hs, ss
        self._committed_parts = len(hs)  # every buffered part is in a committed tail now
        self._pending_rows = self._committed_rows = sum(len(x) for x in hs)

    def stage_close(self, commit: int) -> tuple[dict[str, Any], dict[str, dict], list[str]]:
        """Write the final partial shard, set the exact shapes, merge the index into one file."""
        sec = dict(self.sec)
        files: dict[str, dict] = {}
        obsolete: list[str] = []
        if self._pending_rows:
            sid = _cat(self._s, np.empty(0, np.int64))
            first, last = self._base // self.st, -(-self.rows // self.st)
            idx = self._write_shards(first, last, self._h, sid, self.rows)
            self._write_index(commit, idx, sec, files)
            obsolete.extend(sec.get("tails") or [])
            sec["tails"] = []
            sec["zarr_rows"] = sec["rows"] = self.rows
        sh.set_rows(self.fs, sec["zarr_rows"])
        if len(sec["index"]) > 1:
            merged: dict[str, Any] = {}
            for rel in sec["index"]:
                merged.update(json.loads(self.fs.read_bytes(rel))["chunks"])
            valid = set(expected_keys(sec))
            merged = {k: v for k, v in merged.items() if k in valid}
            rel = f"{META_DIR}/index/index-{commit:06d}.json"
            self.fs.write_atomic(rel, json.dumps({"chunks": merged}, separators=(",", ":")).encode())
            sha, size = self.fs.sha256(rel)
            files[rel] = {"sha256": sha, "size": size}
            obsolete.extend(r for r in sec["index"] if r != rel)
            for r in obsolete:  # an index part written by this very close is merged too
                files.pop(r, None)
            sec["index"] = [rel]
        self._staged = (sec["zarr_rows"], [], [])
        return sec, files, obsolete


def expected_keys(sec: dict[str, Any]) -> list[str]:
    """Every file (relative to hidden/) that the chunk index must name for the section's array rows."""
    nl, zr = len(sec["layers"]), sec["zarr_rows"]
    if is_v2(sec):
        return sh.keys_for(range(-(-zr // sec["shard_tokens"])), nl) + [sh.coord_key(sh.LAYER, 0)]
    return [f"c/{i}/{j}/0" for i in range(-(-zr // V1_CHUNK_TOKENS)) for j in range(nl)]


def layer_of_key(sec: dict[str, Any], key: str) -> int | None:
    """Axis-1 position of the layer a chunk-index key (relative to hidden/) belongs to; None for files
    every layer needs (the coordinates)."""
    parts = key.split("/")
    if is_v2(sec):
        return int(parts[3]) if parts[0] == sh.ARRAY and len(parts) == 5 else None
    return int(parts[2]) if parts[0] == "c" and len(parts) == 4 else None


def _v1_array(fs: StoreFS):
    import zarr

    from .share.safety import check_zarr_metadata, parse_manifest

    rel = f"{HIDDEN_DIR}/zarr.json"
    try:
        meta = fs.read_bytes(rel)
    except FileNotFoundError:
        meta = None  # reported below by zarr, with the store's wording
    if meta is not None:
        check_zarr_metadata(parse_manifest(meta, fs.full(rel)), fs.full(rel))
    try:
        return zarr.open_array(store=fs.zarr_store(HIDDEN_DIR, read_only=True), mode="r", zarr_format=3)
    except Exception as e:  # zarr raises several types for a missing/damaged zarr.json
        raise StoreError(f"{fs.full(HIDDEN_DIR)}: cannot open the Zarr array ({type(e).__name__}: {e})") from None


def check_v2_meta(fs: StoreFS, name: str = sh.ARRAY) -> dict:
    """The metadata (zarr.json) of one array of the v2 group, after the check a store from elsewhere needs."""
    from .share.safety import check_zarr_metadata, parse_manifest

    rel = f"{HIDDEN_DIR}/{name}/zarr.json"
    try:
        meta = parse_manifest(fs.read_bytes(rel), fs.full(rel))
    except FileNotFoundError:
        raise CorruptStoreError(f"{fs.full(rel)} is missing; run `kevo store verify {fs.root}`") from None
    check_zarr_metadata(meta, fs.full(rel))
    return meta


def open_v2_array(fs: StoreFS, name: str = sh.ARRAY):
    """One array of the v2 group, read-only, after the metadata check a store from elsewhere needs."""
    import zarr

    rel = f"{HIDDEN_DIR}/{name}/zarr.json"
    try:
        check_v2_meta(fs, name)
        return zarr.open_array(store=fs.zarr_store(f"{HIDDEN_DIR}/{name}", read_only=True), mode="r",
                               zarr_format=3)
    except FileNotFoundError:
        raise CorruptStoreError(f"{fs.full(rel)} is missing; run `kevo store verify {fs.root}`") from None
    except KevoError:
        raise
    except Exception as e:  # zarr raises several types for a damaged zarr.json
        raise StoreError(f"{fs.full(rel)}: cannot open the Zarr array ({type(e).__name__}: {e})") from None


def _pread_all(fd: int, iov: list[np.ndarray], offset: int) -> None:
    """Fill the buffers ``iov`` (contiguous uint8 arrays, in file order) from ``offset`` of ``fd``, or
    raise: ``preadv`` may return short, and takes at most IOV_MAX buffers a call."""
    want = sum(x.nbytes for x in iov)
    got = 0
    while got < want:
        done = os.preadv(fd, iov[:1024], offset + got)
        if done <= 0:
            raise ValueError(f"shard ends {want - got} bytes early")
        got += done
        while iov and done >= iov[0].nbytes:
            done -= iov[0].nbytes
            iov.pop(0)
        if done:
            iov[0] = iov[0][done:]


class HiddenReader:
    """Reads rows of ``hidden`` by token_uid (either format), checking every file it reads."""

    def __init__(self, fs: StoreFS, sec: dict[str, Any], files: dict[str, dict] | None = None):
        self.fs = fs
        self.sec = sec
        self.files = files  # the manifest's files: checksums of the index parts and tails
        self.layers = list(sec["layers"])
        self.v2 = is_v2(sec)
        self.unit = sec["shard_tokens"] if self.v2 else V1_CHUNK_TOKENS
        self._arr = None
        self._direct_ok: bool | None = None
        self._tail: np.ndarray | None = None
        self._index: dict[str, list] | None = None
        self._checked: set[str] = set()

    @property
    def _direct(self) -> bool:
        """Whether reads may bypass Zarr (``_select_direct``): a local v2 store of uncompressed shards whose
        array metadata (checked as for Zarr) says exactly what the manifest's section says."""
        if self._direct_ok is None:
            ok = self.v2 and self.sec.get("codec", "none") == "none" and isinstance(self.fs, LocalFS)
            if ok:
                meta = check_v2_meta(self.fs)
                grid = (meta.get("chunk_grid") or {}).get("configuration", {}).get("chunk_shape")
                ok = (meta.get("codecs") == sh.array_codecs(self.sec) and meta.get("data_type") == self.sec["dtype"]
                      and grid == [self.sec["shard_tokens"], 1, self.sec["hidden_size"]]
                      and meta.get("fill_value") == 0)
            self._direct_ok = ok
        return self._direct_ok

    @property
    def arr(self):
        if self._arr is None:
            self._arr = open_v2_array(self.fs) if self.v2 else _v1_array(self.fs)
        return self._arr

    def _read_named(self, rel: str) -> bytes:
        """A file the manifest names, checked against its sha256 there (when the manifest is given)."""
        from .share.safety import HashingSizeCap

        try:
            data = self.fs.read_bytes(rel)
        except FileNotFoundError:
            raise CorruptStoreError(f"{self.fs.root}: {rel} (named by the manifest) is missing; "
                                    f"run `kevo store verify {self.fs.root}`") from None
        ent = (self.files or {}).get(rel)
        if ent is not None:
            cap = HashingSizeCap(rel, ent["size"], self.fs.root)
            cap.update(data)
            cap.check(ent["sha256"])
        return data

    @property
    def index(self) -> dict[str, list]:
        if self._index is None:
            idx: dict[str, list] = {}
            for rel in self.sec.get("index") or []:
                idx.update(json.loads(self._read_named(rel))["chunks"])
            self._index = idx
        return self._index

    @property
    def tail(self) -> np.ndarray:
        if self._tail is None:
            if self.v2:
                parts = [load_tail(rel, self._read_named(rel))[0] for rel in self.sec.get("tails") or []]
                self._tail = _cat(parts, np.empty((0, len(self.layers), self.sec["hidden_size"]),
                                                  dtype=np.dtype(self.sec["dtype"])))
            elif self.sec.get("tail"):
                self._tail = np.load(io.BytesIO(self._read_named(self.sec["tail"])), allow_pickle=False)
            want = (self.sec["rows"] - self.sec["zarr_rows"], len(self.layers), self.sec["hidden_size"])
            if self._tail is None or self._tail.shape != want:
                got = None if self._tail is None else self._tail.shape
                self._tail = None
                raise CorruptStoreError(f"{self.fs.root}: the hidden tail holds {got}, the manifest says {want}; "
                                        f"run `kevo store verify {self.fs.root}`")
        return self._tail

    def _keys(self, units: np.ndarray, lidx: list[int]) -> list[str]:
        if self.v2:
            return [sh.shard_key(int(u), j) for u in units for j in lidx]
        return [f"c/{int(u)}/{j}/0" for u in units for j in lidx]

    def _check_files(self, keys: list[str]) -> None:
        """Each file a read is about to open: named by the index, present, a regular file (local), of
        the indexed size; v1 chunks also hashed (they carry no checksum of their own)."""
        from .localcheck import kind_problem

        root = self.fs.root
        for key in keys:
            if key in self._checked:
                continue
            rel = f"{HIDDEN_DIR}/{key}"
            ent = self.index.get(key)
            if ent is None:
                raise CorruptStoreError(f"{root}: {rel} has no entry in the chunk index; "
                                        f"run `kevo store verify {root}`")
            if isinstance(self.fs, LocalFS):
                p = kind_problem(self.fs.full(rel), rel)
                if p:
                    from .share.safety import UnsafeStoreError

                    raise UnsafeStoreError(f"{root}: refused: {p}")
            try:
                size = self.fs.size(rel)
            except FileNotFoundError:
                raise CorruptStoreError(f"{root}: hidden shard {rel} is missing (the chunk index names it); "
                                        f"run `kevo store verify {root}`") from None
            if size != ent[1]:
                raise CorruptStoreError(f"{root}: hidden shard {rel} is {size} bytes, the index says {ent[1]} "
                                        f"(truncated or overwritten); run `kevo store verify {root}`")
            if not self.v2 and self.fs.sha256(rel)[0] != ent[0]:
                raise CorruptStoreError(f"{root}: hidden chunk {rel} does not match its sha256 (corrupted); "
                                        f"run `kevo store verify {root}`")
            self._checked.add(key)

    def _name_damage(self, keys: list[str], e: Exception) -> CorruptStoreError:
        """The read failed inside Zarr (a crc32c mismatch, a damaged shard index): name the shard."""
        root = self.fs.root
        for key in keys:
            rel = f"{HIDDEN_DIR}/{key}"
            if sh.file_ok(self.fs, rel, self.index[key][0]):
                self._checked.discard(key)
                return CorruptStoreError(f"{root}: hidden shard {rel} does not match its checksum (corrupted); "
                                         f"run `kevo store verify {root}`")
        return CorruptStoreError(f"{root}: hidden states unreadable ({type(e).__name__}: {e}); "
                                 f"run `kevo store verify {root}`")

    def _lidx(self, layers: Any) -> list[int]:
        if layers is None:
            return list(range(len(self.layers)))
        if np.isscalar(layers):
            layers = [layers]
        pos = {layer: i for i, layer in enumerate(self.layers)}
        missing = [int(x) for x in layers if int(x) not in pos]
        if missing:
            raise KevoError(f"layer(s) {missing} were not captured; hidden states exist for layers {self.layers}")
        return [pos[int(x)] for x in layers]

    def read_stored(self, token_uids: Any, layers: Any = None, out: np.ndarray | None = None) -> np.ndarray:
        """As stored (float16, or bfloat16's uint16 bits); into ``out`` (that shape and dtype) when given."""
        uids = np.asarray(token_uids, dtype=np.int64).reshape(-1)
        n = self.sec["rows"]
        if uids.size and (uids.min() < 0 or uids.max() >= n):
            bad = uids[(uids < 0) | (uids >= n)][0]
            raise KevoError(f"token_uid {int(bad)} has no hidden state (the store has rows 0..{n - 1})")
        lidx = self._lidx(layers)
        d = self.sec["hidden_size"]
        zr = self.sec["zarr_rows"]
        in_zarr = uids < zr
        if uids.size and uids[-1] < zr and (uids.size == 1 or bool((uids[1:] > uids[:-1]).all())):
            return self._block(uids, lidx, out)  # sorted, distinct, all in the arrays (e.g. a whole layer): as read
        if out is None:
            out = new_array((uids.size, len(lidx), d), self.sec["dtype"])
        if in_zarr.any():
            sel = uids[in_zarr]
            order = np.argsort(sel, kind="stable")
            uniq, inv = np.unique(sel[order], return_inverse=True)
            block = self._block(uniq, lidx)
            tmp = np.empty((sel.size, len(lidx), d), dtype=out.dtype)
            tmp[order] = block[inv]
            out[in_zarr] = tmp
        if (~in_zarr).any():
            out[~in_zarr] = self.tail[uids[~in_zarr] - zr][:, lidx]
        return out

    def _block(self, uniq: np.ndarray, lidx: list[int], out: np.ndarray | None = None) -> np.ndarray:
        """Array rows ``uniq`` (sorted, distinct, < zarr_rows) at layers ``lidx``, every file checked."""
        keys = self._keys(np.unique(uniq // self.unit), lidx)
        self._check_files(keys)
        direct = self._direct
        arr = None if direct else self.arr
        try:
            return self._select_direct(uniq, lidx, out) if direct else self._select(arr, uniq, lidx, out)
        except Exception as e:  # a damaged shard surfaces as a checksum, codec or shape error
            raise self._name_damage(keys, e) from None

    def _select_direct(self, uniq: np.ndarray, lidx: list[int], out: np.ndarray | None = None) -> np.ndarray:
        """``_select`` for uncompressed local shards, without Zarr: per shard and layer, the shard index
        (its crc32c checked), then one ``preadv`` of each run of touched inner chunks that lie end to
        end in the file, straight into the output where a chunk's rows are all wanted, and the
        crc32c of every inner chunk read checked, exactly as Zarr's sharding and crc32c codecs
        check them. An absent chunk (index entry 2^64-1) reads as the fill value 0.

        Shards are read on ``READ_THREADS`` threads (each fills its own rows and layer of ``out``), so
        that one shard's crc32c pass runs while the next is read: ``preadv`` releases the GIL."""
        dt = np.dtype(self.sec["dtype"])
        if out is None:
            mapped = self._map_rows(uniq, lidx)
            if mapped is not None:
                return mapped
            out = new_array((uniq.size, len(lidx), self.sec["hidden_size"]), dt)
        st = self.sec["shard_tokens"]
        shard_of = uniq // st
        cut = np.flatnonzero(np.diff(shard_of)) + 1
        jobs = [(int(a), int(b), k, j) for a, b in zip(np.r_[0, cut], np.r_[cut, uniq.size])
                for k, j in enumerate(lidx)]

        def one(job: tuple[int, int, int, int]) -> None:
            a, b, k, j = job
            s = int(shard_of[a])
            self._read_shard(sh.shard_key(s, j), uniq[a:b] - s * st, out[a:b, k])

        self._run(one, jobs)
        return out

    def _shard_index(self, fd: int, key: str) -> tuple[np.ndarray, int]:
        """Shard ``key``'s index, (inner chunks, 2) of (offset, length), its crc32c checked, and where it
        starts in the file (the end of the bytes the chunks may occupy)."""
        n_inner = self.sec["shard_tokens"] // self.sec["chunk_tokens"]
        ilen = n_inner * 16 + 4
        body = self.index[key][1] - ilen  # the file's size is the index's (checked before any read)
        ib = os.pread(fd, ilen, body)
        if len(ib) != ilen or sh.crc32c(ib[:-4]) != ib[-4:]:
            raise ValueError(f"shard index of {key}: crc32c mismatch")
        return np.frombuffer(ib[:-4], dtype="<u8").reshape(n_inner, 2), body

    def _map_rows(self, uniq: np.ndarray, lidx: list[int]) -> np.ndarray | None:
        """``_select_direct`` without a copy, for a one-layer read of consecutive rows from an inner
        chunk's first, of chunks a whole number of pages long (a layer across every token, a dask
        block): every touched chunk of the shard files mapped copy-on-write into one array
        (``memory.Mapping``), its crc32c checked over the mapped bytes (which faults them in), absent
        chunks left as the mapping's zeros. None where the read does not qualify (the caller copies)."""
        ct, d, st = self.sec["chunk_tokens"], self.sec["hidden_size"], self.sec["shard_tokens"]
        dt = np.dtype(self.sec["dtype"])
        step = ct * d * dt.itemsize
        if (len(lidx) != 1 or step % PAGE or uniq.size * d * dt.itemsize < memory.MAP_MIN_BYTES
                or not memory.can_map() or int(uniq[0]) % ct or int(uniq[-1]) - int(uniq[0]) + 1 != uniq.size):
            return None
        first, n_chunks, per_shard, j = int(uniq[0]) // ct, -(-uniq.size // ct), st // ct, lidx[0]
        m = Mapping(n_chunks * step)
        chunks = np.arange(first, first + n_chunks)
        groups = np.split(chunks, np.flatnonzero(np.diff(chunks // per_shard)) + 1)

        def one(cs: np.ndarray) -> None:
            s = int(cs[0]) // per_shard
            key = sh.shard_key(s, j)
            fd = os.open(self.fs.full(f"{HIDDEN_DIR}/{key}"), os.O_RDONLY)
            try:
                index, body = self._shard_index(fd, key)
                for c in cs.tolist():
                    off, n = (int(x) for x in index[c - s * per_shard])
                    if off == sh.MAX_U64 and n == sh.MAX_U64:
                        continue  # an absent chunk: the fill value 0, as the mapping already holds
                    if n != step + 4:
                        raise ValueError(f"inner chunk {c - s * per_shard} of {key} is {n} bytes, not {step + 4}")
                    if off + n > body:  # a mapping past the end of the file would fault when read
                        raise ValueError(f"inner chunk {c - s * per_shard} of {key} lies outside the shard")
                    at = (c - first) * step
                    chunk, crc = m.buf[at: at + step], np.empty(4, np.uint8)
                    if m.map(at, fd, off, step):
                        _pread_all(fd, [crc], off + step)
                    else:  # an unpadded (older) shard, or no mapping left: read in, with its crc32c
                        _pread_all(fd, [chunk, crc], off)
                    if sh.crc32c(chunk) != crc.tobytes():
                        raise ValueError(f"inner chunk {c - s * per_shard} of {key}: crc32c mismatch")
            finally:
                os.close(fd)

        self._run(one, groups)
        return m.array(dt)[: uniq.size * d].reshape(uniq.size, 1, d)

    @staticmethod
    def _run(fn, jobs: list) -> None:
        """``fn`` over ``jobs`` on ``READ_THREADS`` threads (``preadv``, page faults and the crc32c
        release the GIL); the first failure is raised, naming its shard."""
        if READ_THREADS <= 1 or len(jobs) < 2:
            for job in jobs:
                fn(job)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=READ_THREADS) as ex:
            for _ in ex.map(fn, jobs):
                pass

    def _read_shard(self, key: str, rows: np.ndarray, dest: np.ndarray) -> None:
        """Rows ``rows`` (sorted, distinct, within the shard) of shard ``key`` into ``dest`` (len(rows), D),
        every byte read checked against its crc32c."""
        ct, d = self.sec["chunk_tokens"], self.sec["hidden_size"]
        dt = np.dtype(self.sec["dtype"])
        step = ct * d * dt.itemsize
        inner = np.unique(rows // ct)
        # rows wholly covering their chunks, and ``dest`` contiguous (a one-layer read): the chunks go
        # straight into the output
        whole = dest.flags.c_contiguous and len(rows) == len(inner) * ct
        fd = os.open(self.fs.full(f"{HIDDEN_DIR}/{key}"), os.O_RDONLY)
        try:
            index, _ = self._shard_index(fd, key)
            buf = dest.reshape(len(inner), ct * d) if whole else np.empty((len(inner), ct * d), dt)
            crcs = np.empty((len(inner), 4), np.uint8)
            run: list[int] = []  # positions in ``inner`` of chunks end to end in the file
            for q, c in enumerate(inner):
                off, n = (int(x) for x in index[c])
                if off == sh.MAX_U64 and n == sh.MAX_U64:
                    buf[q] = 0
                    crcs[q] = np.frombuffer(sh.crc32c(buf[q].view(np.uint8)), np.uint8)
                    continue
                if n != step + 4:
                    raise ValueError(f"inner chunk {c} of {key} is {n} bytes, not {step + 4}")
                if run and int(index[inner[run[-1]]][0]) + step + 4 != off:
                    self._preadv(fd, buf, crcs, run, int(index[inner[run[0]]][0]))
                    run = []
                run.append(q)
            if run:
                self._preadv(fd, buf, crcs, run, int(index[inner[run[0]]][0]))
        finally:
            os.close(fd)
        for q in range(len(inner)):
            if sh.crc32c(buf[q].view(np.uint8)) != crcs[q].tobytes():
                raise ValueError(f"inner chunk {int(inner[q])} of {key}: crc32c mismatch")
        if not whole:
            pos = np.searchsorted(inner, rows // ct)
            dest[:] = buf.reshape(len(inner), ct, d)[pos, rows % ct]

    @staticmethod
    def _preadv(fd: int, buf: np.ndarray, crcs: np.ndarray, run: list[int], offset: int) -> None:
        """Read chunks ``run`` (each followed by its crc32c in the file) from ``offset`` into their rows."""
        _pread_all(fd, [x for q in run for x in (buf[q].view(np.uint8), crcs[q])], offset)

    @staticmethod
    def _select(arr, uniq: np.ndarray, lidx: list[int], out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``uniq`` (sorted, distinct) at layers ``lidx``: one plain slice per run of consecutive
        touched inner chunks and layer (Zarr's orthogonal integer indexing is far slower than slices)."""
        c = arr.chunks[0]
        if out is None:
            out = new_array((uniq.size, len(lidx), arr.shape[2]), arr.dtype)
        chunk_ids = np.unique(uniq // c)
        runs = np.split(chunk_ids, np.flatnonzero(np.diff(chunk_ids) != 1) + 1)
        for run in runs:
            a = int(np.searchsorted(uniq, run[0] * c))
            b = int(np.searchsorted(uniq, (run[-1] + 1) * c))
            lo, hi = int(uniq[a]), int(uniq[b - 1]) + 1
            rel = uniq[a:b] - lo
            for k, j in enumerate(lidx):
                blk = np.asarray(arr[lo:hi, j, :])
                out[a:b, k] = blk if len(rel) == hi - lo else blk[rel]
        return out

    def read(self, token_uids: Any, layers: Any = None, out: np.ndarray | None = None) -> np.ndarray:
        """float16 for float16 stores, float32 (exact) for bfloat16 ones; into ``out`` when given (an
        array of exactly the result's shape and dtype, C-contiguous and writeable: a buffer reused
        from read to read, e.g. layer after layer, costs no new allocation and no page faults)."""
        bf16 = self.sec["logical_dtype"] == "bfloat16"
        if out is not None:
            n = np.asarray(token_uids).size
            shape = (n, len(self._lidx(layers)), self.sec["hidden_size"])
            dtype = np.dtype(np.float32 if bf16 else self.sec["dtype"])
            if (not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != dtype
                    or not out.flags.c_contiguous or not out.flags.writeable):
                got = f"{out.shape} {out.dtype}" if isinstance(out, np.ndarray) else type(out).__name__
                raise KevoError(f"out= must be a writeable C-contiguous {dtype} array of shape {shape}, got {got}")
            if bf16:  # the bits, then their exact float32 values, in place
                np.left_shift(self.read_stored(token_uids, layers).astype(np.uint32), 16, out=out.view(np.uint32))
                return out
            return self.read_stored(token_uids, layers, out)  # every path fills ``out`` itself
        stored = self.read_stored(token_uids, layers)
        return bf16_bits_to_float32(stored) if bf16 else stored

    def sample_ids(self, start: int, stop: int) -> np.ndarray:
        """The sample_id coordinate of array rows [start, stop) (v2), checked like the shards."""
        if stop <= start:
            return np.empty(0, np.int64)
        keys = [sh.coord_key("sample_id", s) for s in range(start // self.unit, -(-stop // self.unit))]
        self._check_files(keys)
        arr = open_v2_array(self.fs, "sample_id")
        try:
            return np.asarray(arr[start:stop], dtype=np.int64)
        except Exception as e:  # noqa: BLE001
            raise self._name_damage(keys, e) from None
