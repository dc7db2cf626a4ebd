"""Format v1 stores (tests/fixtures/v1, written by kevo before format v2) stay readable, and
`kevo store upgrade` rewrites them as v2 with the same tables and hidden bytes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import store_helpers as H

from kevo_store import StoreWriter, open_store
from kevo_store.errors import CorruptStoreError, StoreError
from kevo_store.schema import KEYS, TABLES
from kevo_store.upgrade import upgrade_store
from kevo_store.verify import verify_store

V1 = Path(__file__).parent / "fixtures" / "v1"
# how the fixtures were written (by the v1 writer): tests/store_helpers.py's batches 0..3
FIXTURES = {"closed": "float16", "open": "bfloat16"}


def _want_hidden(dtype: str) -> np.ndarray:
    h = np.concatenate([H.batch(b, hidden_dtype=dtype)["hidden"] for b in range(4)])
    return h if dtype == "float16" else (h.astype(np.uint32) << 16).view(np.float32)


def _tables(path) -> dict:
    with open_store(path) as s:
        return {t: s.arrow(f"SELECT * FROM {t} ORDER BY {', '.join(KEYS[t])}") for t in TABLES if t in s.tables}


def _copy(name: str, tmp_path) -> Path:
    dst = tmp_path / f"{name}.kevo"
    shutil.copytree(V1 / name, dst)
    return dst


@pytest.mark.parametrize("name", FIXTURES)
def test_v1_store_reads_as_it_did(name, tmp_path):
    s_path = _copy(name, tmp_path)
    m = json.loads((s_path / "manifest.json").read_text())
    assert m["format_version"] == 1 and "shard_tokens" not in m["hidden"]
    want = _want_hidden(FIXTURES[name])
    with open_store(s_path) as s:
        got = s.hidden(np.arange(s.rows("tokens")))
        assert got.tobytes() == want.tobytes()
        assert s.hidden([5, 0], layers=[3]).tobytes() == want[[5, 0]][:, [3]].tobytes()
    assert verify_store(s_path).ok
    # a writer does not extend it: it says how to upgrade
    with pytest.raises(StoreError, match="kevo store upgrade"):
        StoreWriter(s_path, meta=H.META, hidden_size=H.HIDDEN, hidden_dtype=FIXTURES[name])


def test_v1_chunks_are_checked_on_read(tmp_path):
    s_path = _copy("closed", tmp_path)
    chunk = s_path / "hidden" / "c" / "1" / "2" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    with open_store(s_path) as s:
        with pytest.raises(CorruptStoreError, match="hidden/c/1/2/0 does not match its sha256"):
            s.hidden(np.arange(64, 128), layers=[2])
        s.hidden(np.arange(64, 128), layers=[1])


@pytest.mark.parametrize("name", FIXTURES)
def test_upgrade_rewrites_v1_as_v2_with_the_same_data(name, tmp_path):
    s_path = _copy(name, tmp_path)
    before = _tables(s_path)
    r = subprocess.run([sys.executable, "-m", "kevo_store.cli", "store", "upgrade", str(s_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "v1 -> v2" in r.stdout
    m = json.loads((s_path / "manifest.json").read_text())
    assert m["format_version"] == 2 and m["hidden"]["shard_tokens"] and m["hidden"]["tails"] == []
    assert not (s_path / "hidden" / "c").exists() and not list((s_path / "hidden").glob("tail-*"))
    assert json.loads((s_path / "hidden" / "zarr.json").read_text())["node_type"] == "group"
    rep = verify_store(s_path)
    assert rep.ok, rep.problems
    assert _tables(s_path) == before
    want = _want_hidden(FIXTURES[name])
    with open_store(s_path) as s:
        assert s.hidden(np.arange(s.rows("tokens"))).tobytes() == want.tobytes()
    # again: nothing to do
    assert upgrade_store(s_path).upgraded is False
    # and now a writer resumes it: the rest of the batches, as a v2 store written in one go has them
    H.write_store(s_path, 6, hidden_dtype=FIXTURES[name])
    ref = tmp_path / "ref.kevo"
    H.write_store(ref, 6, hidden_dtype=FIXTURES[name])
    assert verify_store(s_path).ok
    with open_store(s_path) as a, open_store(ref) as b:
        n = a.rows("tokens")
        assert n == b.rows("tokens") and a.hidden(np.arange(n)).tobytes() == b.hidden(np.arange(n)).tobytes()
    assert _tables(s_path) == _tables(ref)


def test_upgrade_interrupted_after_its_commit_is_finished_by_running_it_again(tmp_path):
    s_path = _copy("closed", tmp_path)
    import kevo_store.upgrade as U

    orig = U._finish
    U._finish = lambda fs, m: (_ for _ in ()).throw(KeyboardInterrupt())  # dies right after the commit
    try:
        with pytest.raises(KeyboardInterrupt):
            upgrade_store(s_path)
    finally:
        U._finish = orig
    # committed v2, v1 leftovers still there: reads work, verify points at the unfinished upgrade
    with open_store(s_path) as s:
        assert s.hidden(np.arange(s.rows("tokens"))).tobytes() == _want_hidden("float16").tobytes()
    rep = verify_store(s_path)
    assert not rep.ok and "kevo store upgrade" in " ".join(rep.problems)
    assert upgrade_store(s_path).upgraded is False
    assert verify_store(s_path).ok and not (s_path / "hidden" / "c").exists()
