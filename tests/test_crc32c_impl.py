"""The two crc32c implementations kevo can check shards with (the ``fast`` extra's ``crc32c`` package,
and google-crc32c, Zarr's own) give the same checksums, so a store written with either reads and
verifies with the other; and Zarr itself reads what kevo's direct path wrote."""

from __future__ import annotations

import numpy as np
import pytest

from kevo_store import StoreWriter, open_store
from kevo_store import shards as sh
from kevo_store.verify import verify_store


def _google(buf) -> int:
    import google_crc32c

    if isinstance(buf, memoryview):
        buf = np.frombuffer(buf, dtype=np.uint8)
    return google_crc32c.value(buf)


def test_known_value_and_agreement():
    # the crc32c check value of RFC 3720 (iSCSI): "123456789" -> 0xE3069283
    assert sh.CRC32C(b"123456789") == 0xE3069283 == _google(b"123456789")
    assert sh.crc32c(b"123456789") == np.uint32(0xE3069283).tobytes()
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 64, 4099, 1 << 20, (2 << 20) + 3):
        a = rng.integers(0, 256, n, dtype=np.uint8)
        mv = memoryview(a)[1:] if n else memoryview(a)
        assert sh.CRC32C(a) == _google(a), n
        assert sh.CRC32C(mv) == _google(mv), n


def _store(path, h):
    n = len(h)
    meta = {"model": {"id": "crc", "n_layers": h.shape[1] - 1, "hidden_size": h.shape[2]},
            "lens": {"modes": ["final_norm"], "top_k": 0}}
    with StoreWriter(path, meta=meta, hidden_size=h.shape[2], hidden_layers=list(range(h.shape[1])),
                     hidden_dtype="float16") as w:
        for b, s in enumerate(range(0, n, 300)):
            m = min(300, n - s)
            w.write_batch(samples={"sample_key": [f"s{b}"], "dataset": ["t"]},
                          tokens={"token_uid": np.arange(m, dtype=np.int64), "sample_key": [f"s{b}"] * m,
                                  "step": np.arange(m, dtype=np.int32), "position": np.arange(m, dtype=np.int32),
                                  "role": ["generated"] * m, "token_id": np.zeros(m, np.int32)},
                          hidden=h[s: s + m])


@pytest.mark.skipif(sh.CRC32C_IMPL != "crc32c", reason="the fast extra (crc32c) is not installed")
def test_store_written_with_one_implementation_reads_with_the_other(tmp_path, monkeypatch):
    import zarr

    h = np.random.default_rng(1).standard_normal((1300, 3, 64)).astype(np.float16)
    fast = sh.CRC32C
    monkeypatch.setattr(sh, "CRC32C", _google)
    _store(tmp_path / "g.kevo", h)
    monkeypatch.setattr(sh, "CRC32C", fast)
    _store(tmp_path / "f.kevo", h)
    for name, impl in (("g", fast), ("f", _google)):  # each read and verified with the other
        monkeypatch.setattr(sh, "CRC32C", impl)
        path = tmp_path / f"{name}.kevo"
        assert verify_store(path).ok
        with open_store(path) as s:
            assert np.array_equal(s.hidden(np.arange(1300), layers=[1])[:, 0], h[:, 1])
            assert np.array_equal(s.hidden(np.arange(0, 1300, 7)), h[::7])
        # Zarr's own reader (its crc32c codec: google-crc32c) on the same shards
        arr = zarr.open_array(store=str(path / "hidden" / "hidden"), mode="r")
        assert np.array_equal(arr[:], h)
    g, f = (sorted(p.relative_to(tmp_path / n) for p in (tmp_path / n / "hidden").rglob("c/*/*/0")) for n in "gf")
    assert g == f and all((tmp_path / "g.kevo" / p).read_bytes() == (tmp_path / "f.kevo" / p).read_bytes() for p in g)
