"""The Polars engine reads a table's files from the store (Store.table_files): on an s3:// store (a real
S3 API, moto on loopback) it answers as DuckDB and the local copy do, and on a partial pull it refuses
a table that was left out, naming it."""

from __future__ import annotations

import pytest

import queries
from kevo_store import open_store
from kevo_store.errors import KevoError
from queries.testing import build_synthetic_store
from tests.queries_helpers import assert_frames_close

NAMES = ["critical-layers", "mutation-events", "stages", "hallucination-contrast", "top-candidates"]


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("remote") / "planted.kevo"
    truth = build_synthetic_store(path, n_samples=6, n_tokens=6, seed=4, batch_samples=4)
    return str(path), truth


@pytest.fixture
def pushed(s3, local_store):
    url = s3.url("lab/planted.kevo")
    s3.run_kevo("store", "push", local_store[0], url, check=True)
    return url


def test_table_files_are_the_manifest_s(local_store):
    path, _ = local_store
    s = open_store(path)
    files = s.table_files("layers")
    assert files == [s.fs.full(f) for f in s.manifest["tables"]["layers"]["files"]] and len(files) == 2
    with pytest.raises(KevoError, match="has no table 'layerz'"):
        s.table_files("layerz")


def test_polars_engine_on_an_s3_store(s3, pushed, local_store):
    path, _ = local_store
    remote = open_store(pushed)
    assert all(f.endswith(".parquet") for f in remote.table_files("layers"))
    for name in NAMES:
        kw = {"token_uid": 1} if name == "top-candidates" else {}
        want = queries.run(path, name, **kw)
        assert want.height > 0, name
        assert_frames_close(queries.run(remote, name, engine="polars", **kw), want)
        assert_frames_close(queries.run(pushed, name, engine="duckdb", **kw), want)
    both = queries.run([pushed, path], "compare-stores", engine="polars").row(0, named=True)
    assert both["token_agreement"] == 1.0 and both["n_token_pairs"] == 36
    # through the store's read-only filesystem: it opened the layers files, and only files the manifest names
    duck_fs = remote.fs.fsspec()
    assert set(duck_fs.bytes_read_by) >= {f.split("://", 1)[1] for f in remote.table_files("layers")}


def test_polars_engine_refuses_a_table_a_partial_pull_left_out(s3, pushed, local_store, tmp_path):
    dest = tmp_path / "part.kevo"
    s3.run_kevo("store", "pull", pushed, dest, "--tables", "samples,tokens,vocab", check=True)
    part = open_store(dest)
    with pytest.raises(KevoError, match=r"table 'layers' is not in this store: a partial pull"):
        part.table_files("layers")
    for engine in ("polars", "duckdb"):
        with pytest.raises(KevoError, match="layers"):
            queries.run(dest, "critical-layers", engine=engine)
    # what it kept still answers, in both engines
    q = "SELECT COUNT(*) AS n FROM tokens"
    assert part.sql(q)["n"][0] == 36
    assert queries.run_polars(q, [part])["n"][0] == 36
    r = s3.run_kevo("query", "stages", str(dest), "--engine", "polars")
    assert r.returncode == 1 and "table 'layers' is not in this store" in r.stderr and "Traceback" not in r.stderr


def test_polars_engine_on_an_http_store(local_store):
    """An https:// store (here plain http on loopback: the same read-only filesystem, no listings)."""
    from pathlib import Path

    from tests.share_helpers import static_http_server

    path, _ = local_store
    with static_http_server(Path(path).parent) as base:
        url = f"{base}/{Path(path).name}"
        for name in ("critical-layers", "mutation-events"):
            assert_frames_close(queries.run(url, name, engine="polars"), queries.run(path, name))
