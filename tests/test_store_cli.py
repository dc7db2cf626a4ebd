"""The real `kevo` command: sql (one and two stores, every output format), store info/verify,
corruption and truncation, the format-version check, the lock, and bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import store_helpers as H

from kevo_store import (
    CorruptStoreError,
    FormatVersionError,
    StoreLockedError,
    StoreWriter,
    open_store,
    write_derived_table,
)

KEVO = str(Path(sys.executable).with_name("kevo"))


def kevo(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([KEVO, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    H.write_store(d / "amber.kevo", 4)
    H.write_store(d / "amber_skip.kevo", 2, seed=1)  # other numbers for the same keys
    return d


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def test_sql_one_store_table_csv_json(stores):
    s = stores / "amber.kevo"
    r = kevo("sql", s, "SELECT layer, count(*) AS n FROM layers GROUP BY layer ORDER BY layer")
    assert r.returncode == 0, r.stderr
    n_tok = open_store(s).rows("tokens")
    assert "layer" in r.stdout and str(n_tok * 2) in r.stdout  # two lens modes per token and layer
    r = kevo("sql", s, "SELECT sample_id, sample_key FROM amber.samples ORDER BY sample_id", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [x["sample_key"] for x in rows[:3]] == ["synthetic:0-0", "synthetic:0-1", "synthetic:0-2"]
    assert len(rows) == 12
    r = kevo("sql", s, "SELECT count(*) AS n, max(token_uid) AS m FROM tokens", "--format", "json")
    assert json.loads(r.stdout) == [{"n": n_tok, "m": n_tok - 1}]
    q = s.parent / "count.sql"
    q.write_text("-- a query kept in a file\nSELECT count(*) AS n FROM tokens\n")
    r = kevo("sql", s, q, "--format", "json")
    assert json.loads(r.stdout) == [{"n": n_tok}]


def test_sql_output_files(stores, tmp_path):
    s = stores / "amber.kevo"
    q = "SELECT token_uid, lens, layer, p_out FROM layers WHERE layer = 2 ORDER BY token_uid, lens"
    for fmt in ("parquet", "csv", "json"):
        out = tmp_path / f"out.{fmt}"
        r = kevo("sql", s, q, "--format", fmt, "--output", out)
        assert r.returncode == 0, r.stderr
        assert out.exists() and out.stat().st_size > 0
    t = pq.read_table(tmp_path / "out.parquet")
    ref = open_store(s).arrow(q)
    assert t.num_rows == ref.num_rows and t.column("p_out").equals(ref.column("p_out"))
    assert len(json.loads((tmp_path / "out.json").read_text())) == ref.num_rows
    assert "needs --output" in one_error_line(kevo("sql", s, "SELECT 1", "--format", "parquet"))


def test_sql_two_stores(stores):
    a, b = stores / "amber.kevo", stores / "amber_skip.kevo"
    q = ("SELECT count(*) AS n, sum(CASE WHEN x.p_out = y.p_out THEN 1 ELSE 0 END) AS same "
         "FROM amber.layers x JOIN amber_skip.layers y USING (token_uid, lens, layer)")
    r = kevo("sql", a, b, q, "--format", "json")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    # amber_skip has the first 2 batches' keys but other numbers: joins on every of its rows, agrees on ~none
    n_b = open_store(b).rows("layers")
    assert row["n"] <= n_b and row["same"] < row["n"] / 10
    # explicit aliases; with two stores the tables need their alias
    r = kevo("sql", f"base={a}", f"skip={b}", "SELECT (SELECT count(*) FROM base.samples) - "
             "(SELECT count(*) FROM skip.samples) AS d", "--format", "csv")
    assert r.returncode == 0 and r.stdout.splitlines()[1] == "6"
    assert "samples" in one_error_line(kevo("sql", a, b, "SELECT * FROM samples"))
    assert "both called 'amber'" in one_error_line(kevo("sql", a, a, "SELECT 1"))


def test_store_info(stores):
    r = kevo("store", "info", stores / "amber.kevo")
    assert r.returncode == 0, r.stderr
    assert "test/tiny" in r.stdout and "synthetic" in r.stdout
    assert "samples    12   errors 4" in r.stdout
    assert "hidden" in r.stdout and "float16" in r.stdout and "disk" in r.stdout
    j = json.loads(kevo("store", "info", "--json", stores / "amber.kevo").stdout)
    assert j["tables"]["layers"]["rows"] == open_store(stores / "amber.kevo").rows("layers")
    assert j["hidden"]["shape"][1:] == [H.N_LAYERS + 1, H.HIDDEN]


def test_bad_inputs_give_one_clear_line(stores, tmp_path):
    s = stores / "amber.kevo"
    line = one_error_line(kevo("sql", s, "SELEC count(*) FROM layers"))
    assert line.startswith("kevo: error:") and "syntax error" in line
    line = one_error_line(kevo("sql", s, "SELECT nope FROM layers"))
    assert "nope" in line
    line = one_error_line(kevo("sql", s, "SELECT * FROM layer"))
    assert "layer" in line
    line = one_error_line(kevo("sql", tmp_path / "missing.kevo", "SELECT 1"))
    assert "missing.kevo" in line and "does not exist" in line
    (tmp_path / "notastore").mkdir()
    line = one_error_line(kevo("store", "info", tmp_path / "notastore"))
    assert "notastore is not a kevo store" in line
    line = one_error_line(kevo("store", "verify", tmp_path / "missing.kevo"))
    assert "missing.kevo" in line
    (tmp_path / "badjson.kevo").mkdir()
    (tmp_path / "badjson.kevo" / "manifest.json").write_text("{not json")
    assert "not valid JSON" in one_error_line(kevo("store", "info", tmp_path / "badjson.kevo"))


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_verify_finds_corruption_and_truncation(stores, tmp_path):
    good = kevo("store", "verify", stores / "amber.kevo")
    assert good.returncode == 0 and good.stdout.startswith("ok:"), good.stderr
    m = json.loads((stores / "amber.kevo" / "manifest.json").read_text())
    layers_file = m["tables"]["layers"]["files"][0]
    topk_file = m["tables"]["topk"]["files"][0]
    # a flipped byte in the middle of a Parquet file: same size, wrong checksum
    bad = copy_store(stores / "amber.kevo", tmp_path / "flip.kevo")
    data = bytearray((bad / layers_file).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / layers_file).write_bytes(bytes(data))
    r = kevo("store", "verify", bad)
    assert r.returncode == 1
    assert f"problem: {layers_file}: sha256 mismatch" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("kevo: error:")
    # truncation, found by size even with --quick
    bad = copy_store(stores / "amber.kevo", tmp_path / "trunc.kevo")
    with open(bad / topk_file, "r+b") as f:
        f.truncate(100)
    for extra in ([], ["--quick"]):
        r = kevo("store", "verify", *extra, bad)
        assert r.returncode == 1 and f"{topk_file}: size 100 bytes" in r.stderr and "truncated" in r.stderr
    # a damaged hidden shard and a missing one: verify names both, and so does every read
    bad = copy_store(stores / "amber.kevo", tmp_path / "chunk.kevo")
    shard = bad / "hidden" / "hidden" / "c" / "0" / "2" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    os.remove(bad / "hidden" / "hidden" / "c" / "0" / "0" / "0")
    r = kevo("store", "verify", bad)
    assert r.returncode == 1
    assert ("hidden/hidden/c/0/2/0: hidden shard does not match its checksum in the chunk index "
            "(corrupted: inner chunk") in r.stderr
    assert "hidden/hidden/c/0/0/0: hidden shard missing" in r.stderr
    from kevo_store import open_store
    from kevo_store.errors import CorruptStoreError

    with open_store(bad) as s:
        layers = s.manifest["hidden"]["layers"]
        with pytest.raises(CorruptStoreError, match=r"hidden shard hidden/hidden/c/0/0/0 is missing"):
            s.hidden([0], layers=[layers[0]])
        with pytest.raises(CorruptStoreError, match=r"hidden shard hidden/hidden/c/0/2/0 does not match its checksum"):
            s.hidden(range(s.rows("tokens")), layers=[layers[2]])
        s.hidden([0], layers=[layers[1]])  # an intact shard still reads
    # hidden shape against tokens: a manifest that claims more tokens than the array holds
    bad = copy_store(stores / "amber.kevo", tmp_path / "shape.kevo")
    mm = json.loads((bad / "manifest.json").read_text())
    mm["hidden"]["rows"] += 5
    (bad / "manifest.json").write_text(json.dumps(mm))
    r = kevo("store", "verify", bad)
    assert r.returncode == 1 and "hidden: " in r.stderr and "but the store has" in r.stderr
    # a row count that does not match
    bad = copy_store(stores / "amber.kevo", tmp_path / "rows.kevo")
    mm = json.loads((bad / "manifest.json").read_text())
    mm["tables"]["samples"]["rows"] = 13
    (bad / "manifest.json").write_text(json.dumps(mm))
    r = kevo("store", "verify", bad)
    assert r.returncode == 1 and "table 'samples': 12 rows in its files, manifest says 13" in r.stderr


def test_sql_on_a_damaged_store_says_one_line_and_points_to_verify(stores, tmp_path):
    m = json.loads((stores / "amber.kevo" / "manifest.json").read_text())
    bad = copy_store(stores / "amber.kevo", tmp_path / "trunc.kevo")
    topk_file = m["tables"]["topk"]["files"][0]
    with open(bad / topk_file, "r+b") as f:
        f.truncate(100)
    line = one_error_line(kevo("sql", bad, "SELECT count(*) FROM samples"))
    # the size is checked (one lstat) before DuckDB opens the file
    assert "100 bytes, the manifest says" in line and topk_file in line and "kevo store verify" in line
    bad = copy_store(stores / "amber.kevo", tmp_path / "garbled.kevo")
    layers_file = bad / m["tables"]["layers"]["files"][0]
    data = bytearray(layers_file.read_bytes())
    for i in range(len(data) // 4, len(data) // 2):  # the column chunks, not the footer
        data[i] ^= 0x5A
    layers_file.write_bytes(bytes(data))
    r = kevo("sql", bad, "SELECT sum(p_out), sum(entropy), sum(kl_final) FROM layers")
    line = one_error_line(r)
    assert f"kevo store verify {bad}" in line
    # a damaged hidden shard: a clear error from the reader naming it, not a codec traceback
    bad = copy_store(stores / "amber.kevo", tmp_path / "chunk.kevo")
    shard = bad / "hidden" / "hidden" / "c" / "0" / "2" / "0"
    data = bytearray(shard.read_bytes())
    data[10:30] = bytes(20)
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match="hidden/hidden/c/0/2/0 does not match its checksum.*kevo store verify"):
        open_store(bad).hidden(range(0, 8))


def test_format_version_check(stores, tmp_path):
    bad = copy_store(stores / "amber.kevo", tmp_path / "future.kevo")
    mm = json.loads((bad / "manifest.json").read_text())
    mm["format_version"] = 3
    (bad / "manifest.json").write_text(json.dumps(mm))
    for args in (["sql", bad, "SELECT 1"], ["store", "info", bad], ["store", "verify", bad]):
        line = one_error_line(kevo(*args))
        assert "format version 3" in line and "upgrade kevo" in line and "future.kevo" in line
    with pytest.raises(FormatVersionError):
        open_store(bad)
    with pytest.raises(FormatVersionError):
        StoreWriter(bad, meta=H.META, hidden_size=H.HIDDEN)
    assert not (bad / ".lock").exists()
    assert json.loads((bad / "manifest.json").read_text())["format_version"] == 3  # nothing touched


def test_lock_second_writer_and_stale_lock(tmp_path, capfd):
    path = tmp_path / "lock.kevo"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, store_helpers as H\n"
         "from kevo_store import StoreWriter\n"
         "w = StoreWriter(sys.argv[1], meta=H.META, hidden_size=H.HIDDEN)\nprint('held', flush=True)\ntime.sleep(60)",
         str(path)],
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent)), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreLockedError) as e:
            StoreWriter(path, meta=H.META, hidden_size=H.HIDDEN)
        msg = str(e.value)
        assert f"pid {holder.pid}" in msg and ".lock" in msg and "one writer at a time" in msg
        with pytest.raises(StoreLockedError):
            write_derived_table(path, "embeddings", {"embedding_id": [], "token_uid": [], "layer": [], "x": [],
                                                     "y": []}, {})
        # readers are not blocked by a writer, and info names it
        assert open_store(path).rows("samples") == 0
        assert f"pid {holder.pid}" in kevo("store", "info", path).stdout
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock is stale and is broken with a message
    assert (path / ".lock").exists()
    capfd.readouterr()
    with StoreWriter(path, meta=H.META, hidden_size=H.HIDDEN) as w:
        w.write_batch(**H.batch(0))
    assert "breaking the stale lock" in capfd.readouterr().err
    assert not (path / ".lock").exists()
    # a lock from another host is never broken automatically
    (path / ".lock").write_text(json.dumps({"pid": 1, "host": "gpu-node-7", "since": "2026-01-01T00:00:00Z"}))
    with pytest.raises(StoreLockedError, match="gpu-node-7"):
        StoreWriter(path, meta=H.META, hidden_size=H.HIDDEN)
    # a second writer in the same process
    os.remove(path / ".lock")
    with StoreWriter(path, meta=H.META, hidden_size=H.HIDDEN):
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
            StoreWriter(path, meta=H.META, hidden_size=H.HIDDEN)


def test_cli_never_imports_torch(stores):
    code = ("import sys\nfrom kevo_store.cli import main\n"
            "for args in (['--help'], ['sql', sys.argv[1], 'SELECT count(*) FROM tokens'], "
            "['store', 'info', sys.argv[1]]):\n"
            "    try:\n        main(args)\n    except SystemExit as e:\n        assert not e.code, (args, e.code)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "assert 'transformers' not in sys.modules\nprint('clean')\n")
    r = subprocess.run([sys.executable, "-c", code, str(stores / "amber.kevo")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("clean"), r.stderr[-3000:]
