"""The Zarr v3 array ``hidden``: hidden states, (token_uid, layer, hidden), chunks (64, 1, D).

Chunks hold 64 tokens x 1 layer x the full hidden size, so reading one layer across many tokens
(the clustering and embedding analyses) touches one chunk per 64 tokens. bfloat16 is kept as its
uint16 bit pattern (zarr v3 has no bfloat16) with ``logical_dtype: bfloat16`` in the attributes;
float16 is stored as float16.

Commit protocol (crash safety without ever rewriting a committed file):

- Only whole chunks are written during ingest. The rows past the last whole chunk (the *tail*, fewer
  than 64 tokens) are saved with each commit as a small ``tail-<commit>.npy`` that the manifest
  names; the next commit replaces it. ``zarr_rows`` (a multiple of 64 while the store is open) is
  how many rows live in the Zarr array, ``rows`` how many the store has.
- Each commit writes an index part ``index/idx-<commit>.json`` with the sha256 and size of every
  chunk it wrote, so only new chunks are hashed; the manifest names the index parts (with their
  own checksums). Closing merges them into one index.
- ``zarr.json``'s shape may run ahead of the manifest after a crash (it is resized before the
  chunks are written); readers trust the manifest's row counts, and the next writer shrinks it
  back and deletes the orphan chunks. On close the last partial chunk is written and the shape
  becomes exactly ``rows``.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np

from .errors import CorruptStoreError, KevoError, SchemaError, StoreError
from .fs import LocalFS, StoreFS

HIDDEN_DIR = "hidden"
CHUNK_TOKENS = 64
LOGICAL_DTYPES = {"float16": "float16", "bfloat16": "uint16"}
# Threads encoding and writing chunks: one per core (more only queue on the same cores).
WRITE_THREADS = max(1, min(8, os.cpu_count() or 1))
# The codecs create_array writes into zarr.json; the writer's own chunk encoder reproduces exactly these.
DIRECT_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}},
                 {"name": "zstd", "configuration": {"level": 1, "checksum": False}}]


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
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


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


def chunk_keys(start_chunk: int, stop_chunk: int, n_layers: int) -> list[str]:
    """Chunk files (relative to hidden/) of token chunks [start, stop), every layer."""
    return [f"c/{i}/{j}/0" for i in range(start_chunk, stop_chunk) for j in range(n_layers)]


def new_section(layers: list[int], hidden_size: int, logical_dtype: str) -> dict[str, Any]:
    return {
        "path": HIDDEN_DIR,
        "dtype": LOGICAL_DTYPES[logical_dtype],
        "logical_dtype": logical_dtype,
        "layers": [int(x) for x in layers],
        "hidden_size": int(hidden_size),
        "chunk_tokens": CHUNK_TOKENS,
        "rows": 0,
        "zarr_rows": 0,
        "tail": None,
        "index": [],
    }


def create_array(fs: LocalFS, sec: dict[str, Any]) -> None:
    import zarr
    from zarr.codecs import ZstdCodec

    nl, d = len(sec["layers"]), sec["hidden_size"]
    zarr.create_array(
        store=fs.zarr_store(HIDDEN_DIR, read_only=False),
        shape=(0, nl, d),
        chunks=(CHUNK_TOKENS, 1, d),
        dtype=sec["dtype"],
        fill_value=0,
        # level 1: activations barely compress; spend no CPU on trying harder
        compressors=ZstdCodec(level=1),
        chunk_key_encoding={"name": "default", "separator": "/"},
        dimension_names=("token", "layer", "hidden"),
        attributes={"logical_dtype": sec["logical_dtype"], "layers": sec["layers"],
                    "about": "kevo hidden states: row = token_uid, axis 1 = the manifest's hidden.layers"},
        config={"write_empty_chunks": True},
        overwrite=True,
    )


def open_array(fs: StoreFS, read_only: bool = True):
    import zarr

    if read_only:  # a store may be someone else's; only plain numbers, standard codecs
        from .share.safety import check_zarr_metadata, parse_manifest

        rel = f"{HIDDEN_DIR}/zarr.json"
        try:
            meta = fs.read_bytes(rel)
        except FileNotFoundError:
            meta = None  # reported below by zarr, with the store's wording
        if meta is not None:
            check_zarr_metadata(parse_manifest(meta, fs.full(rel)), fs.full(rel))
    try:
        return zarr.open_array(store=fs.zarr_store(HIDDEN_DIR, read_only=read_only), mode="r" if read_only else "r+",
                               zarr_format=3)
    except Exception as e:  # zarr raises several types for a missing/damaged zarr.json
        raise StoreError(f"{fs.full(HIDDEN_DIR)}: cannot open the Zarr array ({type(e).__name__}: {e})") from None


def load_tail(fs: StoreFS, rel: str) -> np.ndarray:
    return np.load(io.BytesIO(fs.read_bytes(rel)), allow_pickle=False)


class HiddenWriter:
    """Buffers hidden rows and writes whole chunks; see the module docstring for the protocol."""

    def __init__(self, fs: LocalFS, sec: dict[str, Any]):
        self.fs = fs
        self.sec = sec  # the committed section; replaced by stage()'s result on commit
        self.nl = len(sec["layers"])
        self.d = sec["hidden_size"]
        self.arr = open_array(fs, read_only=False)
        base = sec["zarr_rows"]
        self._base = base  # first buffered row
        self._bufs: list[np.ndarray] = []
        if sec.get("tail"):
            self._bufs.append(load_tail(fs, sec["tail"]))
        self._pending_rows = sum(len(b) for b in self._bufs)
        if base + self._pending_rows != sec["rows"]:
            raise StoreError(f"{fs.root}: hidden rows {base}+{self._pending_rows} do not match the manifest's "
                             f"{sec['rows']}")

    @property
    def rows(self) -> int:
        return self._base + self._pending_rows

    @property
    def _direct(self) -> bool:
        """Encode chunks here rather than through zarr's per-chunk async pipeline (about 5x faster),
        when the array uses exactly the codecs written by create_array."""
        if not hasattr(self, "_direct_ok"):
            codecs = json.loads(self.fs.read_bytes(f"{HIDDEN_DIR}/zarr.json")).get("codecs")
            self._direct_ok = codecs == DIRECT_CODECS
        return self._direct_ok

    def _write_chunks_direct(self, start: int, stop: int, data: np.ndarray) -> dict[str, list]:
        """Write chunk files [start, stop) (start on a chunk boundary) as Zarr v3 would: C-order
        little-endian bytes, zstd level 1, the edge chunk padded with the fill value 0. Returns the
        chunk index (sha256 and size of every file), hashed from memory.

        Each chunk is touched once per pass that the format needs: one gather of its 64 rows into a
        contiguous block (the rows are strided across layers), zstd, sha256 of the compressed bytes, one
        write. zstd and sha256 release the GIL, so the jobs run in WRITE_THREADS threads."""
        import hashlib
        from concurrent.futures import ThreadPoolExecutor

        from numcodecs import Zstd

        codec = Zstd(level=1, checksum=False)
        dt = data.dtype.newbyteorder("<")
        first, last = start // CHUNK_TOKENS, -(-stop // CHUNK_TOKENS)
        root = self.fs.full(f"{HIDDEN_DIR}/c")
        for ci in range(first, last):  # the directories once, not per chunk
            os.makedirs(os.path.join(root, str(ci)), exist_ok=True)

        def one(job: tuple[int, int]) -> tuple[str, list]:
            ci, j = job
            lo = ci * CHUNK_TOKENS - start
            block = data[lo: lo + CHUNK_TOKENS, j, :]
            if len(block) == CHUNK_TOKENS:  # same bytes as a (64, 1, D) chunk: one contiguous copy
                chunk = np.ascontiguousarray(block, dtype=dt)
            else:  # the edge chunk, padded with the fill value
                chunk = np.zeros((CHUNK_TOKENS, self.d), dtype=dt)
                chunk[: len(block)] = block
            enc = bytes(codec.encode(chunk))  # numcodecs returns bytes already: no copy
            d = os.path.join(root, str(ci), str(j))
            try:
                os.mkdir(d)
            except FileExistsError:
                pass
            with open(os.path.join(d, "0"), "wb", buffering=0) as f:
                f.write(enc)
            return f"c/{ci}/{j}/0", [hashlib.sha256(enc).hexdigest(), len(enc)]

        jobs = [(ci, j) for ci in range(first, last) for j in range(self.nl)]
        if WRITE_THREADS <= 1 or len(jobs) == 1:
            return dict(map(one, jobs))
        with ThreadPoolExecutor(max_workers=WRITE_THREADS) as ex:
            return dict(ex.map(one, jobs))

    def recover(self) -> None:
        """Undo what a crashed commit left: shrink zarr.json to the committed rows, drop orphan chunks."""
        zr = self.sec["zarr_rows"]
        if self.arr.shape[0] != zr:
            self.arr.resize((zr, self.nl, self.d))
        first_orphan = -(-zr // CHUNK_TOKENS)
        for name in self.fs.listdir(f"{HIDDEN_DIR}/c"):
            if name.isdigit() and int(name) >= first_orphan:
                self.fs.rmtree(f"{HIDDEN_DIR}/c/{name}")
        committed = set(self.sec["index"]) | ({self.sec["tail"]} if self.sec.get("tail") else set())
        for name in self.fs.listdir(f"{HIDDEN_DIR}/index"):
            if f"{HIDDEN_DIR}/index/{name}" not in committed:
                self.fs.remove(f"{HIDDEN_DIR}/index/{name}")
        for name in self.fs.listdir(HIDDEN_DIR):
            stray_tail = name.startswith("tail-") and f"{HIDDEN_DIR}/{name}" not in committed
            if stray_tail or name.endswith(".partial"):  # .partial: zarr's own temporary zarr.json
                self.fs.remove(f"{HIDDEN_DIR}/{name}")

    def reopen_partial(self) -> bool:
        """A closed store ends in a partial chunk; turn it back into a tail so no chunk is rewritten.

        Returns True if the caller must commit (the section changed)."""
        zr = self.sec["zarr_rows"]
        if zr % CHUNK_TOKENS == 0 or self._pending_rows:
            return False
        start = zr - zr % CHUNK_TOKENS
        self._bufs = [np.asarray(self.arr[start:zr])]
        self._base = start
        self._pending_rows = zr - start
        return True

    def append(self, h: np.ndarray) -> None:
        self._bufs.append(h)
        self._pending_rows += len(h)

    def stage(self, commit: int) -> tuple[dict[str, Any], dict[str, dict], list[str]]:
        """Write whole chunks, the chunk index part and the tail for ``commit``.

        Returns (new hidden section, files to add to the manifest, files made obsolete by it)."""
        sec = dict(self.sec)
        files: dict[str, dict] = {}
        obsolete: list[str] = []
        buf = np.concatenate(self._bufs) if len(self._bufs) > 1 else (self._bufs[0] if self._bufs else None)
        total = self.rows
        n_full = (total // CHUNK_TOKENS) * CHUNK_TOKENS
        if n_full > self._base:
            self._write_rows(self._base, n_full, buf[: n_full - self._base], commit, sec, files)
        sec["zarr_rows"] = max(n_full, self._base)
        rest = buf[sec["zarr_rows"] - self._base:] if buf is not None else None
        if self.sec.get("tail"):
            obsolete.append(self.sec["tail"])
        if rest is not None and len(rest):
            rel = f"{HIDDEN_DIR}/tail-{commit:06d}.npy"
            bio = io.BytesIO()
            np.save(bio, np.ascontiguousarray(rest), allow_pickle=False)
            self.fs.write_atomic(rel, bio.getvalue())
            sha, size = self.fs.sha256(rel)
            files[rel] = {"sha256": sha, "size": size}
            sec["tail"] = rel
        else:
            sec["tail"] = None
        sec["rows"] = total
        self._staged = (sec["zarr_rows"], rest)
        return sec, files, obsolete

    def _write_rows(self, start: int, stop: int, data: np.ndarray, commit: int, sec: dict, files: dict) -> None:
        if self.arr.shape[0] < stop:
            self.arr.resize((stop, self.nl, self.d))
        if self._direct:
            index = self._write_chunks_direct(start, stop, data)
        else:
            self.arr[start:stop] = data
            index = {}
            for k in chunk_keys(start // CHUNK_TOKENS, -(-stop // CHUNK_TOKENS), self.nl):
                sha, size = self.fs.sha256(f"{HIDDEN_DIR}/{k}")
                index[k] = [sha, size]
        self.fs.makedirs(f"{HIDDEN_DIR}/index")
        rel = f"{HIDDEN_DIR}/index/idx-{commit:06d}.json"
        self.fs.write_atomic(rel, json.dumps({"chunks": index}, separators=(",", ":")).encode())
        sha, size = self.fs.sha256(rel)
        files[rel] = {"sha256": sha, "size": size}
        sec["index"] = list(sec["index"]) + [rel]

    def committed(self, sec: dict[str, Any]) -> None:
        """The manifest naming ``sec`` is on disk: move the buffer forward."""
        zr, rest = self._staged
        self.sec = sec
        self._base = zr
        self._bufs = [rest] if rest is not None and len(rest) else []
        self._pending_rows = len(rest) if rest is not None else 0

    def stage_close(self, commit: int) -> tuple[dict[str, Any], dict[str, dict], list[str]]:
        """Write the final partial chunk, set the exact shape, merge the chunk index into one file."""
        sec = dict(self.sec)
        files: dict[str, dict] = {}
        obsolete: list[str] = []
        if self._pending_rows:
            buf = np.concatenate(self._bufs)
            self._write_rows(self._base, self.rows, buf, commit, sec, files)
            if sec.get("tail"):
                obsolete.append(sec["tail"])
            sec["tail"] = None
            sec["zarr_rows"] = self.rows
        if self.arr.shape[0] != sec["zarr_rows"]:
            self.arr.resize((sec["zarr_rows"], self.nl, self.d))
        if len(sec["index"]) > 1:
            merged: dict[str, Any] = {}
            for rel in sec["index"]:
                merged.update(json.loads(self.fs.read_bytes(rel))["chunks"])
            n_chunks = -(-sec["zarr_rows"] // CHUNK_TOKENS)
            valid = set(chunk_keys(0, n_chunks, self.nl))
            merged = {k: v for k, v in merged.items() if k in valid}
            rel = f"{HIDDEN_DIR}/index/index-{commit:06d}.json"
            self.fs.write_atomic(rel, json.dumps({"chunks": merged}, separators=(",", ":")).encode())
            sha, size = self.fs.sha256(rel)
            files[rel] = {"sha256": sha, "size": size}
            obsolete.extend(r for r in sec["index"] if r != rel)
            for r in obsolete:  # an index part written by this very close is merged too
                files.pop(r, None)
            sec["index"] = [rel]
        self._staged = (sec["zarr_rows"], None)
        return sec, files, obsolete


class HiddenReader:
    """Reads rows of ``hidden`` by token_uid, from the Zarr array and the committed tail."""

    def __init__(self, fs: StoreFS, sec: dict[str, Any]):
        self.fs = fs
        self.sec = sec
        self.layers = list(sec["layers"])
        self._arr = None
        self._tail = None

    @property
    def arr(self):
        if self._arr is None:
            self._arr = open_array(self.fs, read_only=True)
        return self._arr

    @property
    def tail(self) -> np.ndarray | None:
        if self._tail is None and self.sec.get("tail"):
            self._tail = load_tail(self.fs, self.sec["tail"])
        return self._tail

    def read(self, token_uids: Any, layers: Any = None) -> np.ndarray:
        uids = np.asarray(token_uids, dtype=np.int64).reshape(-1)
        n = self.sec["rows"]
        if uids.size and (uids.min() < 0 or uids.max() >= n):
            bad = uids[(uids < 0) | (uids >= n)][0]
            raise KevoError(f"token_uid {int(bad)} has no hidden state (the store has rows 0..{n - 1})")
        if layers is None:
            lidx = list(range(len(self.layers)))
        else:
            if np.isscalar(layers):
                layers = [layers]
            pos = {layer: i for i, layer in enumerate(self.layers)}
            missing = [int(x) for x in layers if int(x) not in pos]
            if missing:
                raise KevoError(f"layer(s) {missing} were not captured; hidden states exist for layers {self.layers}")
            lidx = [pos[int(x)] for x in layers]
        d = self.sec["hidden_size"]
        out = np.empty((uids.size, len(lidx), d), dtype=np.dtype(self.sec["dtype"]))
        zr = self.sec["zarr_rows"]
        in_zarr = uids < zr
        if in_zarr.any():
            sel = uids[in_zarr]
            order = np.argsort(sel, kind="stable")
            uniq, inv = np.unique(sel[order], return_inverse=True)
            try:
                block = self.arr.get_orthogonal_selection((uniq, lidx, slice(None)))
            except Exception as e:  # a damaged chunk surfaces as a codec or shape error
                raise CorruptStoreError(f"{self.fs.root}: hidden states unreadable ({type(e).__name__}: {e}); "
                                        f"run `kevo store verify {self.fs.root}`") from None
            tmp = np.empty((sel.size, len(lidx), d), dtype=out.dtype)
            tmp[order] = block[inv]
            out[in_zarr] = tmp
        if (~in_zarr).any():
            out[~in_zarr] = self.tail[uids[~in_zarr] - zr][:, lidx]
        if self.sec["logical_dtype"] == "bfloat16":
            return bf16_bits_to_float32(out)
        return out
