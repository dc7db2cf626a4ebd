"""A one-layer read of whole inner chunks maps the shard files' pages instead of copying them
(kevo_store/memory.py ``Mapping``, HiddenReader._map_rows).

The store here has inner chunks of exactly one page (8 tokens x 256 x float16 = 4,096 bytes), so the
writer pads them to page boundaries and the reader maps them, as it does at D = 4,096 (2 MiB chunks);
``MAP_MIN_BYTES`` is lowered so that these small reads qualify. Every value is checked against the
bytes written and against Zarr's own reader; a flipped byte, a budget of mappings spent, a shard
rewritten under a mapped array and shards written before the padding all behave."""

from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest

from kevo_store import CorruptStoreError, StoreWriter, memory, open_store
from kevo_store import shards as sh
from kevo_store.hidden import bf16_bits_to_float32, float32_to_bf16_bits

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not memory.can_map(),
                                reason="mapping shard chunks needs Linux's MAP_FIXED")

D, CT, ST, LAYERS = 256, 8, 32, 3
META = {"model": {"id": "mapped-test", "n_layers": LAYERS - 1, "hidden_size": D},
        "lens": {"modes": ["final_norm"], "top_k": 0}}


@pytest.fixture(autouse=True)
def _small_reads_map(monkeypatch):
    monkeypatch.setattr(memory, "MAP_MIN_BYTES", 1)


def _batch(b: int, n: int, dtype: str):
    rng = np.random.default_rng(b)
    h32 = rng.standard_normal((n, LAYERS, D)).astype(np.float32)
    h = h32.astype(np.float16) if dtype == "float16" else float32_to_bf16_bits(h32)
    key = f"mapped:{b}"
    return dict(samples={"sample_key": [key], "dataset": ["mapped"]},
                tokens={"token_uid": np.arange(n, dtype=np.int64), "sample_key": [key] * n,
                        "step": np.arange(n, dtype=np.int32), "position": np.arange(n, dtype=np.int32),
                        "role": ["generated"] * n, "token_id": np.zeros(n, np.int32)},
                hidden=h)


def _write(path, sizes, dtype="float16", close=True):
    w = StoreWriter(path, meta=META, hidden_size=D, hidden_layers=list(range(LAYERS)), hidden_dtype=dtype,
                    hidden_shard_tokens=ST, hidden_chunk_tokens=CT)
    batches = [_batch(b, n, dtype) for b, n in enumerate(sizes)]
    for bt in batches:
        w.write_batch(**bt)
    w.close() if close else w.abort()
    return np.concatenate([bt["hidden"] for bt in batches])


def _logical(bits, dtype):
    return bits if dtype == "float16" else bf16_bits_to_float32(bits)


