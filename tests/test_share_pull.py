"""Pull a store from a real S3 API (moto server on loopback): whole, or only some tables and layers.

What must hold: a whole pull is bit-identical and verifies; a partial pull brings exactly the named
tables and the Zarr chunks of the named layers (plus the array metadata), says so in its manifest,
verifies, and refuses to answer from what it left out; pulled stores are read-only; a tampered
object stops the pull and leaves no store behind.
"""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from kevo_store import StoreWriter, open_store
from kevo_store.errors import KevoError
from kevo_store.schema import KEYS, TABLES
from tests.share_helpers import synth, write_sample_range

N_SAMPLES, N_TOKENS, N_LAYERS = 6, 10, 24


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("pull") / "amber.kevo"
    write_sample_range(path, synth(n_samples=N_SAMPLES, n_tokens=N_TOKENS, n_layers=N_LAYERS), 0, N_SAMPLES)
    return path


@pytest.fixture
def pushed(s3, local_store):
    url = s3.url("lab/amber.kevo")
    s3.run_kevo("store", "push", local_store, url, check=True)
    return url


def _ordered(table: str) -> str:
    return f"SELECT * FROM {table} ORDER BY {', '.join(KEYS[table])}"


def _files(root) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_whole_pull_is_identical_and_verifies(s3, pushed, local_store, tmp_path):
    dest = tmp_path / "copy.kevo"
    p = s3.run_kevo("store", "pull", pushed, dest, check=True)
    assert "every checksum verified" in p.stdout
    v = s3.run_kevo("store", "verify", dest)
    assert v.returncode == 0, v.stderr
    assert _files(dest) == _files(local_store) - {".lock"}
    assert json.loads((dest / "manifest.json").read_bytes()) == json.loads((local_store / "manifest.json").read_bytes())
    with open_store(local_store) as a, open_store(dest) as b:
        for t in TABLES:
            assert a.arrow(_ordered(t)).equals(b.arrow(_ordered(t))), t
        uids = np.arange(a.rows("tokens"))
        assert np.array_equal(a.hidden(uids).view(np.uint16), b.hidden(uids).view(np.uint16))
    # read-only files
    for f in dest.rglob("*"):
        if f.is_file():
            assert not f.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH), f


