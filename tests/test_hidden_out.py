"""`Store.hidden(..., out=buf)`: the same values as a fresh read, into the caller's buffer (reused layer after
layer), on every read path (a whole layer straight from the shards, an unsorted subset, rows still in tails),
fp16 and bf16; a buffer of the wrong shape or dtype is refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import store_helpers as H

from kevo_store import KevoError, open_store


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("close", [True, False])
def test_out_equals_a_fresh_read_on_every_path(tmp_path, dtype, close):
    path = tmp_path / "s.kevo"
    w = H.write_store(path, 6, hidden_dtype=dtype, close=False)  # 301 tokens: a partial last shard
    w.close() if close else w.abort()  # open: rows past the last whole shard are in tails
    with open_store(path) as s:
        n = s.rows("tokens")
        assert close or s.manifest["hidden"]["tails"]
        rd = np.float32 if dtype == "bfloat16" else np.float16
        buf = np.full((n, 1, H.HIDDEN), np.nan, dtype=rd)
        for layer in s.hidden_layers:  # one buffer, every layer
            want = s.hidden(np.arange(n), layers=[layer])
            got = s.hidden(np.arange(n), layers=[layer], out=buf)
            assert got is buf and np.array_equal(buf.view(np.uint8), want.view(np.uint8))
        uids = np.random.default_rng(0).permutation(n)[:37]  # unsorted: the assembling path
        part = np.empty((37, len(s.hidden_layers), H.HIDDEN), dtype=rd)
        assert np.array_equal(s.hidden(uids, out=part).view(np.uint8), s.hidden(uids).view(np.uint8))


def test_a_wrong_buffer_is_refused_by_name(tmp_path):
    path = tmp_path / "s.kevo"
    H.write_store(path, 2)
    with open_store(path) as s:
        n = s.rows("tokens")
        for bad in (np.empty((n, 1, H.HIDDEN), np.float32), np.empty((n - 1, 1, H.HIDDEN), np.float16),
                    np.empty((H.HIDDEN, 1, n), np.float16).T, np.empty((n, 1, H.HIDDEN), np.float16)[::-1]):
            with pytest.raises(KevoError, match=r"out= must be a writeable C-contiguous float16 array of shape"):
                s.hidden(np.arange(n), layers=[s.hidden_layers[0]], out=bad)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_arrays_backed_by_huge_pages_hold_the_written_bytes(tmp_path, monkeypatch, dtype):
    """Large results come back in their own huge-page mapping (kevo_store.memory.new_array); with its
    threshold at 1 byte every read path uses it: the values are the written ones, bit for bit, and the
    arrays behave as numpy's own (writeable, contiguous, picklable, alive after the store closes)."""
    import mmap
    import pickle

    import kevo_store.hidden as hidden
    import kevo_store.memory as memory

    monkeypatch.setattr(memory, "HUGE_ARRAY_BYTES", 1)
    path = tmp_path / "s.kevo"
    w = H.write_store(path, 6, hidden_dtype=dtype, close=False)
    w.abort()  # rows past the last whole shard stay in tails: the assembling path reads them
    written = np.concatenate([H.batch(b, hidden_dtype=dtype)["hidden"] for b in range(6)])
    want = written if dtype == "float16" else hidden.bf16_bits_to_float32(written)
    with open_store(path) as s:
        n = s.rows("tokens")
        whole = s.hidden(np.arange(n), layers=[s.hidden_layers[2]])  # sorted and distinct: straight from the shards
        uids = np.random.default_rng(1).permutation(n)[:41]  # unsorted, some in tails
        part = s.hidden(uids)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # Linux: the result's memory is its own mapping
        base = whole.base
        while isinstance(base, np.ndarray):
            base = base.base
        assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)
    assert np.array_equal(whole.view(np.uint8), want[:, [2]].view(np.uint8))
    assert np.array_equal(part.view(np.uint8), want[uids].view(np.uint8))
    assert whole.flags.writeable and whole.flags.c_contiguous
    whole[0] = 0
    assert np.array_equal(pickle.loads(pickle.dumps(part)), part)
