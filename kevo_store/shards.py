"""Format v2's hidden-state files: the Zarr v3 group ``hidden`` and the shards of its arrays.

The group holds four arrays (paths relative to the store):

- ``hidden/hidden`` (token, layer, hidden_dim): the hidden states, Zarr's sharding codec; one shard file
  ``hidden/hidden/c/<s>/<j>/0`` = ``shard_tokens`` tokens x 1 layer x D, inner chunks of
  ``chunk_tokens`` tokens x 1 layer x D. Each inner chunk is its raw little-endian bytes (zstd-compressed
  with ``--hidden-codec zstd``) followed by its crc32c; the shard index (offset, length per inner chunk)
  is at the end of the file with its own crc32c. Uncompressed inner chunks of a whole number of
  memory pages (D = 4,096 in float16: 2 MiB) start on a page boundary, the crc32c followed by zeros up
  to the next page (Zarr reads a chunk by the index's offset and length, so the gap is invisible to
  it), so that a reader can map a chunk's bytes into memory instead of copying them
  (``HiddenReader._map_rows``). So every byte of a shard but that padding is covered by a crc32c that
  Zarr checks when it reads it (the padding, which no read uses, must be zeros: :func:`shard_digest`).
  The chunk index gives each shard a *tree digest* over those crc32c
  (:func:`shard_digest`): the sha256 of the shard index and of every inner chunk's crc32c, so checking
  a shard (verify, pull) is a crc32c pass over its bytes, not a sha256 of every byte (stores written
  before this carry a plain sha256 of the file, which stays valid).
- ``hidden/token_uid`` and ``hidden/sample_id`` (token): coordinates, one chunk per shard of tokens.
- ``hidden/layer`` (layer): the model's layer numbers of axis 1.

Only this module knows the byte layout; ``hidden`` runs the commit protocol on top of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

from .fs import LocalFS
from .memory import PAGE

GROUP = "hidden"
ARRAY = "hidden"  # the hidden-state array's name inside the group
COORDS = ("token_uid", "sample_id")
LAYER = "layer"
SHARD_TOKENS = 512
"""Tokens per shard: about the rows one commit brings (a batch of prompts x their generated tokens), so
that most rows are written once, straight into their shard, and few go through a tail first (4 MiB a
shard file at D = 4,096 in float16)."""
CHUNK_TOKENS = 256
CODECS = ("none", "zstd")
MAX_U64 = 2**64 - 1
_LE = {"name": "bytes", "configuration": {"endian": "little"}}
_CRC = {"name": "crc32c"}
_ZSTD = {"name": "zstd", "configuration": {"level": 1, "checksum": False}}


def chunk_stride(step: int) -> int:
    """Bytes from the start of one uncompressed inner chunk of ``step`` data bytes to the next in a shard
    file: its data and crc32c, padded to a page boundary when ``step`` is a whole number of pages (so
    every chunk's data starts on one; smaller chunks are not padded, a page each would swell them)."""
    return step + PAGE if step % PAGE == 0 else step + 4


_ZEROS = memoryview(bytes(PAGE))


class ShardPieces(list):
    """The byte pieces of one uncompressed shard file, in file order (what :func:`write_file` writes
    with one writev), with what its tree digest is made of."""

    def __init__(self, pieces: list, index: bytes, index_crc: bytes, crcs: list, n_inner: int):
        super().__init__(pieces)
        self.index, self.index_crc, self.crcs, self.n_inner = index, index_crc, crcs, n_inner

    def digest(self) -> str:
        return tree_digest(self.index, self.index_crc, self.crcs, self.n_inner)


TREE = "c32t"
"""Prefix of a shard's tree digest in the chunk index: ``c32t:<inner chunks>:<sha256 hex>``."""


def _crc_function():
    """The crc32c implementation: the ``crc32c`` package when installed (the ``fast`` extra: hardware
    crc32c that releases the GIL on any buffer, so the threads that read and write shards check them
    in parallel), else google-crc32c (Zarr's own dependency; it releases the GIL only on ``bytes`` of
    1 MiB or more, not on arrays)."""
    try:
        import crc32c as fast

        if fast.hardware_based:
            return fast.crc32c, "crc32c"
    except ImportError:
        pass
    import google_crc32c

    def value(buf: Any) -> int:
        if isinstance(buf, memoryview):  # google_crc32c takes bytes or numpy arrays
            buf = np.frombuffer(buf, dtype=np.uint8)
        return google_crc32c.value(buf)

    return value, "google_crc32c"


CRC32C, CRC32C_IMPL = _crc_function()


def crc32c(buf: Any) -> bytes:
    """The crc32c (Castagnoli) of a buffer as Zarr's crc32c codec stores it: 4 bytes, little-endian."""
    return np.uint32(CRC32C(buf)).tobytes()


def shard_key(s: int, j: int) -> str:
    """A hidden-state shard, relative to the group (as the chunk index names it)."""
    return f"{ARRAY}/c/{s}/{j}/0"


def coord_key(name: str, s: int) -> str:
    return f"{name}/c/{s}"


def keys_for(shards: range, n_layers: int) -> list[str]:
    """Every file (relative to the group) that shards ``shards`` consist of: hidden shards and coordinate chunks."""
    out = [shard_key(s, j) for s in shards for j in range(n_layers)]
    out += [coord_key(c, s) for c in COORDS for s in shards]
    return out


def meta_files() -> list[str]:
    """The group's metadata files, relative to the store (checked by structure, not by checksum)."""
    return [f"{GROUP}/zarr.json"] + [f"{GROUP}/{a}/zarr.json" for a in (ARRAY, *COORDS, LAYER)]


def inner_codecs(codec: str) -> list[dict]:
    return [_LE, _ZSTD, _CRC] if codec == "zstd" else [_LE, _CRC]


def array_codecs(sec: dict) -> list[dict]:
    """The exact codec list of ``hidden/hidden``'s zarr.json for a section."""
    return [{"name": "sharding_indexed", "configuration": {
        "chunk_shape": [sec["chunk_tokens"], 1, sec["hidden_size"]],
        "codecs": inner_codecs(sec.get("codec", "none")),
        "index_codecs": [_LE, _CRC],
        "index_location": "end"}}]


def _array_meta(shape: list[int], dtype: str, chunks: list[int], codecs: list[dict], dims: list[str],
                attrs: dict) -> dict:
    return {"zarr_format": 3, "node_type": "array", "shape": shape, "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0, "codecs": codecs, "attributes": attrs, "dimension_names": dims,
            "storage_transformers": []}


def create_group(fs: LocalFS, sec: dict, group_meta: bool = True) -> dict[str, list]:
    """Write the group and its (empty) arrays; the layer coordinate is written whole, here (its index
    entry is returned). ``group_meta=False``: all but the group's own zarr.json (``kevo store upgrade``
    writes that last, over format v1's array metadata)."""
    nl, d, st = len(sec["layers"]), sec["hidden_size"], sec["shard_tokens"]
    attrs = {"logical_dtype": sec["logical_dtype"], "layers": sec["layers"], "coordinates": "token_uid sample_id",
             "about": "kevo hidden states; bfloat16 is kept as its uint16 bit pattern (logical_dtype)"}
    metas = {
        ARRAY: _array_meta([0, nl, d], sec["dtype"], [st, 1, d], array_codecs(sec), ["token", "layer", "hidden_dim"],
                           attrs),
        "token_uid": _array_meta([0], "int64", [st], [_LE, _CRC], ["token"], {"about": "row = token_uid"}),
        "sample_id": _array_meta([0], "int64", [st], [_LE, _CRC], ["token"], {"about": "tokens.sample_id"}),
        LAYER: _array_meta([nl], "int64", [max(1, nl)], [_LE, _CRC], ["layer"],
                           {"about": "layer numbers (0 = embeddings)"}),
    }
    for name, meta in metas.items():
        fs.makedirs(f"{GROUP}/{name}")
        fs.write_atomic(f"{GROUP}/{name}/zarr.json", json.dumps(meta, indent=1).encode())
    layer = np.asarray(sec["layers"], dtype="<i8")
    ent = write_file(fs, f"{GROUP}/{coord_key(LAYER, 0)}", [layer.tobytes(), crc32c(layer.tobytes())])
    if group_meta:
        write_group_meta(fs)
    return {coord_key(LAYER, 0): ent}


def write_group_meta(fs: LocalFS) -> None:
    fs.write_atomic(f"{GROUP}/zarr.json", json.dumps(
        {"zarr_format": 3, "node_type": "group", "attributes": {"kevo": "hidden states (store format v2)"}},
        indent=1).encode())


def set_rows(fs: LocalFS, rows: int) -> None:
    """Set the token-axis length of the three token-indexed arrays (their zarr.json shapes)."""
    for name in (ARRAY, *COORDS):
        rel = f"{GROUP}/{name}/zarr.json"
        meta = json.loads(fs.read_bytes(rel))
        if meta["shape"][0] != rows:
            meta["shape"][0] = rows
            fs.write_atomic(rel, json.dumps(meta, indent=1).encode())


def tree_digest(index_bytes: Any, index_crc: Any, chunk_crcs: list, n_inner: int) -> str:
    """``c32t:<n_inner>:<sha256 hex>`` of a shard's index bytes, the index's crc32c and its present inner
    chunks' crc32c in index order (see :func:`shard_digest`)."""
    h = hashlib.sha256(index_bytes)
    h.update(index_crc)
    for c in chunk_crcs:
        h.update(c)
    return f"{TREE}:{n_inner}:{h.hexdigest()}"


def shard_digest(data: Any, n_inner: int) -> str:
    """The tree digest of a shard file's bytes (``n_inner`` inner chunks), every crc32c in it checked
    first: the shard index's, then each inner chunk's (its last four bytes, over the rest), and the bytes
    no chunk covers (the page padding of :func:`chunk_stride`) checked to be zeros. Raises ``ValueError``
    naming what fails.

    A change to any byte of a shard either breaks a crc32c (a burst of up to 32 bits always does; any
    other change but with probability 2^-32) or changes the crc32c values themselves, and so the sha256
    over them: like a sha256 of the whole file, it detects damage. Neither defends against someone who
    rewrites shards on purpose: they could rewrite the manifest's checksums as well."""
    mv = memoryview(data).cast("B")
    isz = n_inner * 16
    if len(mv) < isz + 4:
        raise ValueError("shorter than its shard index")
    ib, icrc = mv[len(mv) - isz - 4: len(mv) - 4], mv[len(mv) - 4:]
    if crc32c(ib) != bytes(icrc):
        raise ValueError("the shard index fails its crc32c")
    body = len(mv) - isz - 4
    crcs = []
    extents = []
    for k, (off, nb) in enumerate(np.frombuffer(ib, dtype="<u8").reshape(n_inner, 2).tolist()):
        if off == MAX_U64 and nb == MAX_U64:  # an absent chunk (the fill value)
            continue
        if nb < 4 or off + nb > body:
            raise ValueError(f"inner chunk {k} lies outside the shard")
        chunk = mv[off: off + nb]
        if crc32c(chunk[: nb - 4]) != bytes(chunk[nb - 4:]):
            raise ValueError(f"inner chunk {k} fails its crc32c")
        crcs.append(chunk[nb - 4:])
        extents.append((off, off + nb))
    end = 0  # the bytes no chunk covers (the page padding, chunk_stride) must be zeros
    for a, b in sorted(extents) + [(body, body)]:
        if a > end and np.frombuffer(mv[end:a], dtype=np.uint8).any():
            raise ValueError(f"bytes {end}..{a} between inner chunks are not zeros")
        end = max(end, b)
    return tree_digest(ib, icrc, crcs, n_inner)


def check_shard(data: Any, digest: str) -> str | None:
    """None if a file's bytes match their chunk-index digest (a shard's tree digest, or a plain sha256),
    else what is wrong."""
    if not is_tree(digest):
        return None if hashlib.sha256(data).hexdigest() == digest else "sha256 mismatch"
    try:
        got = shard_digest(data, int(digest.split(":")[1]))
    except ValueError as e:
        return str(e)
    return None if got == digest else "tree digest mismatch"


def is_tree(digest: str) -> bool:
    return digest.startswith(TREE + ":")


def file_ok(fs, rel: str, digest: str) -> str | None:
    """:func:`check_shard` on a file of ``fs`` (streamed sha256 for a plain digest)."""
    if is_tree(digest):
        return check_shard(fs.read_bytes(rel), digest)
    return None if fs.sha256(rel)[0] == digest else "sha256 mismatch"


def write_file(fs: LocalFS, rel: str, pieces: list, sync: bool = True, digest: str | None = None) -> list:
    """Write ``pieces`` (buffers) to ``rel`` with one writev, fsync it (unless ``sync=False``: the caller
    fsyncs it later, :func:`fsync_files`); returns [digest, size] of the bytes: ``digest`` when given (a
    shard's tree digest, :meth:`ShardPieces.digest`), else their sha256.

    The file is written under a temporary name and renamed over ``rel``, never truncated in place: a
    shard rewritten later (a closed store's partial last shard, written whole when the store grows)
    leaves the old file's pages intact for a reader that has them mapped."""
    size = sum(memoryview(p).nbytes for p in pieces)
    if digest is None:
        h = hashlib.sha256()
        for p in pieces:
            h.update(p)
        digest = h.hexdigest()
    path = fs.full(rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"  # the store's temporary-file mark: recovery deletes what a crash left
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = os.writev(fd, pieces)
        if done != size:  # a short writev (rare): the rest in one go
            os.write(fd, b"".join(bytes(p) for p in pieces)[done:])
        if sync:
            os.fsync(fd)
        else:
            start_writeback(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)  # durable with the directory's fsync (fsync_files; the caller's, with sync=True)
    return [digest, size]


_SYNC_FILE_RANGE_WRITE = 2
_libc: Any = None


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages to the disk now, without waiting (Linux
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; elsewhere nothing): the disk then works while the next
    files are written, and the later fsync only waits for what is still in flight. Durability still
    comes from that fsync alone."""
    global _libc
    if _libc is None:
        try:
            import ctypes

            lib = ctypes.CDLL(None, use_errno=True)
            fn = lib.sync_file_range
            fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
            _libc = fn
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def fsync_files(fs: LocalFS, rels: list[str], threads: int = 1) -> None:
    """fsync files written with ``write_file(sync=False)``, and their directories."""
    dirs = sorted({os.path.dirname(r) for r in rels})
    jobs = [fs.fsync_file] * len(rels) + [fs.fsync_dir] * len(dirs)
    if threads <= 1:
        for fn, rel in zip(jobs, rels + dirs):
            fn(rel)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as ex:
        list(ex.map(lambda a: a[0](a[1]), zip(jobs, rels + dirs)))


def shard_pieces(block: np.ndarray, valid: int, chunk_tokens: int) -> ShardPieces:
    """The byte pieces of one uncompressed shard: ``block`` is (shard_tokens, D) little-endian, of which
    the first ``valid`` rows are data (the rest already the fill value 0). Inner chunks wholly past
    ``valid`` are left out (index entry = 2^64-1, as Zarr writes a chunk outside the array); each present
    one is its bytes, its crc32c and, for chunks of whole pages, zeros up to the next page
    (:func:`chunk_stride`)."""
    n_inner = len(block) // chunk_tokens
    pieces: list = []
    crcs: list = []
    index = np.full((n_inner, 2), MAX_U64, dtype="<u8")
    off = 0
    raw = block.reshape(-1).view(np.uint8)
    step = chunk_tokens * block.shape[1] * block.itemsize
    stride = chunk_stride(step)
    for k in range(n_inner):
        if k * chunk_tokens >= valid:
            break
        piece = raw[k * step: (k + 1) * step]
        crcs.append(crc32c(piece))
        pieces += [piece, crcs[-1]]
        if stride > step + 4:
            pieces.append(_ZEROS[: stride - step - 4])
        index[k] = (off, step + 4)
        off += stride
    ib = index.tobytes()
    icrc = crc32c(ib)
    pieces += [ib, icrc]
    return ShardPieces(pieces, ib, icrc, crcs, n_inner)


def coord_pieces(values: np.ndarray, shard_tokens: int) -> list:
    """One coordinate chunk: ``values`` padded with 0 to ``shard_tokens``, little-endian int64, crc32c."""
    buf = np.zeros(shard_tokens, dtype="<i8")
    buf[: len(values)] = values
    b = buf.tobytes()
    return [b, crc32c(b)]
