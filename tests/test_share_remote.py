"""Push a store to a real S3 API (moto server on loopback) and read it in place.

What must hold: the real `kevo` command pushes and queries a store at an s3:// URL; the Python
reader gives bit-identical tables and hidden states; a query downloads only what it touches;
`kevo store verify URL` checks a remote store and finds a tampered object by its checksum; a push
killed mid-way leaves nothing that opens as a store, and pushing again completes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from kevo_store import open_store
from kevo_store.errors import KevoError
from kevo_store.schema import KEYS, TABLES
from tests.share_helpers import KEVO, synth, write_sample_range


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    """A small closed store with hidden states (24 layers, D=16) written through StoreWriter."""
    path = tmp_path_factory.mktemp("share") / "amber.kevo"
    write_sample_range(path, synth(n_samples=6, n_tokens=10), 0, 6, batch_samples=2)
    return path


def _ordered(table: str) -> str:
    return f"SELECT * FROM {table} ORDER BY {', '.join(KEYS[table])}"


def test_push_then_query_in_place_through_the_cli(s3, local_store):
    url = s3.url("stores/amber.kevo")
    p = s3.run_kevo("store", "push", local_store, url, check=True)
    assert "pushed" in p.stdout
    keys = s3.keys("stores/amber.kevo")
    assert "manifest.json" in keys and any(k.startswith("hidden/hidden/c/") for k in keys)

    # kevo sql on the URL: the same answer as on the local store
    q = "SELECT layer, round(avg(p_out), 6) AS p FROM layers GROUP BY layer ORDER BY layer"
    remote = s3.run_kevo("sql", url, q, "--format", "json", check=True)
    local = s3.run_kevo("sql", local_store, q, "--format", "json", check=True)
    assert json.loads(remote.stdout) == json.loads(local.stdout)
    assert len(json.loads(remote.stdout)) == 24

    # a named analysis (`kevo query`) on the URL: the same rows as on the local store
    def rows(out: str) -> list[str]:
        return [ln for ln in out.splitlines() if not ln.startswith("#")]  # the comment names the store

    remote = s3.run_kevo("query", "critical-layers", url, "--format", "csv", "--max-rows", "-1", check=True)
    local = s3.run_kevo("query", "critical-layers", local_store, "--format", "csv", "--max-rows", "-1", check=True)
    assert rows(remote.stdout) == rows(local.stdout) and len(rows(local.stdout)) == 1 + 6 * 10
    # and one query across a local store and a remote one
    both = s3.run_kevo("sql", f"here={local_store}", f"there={url}",
                       "SELECT count(*) AS n FROM here.layers a JOIN there.layers b USING (token_uid, lens, layer) "
                       "WHERE a.p_out = b.p_out", "--format", "csv", check=True)
    assert both.stdout.split() == ["n", str(6 * 10 * 24)]

    # a figure straight from the URL; writing back into it is refused (remote stores are read-only)
    png = local_store.parent / "stages.png"
    s3.run_kevo("plot", "stages", url, "-o", png, check=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    e = s3.run_kevo("embed", url)
    assert e.returncode == 1 and "read-only" in e.stderr and "Traceback" not in e.stderr

    # and `kevo store info` / `kevo store verify` on the URL
    info = s3.run_kevo("store", "info", url, check=True)
    assert "synthetic" in info.stdout
    v = s3.run_kevo("store", "verify", url)
    assert v.returncode == 0, v.stderr
    assert v.stdout.startswith("ok:")


def test_remote_reader_is_bit_identical_and_read_only(s3, local_store):
    url = s3.url("r/amber.kevo")
    s3.run_kevo("store", "push", local_store, url, check=True)
    with open_store(local_store) as a, open_store(url) as b:
        for t in TABLES:
            assert a.arrow(_ordered(t)).equals(b.arrow(_ordered(t))), t
        uids = np.arange(a.rows("tokens"))
        ha, hb = a.hidden(uids), b.hidden(uids)
        assert ha.dtype == hb.dtype == np.float16
        assert np.array_equal(ha.view(np.uint16), hb.view(np.uint16))
        # read-only: DuckDB cannot write through the store's protocol, Zarr cannot open for writing
        with pytest.raises(KevoError):
            b.sql(f"COPY (SELECT 1 AS x) TO '{b.fs.full('tables/evil.parquet')}' (FORMAT parquet)")
        with pytest.raises(PermissionError):
            b.fs.zarr_store("hidden", read_only=False)
        with pytest.raises(KevoError, match="opened read-only"):
            b.fs.open("tables/x.parquet", "wb")
    assert "tables/evil.parquet" not in s3.keys("r/amber.kevo")


def test_only_what_a_query_touches_is_downloaded(s3, local_store):
    url = s3.url("t/amber.kevo")
    s3.run_kevo("store", "push", local_store, url, check=True)
    with open_store(local_store) as loc:
        want_samples = loc.arrow(_ordered("samples"))
        want_h = loc.hidden(np.arange(30), layers=[5])
        layers_files = loc.manifest["tables"]["layers"]["files"]
    fs = s3.fs
    # overwrite the data pages of the big table (its footer, which opening reads for the schema,
    # stays) and every hidden chunk outside layer position 5 with garbage: a query that touched
    # them would fail
    for rel in layers_files:
        path = f"{s3.bucket}/t/amber.kevo/{rel}"
        data = bytearray(fs.cat_file(path))
        footer = int.from_bytes(data[-8:-4], "little") + 8
        data[4:len(data) - footer] = b"\xff" * (len(data) - footer - 4)
        fs.pipe_file(path, bytes(data))
    for k in s3.keys("t/amber.kevo/hidden/hidden/c"):
        if k.split("/")[1] != "5":
            fs.pipe_file(f"{s3.bucket}/t/amber.kevo/hidden/hidden/c/{k}", b"garbage")
    with open_store(url) as s:
        assert s.arrow(_ordered("samples")).equals(want_samples)
        assert s.sql("SELECT count(*) AS n FROM layers")["n"][0] == 6 * 10 * 24  # from the footer alone
        assert np.array_equal(s.hidden(np.arange(30), layers=[5]).view(np.uint16), want_h.view(np.uint16))
        with pytest.raises(KevoError):  # the garbage is real: reading the pages fails
            s.sql("SELECT avg(p_out) FROM layers")
        with pytest.raises(KevoError):
            s.hidden(np.arange(30), layers=[4])
    # the CLI says so too, naming nothing it did not need
    p = s3.run_kevo("sql", url, "SELECT count(*) AS n FROM samples", "--format", "csv", check=True)
    assert p.stdout.split() == ["n", "6"]


def test_a_query_fetches_only_the_columns_it_reads(s3, tmp_path):
    # no hidden states; big enough that a table's data dwarfs its footer
    store = write_sample_range(tmp_path / "cols.kevo", synth(n_samples=60, n_tokens=20, hidden_size=None), 0, 60,
                               batch_samples=60)
    url = s3.url("cols/cols.kevo")
    s3.run_kevo("store", "push", store, url, check=True)
    with open_store(store) as loc:
        want = loc.sql("SELECT sum(p_out) AS s FROM layers")["s"][0]
    with open_store(url) as s:
        ffs = s.fs.fsspec()
        m = s.manifest
        layers_bytes = sum(m["files"][f]["size"] for f in m["tables"]["layers"]["files"])

        def fetched(table: str) -> int:
            return sum(ffs.bytes_read_by.get(f, 0) for f in m["tables"][table]["files"])

        base = {t: fetched(t) for t in ("layers", "topk")}  # opening reads each table's footer
        assert s.sql("SELECT count(*) AS n FROM samples")["n"][0] == 60
        assert {t: fetched(t) for t in ("layers", "topk")} == base  # nothing more of the big tables
        assert s.sql("SELECT sum(p_out) AS s FROM layers")["s"][0] == want
        # one column of thirteen (and the footer): a fraction of the file, and nothing of topk
        assert fetched("layers") - base["layers"] < 0.3 * layers_bytes
        assert fetched("topk") == base["topk"]


def test_remote_verify_finds_a_tampered_object(s3, local_store):
    url = s3.url("v/amber.kevo")
    s3.run_kevo("store", "push", local_store, url, check=True)
    with open_store(local_store) as loc:
        victim = loc.manifest["tables"]["topk"]["files"][0]
    path = f"{s3.bucket}/v/amber.kevo/{victim}"
    data = bytearray(s3.fs.cat_file(path))
    data[len(data) // 2] ^= 0xFF  # same size, one bit pattern changed: only the checksum can tell
    s3.fs.pipe_file(path, bytes(data))
    p = s3.run_kevo("store", "verify", url)
    assert p.returncode == 1
    assert victim in p.stderr and "sha256" in p.stderr
    # a hidden chunk, too
    s3.fs.pipe_file(path, s3.fs.cat_file(f"{s3.bucket}/v/amber.kevo/{victim}"))  # (still tampered)
    chunk = f"{s3.bucket}/v/amber.kevo/hidden/hidden/c/0/3/0"
    c = bytearray(s3.fs.cat_file(chunk))
    c[-1] ^= 0x01
    s3.fs.pipe_file(chunk, bytes(c))
    p = s3.run_kevo("store", "verify", url)
    assert p.returncode == 1 and "hidden/hidden/c/0/3/0" in p.stderr


def test_push_refuses_to_overwrite_without_force(s3, local_store, tmp_path):
    url = s3.url("o/amber.kevo")
    s3.run_kevo("store", "push", local_store, url, check=True)
    # the same store again: nothing to do, said so
    p = s3.run_kevo("store", "push", local_store, url)
    assert p.returncode == 0 and "nothing to push" in (p.stdout + p.stderr)
    # another store onto it: refused without --force
    other = tmp_path / "other.kevo"
    write_sample_range(other, synth(n_samples=2, n_tokens=4), 0, 2, batch_samples=2)
    p = s3.run_kevo("store", "push", other, url)
    assert p.returncode == 1 and "already holds a kevo store" in p.stderr and "--force" in p.stderr
    s3.run_kevo("store", "push", other, url, "--force", check=True)
    assert s3.run_kevo("store", "verify", url).returncode == 0


def test_push_killed_midway_leaves_no_store_and_a_second_push_completes(s3, tmp_path):
    store = tmp_path / "big.kevo"
    # 40 samples x 16 tokens x 24 layers: 10 token chunks x 24 layers = 240 chunk objects
    write_sample_range(store, synth(n_samples=40, n_tokens=16), 0, 40, batch_samples=20)
    with open_store(store) as s:
        n_expected = len(s.manifest["files"])
    url = s3.url("k/big.kevo")
    proc = subprocess.Popen([KEVO, "store", "push", str(store), url, "--jobs", "1"],
                            env={**os.environ, **s3.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(s3.keys("k/big.kevo")) < 20:
            assert proc.poll() is None, "push ended before it could be killed: " + proc.stderr.read().decode()
            assert time.monotonic() < deadline, "push uploaded nothing within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    keys = s3.keys("k/big.kevo")
    assert 20 <= len(keys) < n_expected + 240, "the push was not interrupted mid-way"
    assert "manifest.json" not in keys  # data first, manifest last
    # nothing opens as a store: not the reader, not the CLI
    with pytest.raises(KevoError, match="not a kevo store"):
        open_store(url)
    p = s3.run_kevo("sql", url, "SELECT count(*) FROM samples")
    assert p.returncode == 1 and "not a kevo store" in p.stderr
    p = s3.run_kevo("store", "pull", url, tmp_path / "pulled")
    assert p.returncode == 1 and not (tmp_path / "pulled" / "manifest.json").exists()
    # pushing again completes it (what arrived whole is checked, not re-sent)
    s3.run_kevo("store", "push", store, url, check=True)
    v = s3.run_kevo("store", "verify", url)
    assert v.returncode == 0, v.stderr
    with open_store(store) as a, open_store(url) as b:
        assert a.arrow(_ordered("tokens")).equals(b.arrow(_ordered("tokens")))
        uids = np.arange(a.rows("tokens"))
        assert np.array_equal(a.hidden(uids).view(np.uint16), b.hidden(uids).view(np.uint16))


def test_unreachable_or_missing_destinations_give_one_clear_message(s3, local_store):
    p = s3.run_kevo("store", "push", local_store, "s3://no-such-bucket-kevo/amber.kevo")
    assert p.returncode == 1 and "no-such-bucket-kevo" in p.stderr and "Traceback" not in p.stderr
    assert not s3.fs.exists("no-such-bucket-kevo")  # a push never creates a bucket
    # nothing listening on the endpoint: one line naming the URL and what to check
    from tests.share_helpers import free_port

    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_MAX_ATTEMPTS": "1"}
    old = dict(s3.env)
    s3.env.update(env)
    try:
        q = s3.run_kevo("sql", s3.url("amber.kevo"), "SELECT 1")
    finally:
        s3.env.clear()
        s3.env.update(old)
    assert q.returncode == 1 and "Traceback" not in q.stderr
    assert "cannot reach the store" in q.stderr and "AWS_ENDPOINT_URL" in q.stderr


def test_a_store_on_a_plain_https_host_reads_in_place_and_pulls(local_store, tmp_path):
    """No S3 at all: a static web server with Range support and no listings (a lab's web host)."""
    from tests.share_helpers import static_http_server

    site = tmp_path / "site"
    site.mkdir()
    p = subprocess.run([KEVO, "store", "push", str(local_store), str(site / "amber.kevo")], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    with static_http_server(site) as base:
        url = f"{base}/amber.kevo"

        def kevo(*args):
            return subprocess.run([KEVO, *map(str, args)], capture_output=True, text=True, timeout=300)

        q = "SELECT layer, round(avg(p_out), 6) AS p FROM layers GROUP BY layer ORDER BY layer"
        remote, local = kevo("sql", url, q, "--format", "json"), kevo("sql", local_store, q, "--format", "json")
        assert remote.returncode == 0, remote.stderr
        assert json.loads(remote.stdout) == json.loads(local.stdout)
        v = kevo("store", "verify", url)
        assert v.returncode == 0, v.stderr
        info = kevo("store", "info", url, "--json")
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["tables"]["layers"]["rows"] == 6 * 10 * 24
        with open_store(local_store) as a, open_store(url) as b:
            uids = np.arange(a.rows("tokens"))
            assert np.array_equal(a.hidden(uids, layers=[7]).view(np.uint16),
                                  b.hidden(uids, layers=[7]).view(np.uint16))
        pl = kevo("store", "pull", url, tmp_path / "p.kevo", "--layers", "7")
        assert pl.returncode == 0, pl.stderr
        assert kevo("store", "verify", tmp_path / "p.kevo").returncode == 0
        assert {p.name for p in (tmp_path / "p.kevo" / "hidden" / "hidden" / "c" / "0").iterdir()} == {"7"}


def test_endpoint_and_options_come_from_the_environment(monkeypatch):
    from kevo_store.share.remote import RemoteStoreError, storage_options

    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "KEVO_STORAGE_OPTIONS"):
        monkeypatch.delenv(k, raising=False)
    assert storage_options("s3://b/x.kevo") == {}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    assert storage_options("s3://b/x.kevo") == {"endpoint_url": "http://minio:9000"}
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3only:9000")  # the service-specific one wins
    assert storage_options("s3://b/x.kevo") == {"endpoint_url": "http://s3only:9000"}
    assert storage_options("gs://b/x.kevo") == {}  # an S3 endpoint is not a GCS endpoint
    monkeypatch.setenv("KEVO_STORAGE_OPTIONS", '{"anon": true}')
    assert storage_options("s3://b/x.kevo") == {"endpoint_url": "http://s3only:9000", "anon": True}
    monkeypatch.setenv("KEVO_STORAGE_OPTIONS", "{not json")
    with pytest.raises(RemoteStoreError, match="KEVO_STORAGE_OPTIONS is not valid JSON"):
        storage_options("s3://b/x.kevo")