def _is_mapped(a: np.ndarray) -> bool:
    base = a
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_mapped_layer_is_the_written_bytes_and_zarrs(tmp_path, dtype):
    path = tmp_path / "s.kevo"
    written = _write(path, [40, 37, 20], dtype)  # 97 rows: three whole shards and a partial one (absent chunks)
    before = memory.mapped_now()
    with open_store(path) as s:
        n = s.rows("tokens")
        sec = s.manifest["hidden"]
        shard = path / "hidden" / sh.shard_key(1, 0)
        index = np.frombuffer(shard.read_bytes()[-4 - 16 * (ST // CT): -4], "<u8").reshape(-1, 2)
        assert (index[:, 0] % sh.PAGE == 0).all() and (index[:, 1] == CT * D * 2 + 4).all()  # page-aligned chunks
        for j in s.hidden_layers:
            got = s.hidden(np.arange(n), layers=[j])
            assert np.array_equal(got.view(np.uint8), _logical(written[:, [j]], dtype).view(np.uint8))
            if dtype == "float16":  # bf16 is converted to float32, a new array; its bits were mapped first
                assert _is_mapped(got)
            part = s.hidden(np.arange(CT, 3 * CT + 5), layers=[j])  # from a chunk's first row, a partial last chunk
            assert np.array_equal(part.view(np.uint8), _logical(written[CT: 3 * CT + 5, [j]], dtype).view(np.uint8))
        if dtype == "float16":  # ``got`` of the last layer still maps its chunks: the kernel lists the files
            assert memory.mapped_now() > before
            with open("/proc/self/maps") as f:
                maps = f.read()
            assert str(path / "hidden" / sh.shard_key(1, s.hidden_layers[-1])) in maps
        import zarr

        z = zarr.open_array(store=str(path / "hidden" / "hidden"), mode="r", zarr_format=3)
        assert z.shape[0] == sec["zarr_rows"] == n
        assert np.array_equal(np.asarray(z[:, 1]).view(np.uint16), written[:, 1].view(np.uint16))


def test_mapped_arrays_are_private_and_outlive_the_store_and_a_rewritten_shard(tmp_path):
    path = tmp_path / "s.kevo"
    written = _write(path, [40, 10])  # closed on a partial shard (rows 32..49)
    shard = path / "hidden" / sh.shard_key(1, 2)
    on_disk = shard.read_bytes()
    with open_store(path) as s:
        a = s.hidden(np.arange(50), layers=[2])
    assert _is_mapped(a)
    a[:] = 0  # copy-on-write: the file is untouched
    assert shard.read_bytes() == on_disk
    with open_store(path) as s:
        b = s.hidden(np.arange(50), layers=[2])
    assert np.array_equal(b[:, 0], written[:, 2])
    # the store grows: its partial shard is written again, whole, as a new file renamed over the old
    w = StoreWriter(path, meta=META, hidden_size=D, hidden_layers=list(range(LAYERS)),
                    hidden_shard_tokens=ST, hidden_chunk_tokens=CT)
    more = _batch(7, 30, "float16")
    w.write_batch(**more)
    w.close()
    assert shard.read_bytes() != on_disk
    assert np.array_equal(b[:, 0], written[:, 2])  # still the bytes that were checked when b was read
    with open_store(path) as s:
        c = s.hidden(np.arange(80), layers=[2])
    assert np.array_equal(c[:, 0], np.concatenate([written, more["hidden"]])[:, 2])
    assert not list(path.rglob("*.tmp-*"))


def test_a_flipped_byte_in_a_mapped_chunk_is_refused_by_name(tmp_path):
    path = tmp_path / "s.kevo"
    _write(path, [64])
    shard = path / "hidden" / sh.shard_key(1, 0)
    data = bytearray(shard.read_bytes())
    data[CT * D * 2 + sh.PAGE + 100] ^= 0x01  # inside the second inner chunk
    shard.write_bytes(bytes(data))
    with open_store(path) as s:
        with pytest.raises(CorruptStoreError, match=r"hidden shard hidden/hidden/c/1/0/0 does not match"):
            s.hidden(np.arange(64), layers=[0])
        assert np.array_equal(s.hidden(np.arange(32), layers=[1])[:, 0], s.hidden(np.arange(32))[:, 1])


def test_past_the_mapping_budget_the_rest_is_copied(tmp_path, monkeypatch):
    path = tmp_path / "s.kevo"
    written = _write(path, [96])
    monkeypatch.setattr(memory, "MAX_MAPPED", memory.mapped_now() + 3)
    with open_store(path) as s:
        a = s.hidden(np.arange(96), layers=[1])  # 12 chunks: 3 mapped, 9 copied
        assert memory.mapped_now() == memory.MAX_MAPPED
        assert np.array_equal(a[:, 0], written[:, 1])
        del a
        import gc

        gc.collect()
        assert memory.mapped_now() == memory.MAX_MAPPED - 3  # released with the array


def test_shards_written_without_padding_are_read_by_copying(tmp_path):
    """Stores written before chunks were padded to pages: the chunks are not page-aligned, so they are
    read in (the shard's first, at offset 0, is still mapped)."""
    path = tmp_path / "s.kevo"
    stride = sh.chunk_stride
    sh.chunk_stride = lambda step: step + 4  # the layout before the padding
    try:
        written = _write(path, [64, 33])
    finally:
        sh.chunk_stride = stride
    index = np.frombuffer((path / "hidden" / sh.shard_key(0, 0)).read_bytes()[-4 - 64: -4], "<u8").reshape(-1, 2)
    assert (index[1:, 0] % sh.PAGE != 0).all()
    with open_store(path) as s:
        for j in range(LAYERS):
            assert np.array_equal(s.hidden(np.arange(97), layers=[j])[:, 0], written[:, j])


def test_verify_finds_a_changed_byte_in_the_padding_that_reads_never_touch(tmp_path):
    from kevo_store.verify import verify_store

    path = tmp_path / "s.kevo"
    written = _write(path, [64])
    assert verify_store(path).ok
    shard = path / "hidden" / sh.shard_key(0, 1)
    data = bytearray(shard.read_bytes())
    data[CT * D * 2 + 4 + 10] = 0x5A  # after chunk 0's crc32c, before chunk 1: the page padding
    shard.write_bytes(bytes(data))
    with open_store(path) as s:  # the data and every crc32c are intact: reads are right
        assert np.array_equal(s.hidden(np.arange(64), layers=[1])[:, 0], written[:, 1])
    rep = verify_store(path)
    assert not rep.ok and any(sh.shard_key(0, 1) in p and "not zeros" in p for p in rep.problems), rep.problems


def test_an_index_pointing_past_the_file_is_refused_not_mapped(tmp_path):
    """A shard index with a valid crc32c whose offset points past the end of the file (a hostile store):
    mapping it would fault (SIGBUS) when the crc32c pass reads it; the read refuses it by name."""
    path = tmp_path / "s.kevo"
    _write(path, [64])
    shard = path / "hidden" / sh.shard_key(1, 0)
    data = bytearray(shard.read_bytes())
    isz = 16 * (ST // CT)
    index = np.frombuffer(bytes(data[-4 - isz: -4]), "<u8").reshape(-1, 2).copy()
    index[1, 0] = (len(data) // sh.PAGE + 10) * sh.PAGE  # page-aligned, far past the end
    ib = index.tobytes()
    data[-4 - isz:] = ib + sh.crc32c(ib)
    shard.write_bytes(bytes(data))
    with open_store(path) as s:
        with pytest.raises(CorruptStoreError, match=r"hidden/hidden/c/1/0/0"):
            s.hidden(np.arange(64), layers=[0])