def test_partial_pull_brings_only_the_named_tables_and_layers(s3, pushed, local_store, tmp_path):
    dest = tmp_path / "part.kevo"
    p = s3.run_kevo("store", "pull", pushed, dest, "--tables", "samples,tokens", "--tables", "vocab",
                    "--layers", "20-22", check=True)
    assert "partial store" in p.stdout and "layers 20,21,22" in p.stdout
    with open_store(local_store) as full:
        m = full.manifest
        want_tables = {f for t in ("samples", "tokens", "vocab") for f in m["tables"][t]["files"]}
        h = full.manifest["hidden"]
        n_shards = -(-full.rows("tokens") // h["shard_tokens"])
    got = _files(dest)
    assert {f for f in got if f.startswith("tables/")} == want_tables
    shards = {f for f in got if f.startswith("hidden/hidden/c/")}
    # layer axis position == layer number here (all 24 layers captured): positions 20, 21, 22
    assert shards == {f"hidden/hidden/c/{i}/{j}/0" for i in range(n_shards) for j in (20, 21, 22)}
    # the coordinates and every array's metadata come whole
    assert {f"hidden/{c}/c/{i}" for c in ("token_uid", "sample_id") for i in range(n_shards)} <= got
    assert {"hidden/zarr.json", "hidden/hidden/zarr.json", "hidden/layer/c/0", "hidden/layer/zarr.json"} <= got
    pm = json.loads((dest / "manifest.json").read_text())
    assert pm["partial"] == {"source": pushed, "omitted_tables": ["errors", "layers", "topk"],
                             "hidden_layers": [20, 21, 22]}

    # verify passes, and knows the rest is missing on purpose
    v = s3.run_kevo("store", "verify", dest)
    assert v.returncode == 0, v.stderr
    assert "partial pull" in v.stderr and "layers 20-22" in v.stderr

    # what was pulled answers exactly; what was left out refuses
    with open_store(local_store) as a, open_store(dest) as b:
        assert a.arrow(_ordered("tokens")).equals(b.arrow(_ordered("tokens")))
        uids = np.arange(a.rows("tokens"))
        assert np.array_equal(a.hidden(uids, layers=[20, 22]).view(np.uint16),
                              b.hidden(uids, layers=[20, 22]).view(np.uint16))
        assert b.hidden_layers == [20, 21, 22]
        assert np.array_equal(b.hidden(uids[:5]).view(np.uint16),
                              a.hidden(uids[:5], layers=[20, 21, 22]).view(np.uint16))
        with pytest.raises(KevoError, match=r"partial pull.*layer\(s\) \[3\]"):
            b.hidden(uids, layers=[3])
        with pytest.raises(KevoError, match="layers"):
            b.sql("SELECT count(*) FROM layers")
    q = s3.run_kevo("sql", dest, "SELECT count(*) AS n FROM tokens", "--format", "csv", check=True)
    assert q.stdout.split() == ["n", str(N_SAMPLES * N_TOKENS)]
    q = s3.run_kevo("sql", dest, "SELECT count(*) FROM topk")
    assert q.returncode == 1 and "topk" in q.stderr

    # and it is read-only for writers
    with pytest.raises(KevoError, match="partial pull"):
        StoreWriter(dest)

    # damage a kept file: verify of the partial store catches it
    victim = dest / sorted(want_tables)[0]
    os.chmod(victim, 0o644)
    data = bytearray(victim.read_bytes())
    data[10] ^= 0xFF
    victim.write_bytes(bytes(data))
    v = s3.run_kevo("store", "verify", dest)
    assert v.returncode == 1 and sorted(want_tables)[0] in v.stderr


def test_pull_without_hidden_states(s3, pushed, tmp_path):
    dest = tmp_path / "nohidden.kevo"
    s3.run_kevo("store", "pull", pushed, dest, "--no-hidden", check=True)
    assert not (dest / "hidden").exists()
    assert s3.run_kevo("store", "verify", dest).returncode == 0
    with open_store(dest) as s:
        assert s.rows("layers") == N_SAMPLES * N_TOKENS * N_LAYERS
        assert s.sql("SELECT count(*) AS n FROM layers")["n"][0] == N_SAMPLES * N_TOKENS * N_LAYERS
        with pytest.raises(KevoError, match="partial pull"):
            s.hidden([0])


def test_pull_refuses_bad_requests_with_clear_messages(s3, pushed, tmp_path):
    p = s3.run_kevo("store", "pull", pushed, tmp_path / "a", "--tables", "layres")
    assert p.returncode == 1 and "layres" in p.stderr and "samples" in p.stderr
    p = s3.run_kevo("store", "pull", pushed, tmp_path / "b", "--layers", "30-40")
    assert p.returncode == 1 and "30" in p.stderr and "0-23" in p.stderr
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    p = s3.run_kevo("store", "pull", pushed, tmp_path / "c")
    assert p.returncode == 1 and "not an empty directory" in p.stderr
    assert (tmp_path / "c" / "notes.txt").read_text() == "mine"
    p = s3.run_kevo("store", "pull", s3.url("nothing/here.kevo"), tmp_path / "d")
    assert p.returncode == 1 and "not a kevo store" in p.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "d").exists()


def test_pull_of_a_tampered_object_is_refused_and_leaves_nothing(s3, pushed, local_store, tmp_path):
    with open_store(local_store) as s:
        victim = s.manifest["tables"]["layers"]["files"][0]
    path = f"{s3.bucket}/lab/amber.kevo/{victim}"
    data = bytearray(s3.fs.cat_file(path))
    data[len(data) // 3] ^= 0x55
    s3.fs.pipe_file(path, bytes(data))
    dest = tmp_path / "t.kevo"
    p = s3.run_kevo("store", "pull", pushed, dest)
    assert p.returncode == 1
    assert victim in p.stderr and "checksum" in p.stderr
    assert not dest.exists()
    # a partial pull that does not need the damaged object still works (and verifies)
    s3.run_kevo("store", "pull", pushed, dest, "--tables", "samples", "--no-hidden", check=True)
    assert s3.run_kevo("store", "verify", dest).returncode == 0
