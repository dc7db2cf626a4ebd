"""Smaller truths users hit: `kevo plot -o x.pdf` writes a PDF (other suffixes are refused, not silently
turned into .png + .svg), `-p label=` is checked against the labels the store holds, re-running a push
or pull that finished says so instead of refusing."""

from __future__ import annotations

import subprocess

import pytest
import store_helpers as H

from kevo_store.errors import KevoError
from tests.runner_helpers import KEVO


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    p = tmp_path_factory.mktemp("uf") / "u.kevo"
    H.write_store(p, 3)
    return p


def _kevo(*args):
    return subprocess.run([KEVO, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_plot_pdf_is_a_pdf_and_other_suffixes_are_refused(store, tmp_path):
    out = tmp_path / "fig.pdf"
    p = _kevo("plot", "critical-layers", store, "-o", out)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes()[:5] == b"%PDF-" and p.stdout.split() == [str(out)]
    assert not (tmp_path / "fig.png").exists() and not (tmp_path / "fig.svg").exists()
    p = _kevo("plot", "critical-layers", store, "-o", tmp_path / "fig.jpg")
    assert p.returncode != 0 and "writes .png, .svg or .pdf" in p.stderr and "Traceback" not in p.stderr
    assert not list(tmp_path.glob("fig.*[gj]"))


def test_label_param_is_checked_against_the_store(store):
    from queries.engine import run_bound
    from queries.library import bind

    with pytest.raises(KevoError, match=r"label='halucinated'.*labels present: correct, hallucinated"):
        run_bound(bind("critical-layer-distribution", label="halucinated"), [str(store)], check_label=True)
    p = _kevo("query", "critical-layer-distribution", store, "-p", "label=halucinated")
    assert p.returncode != 0 and "labels present: correct, hallucinated" in p.stderr
    p = _kevo("query", "critical-layer-distribution", store, "-p", "label=hallucinated")
    assert p.returncode == 0, p.stderr


def test_push_and_pull_rerun_after_they_finished(store, tmp_path):
    remote = tmp_path / "remote.kevo"
    assert _kevo("store", "push", store, f"file://{remote}").returncode == 0
    p = _kevo("store", "push", store, f"file://{remote}")
    assert p.returncode == 0 and "already holds this store" in p.stdout
    dest = tmp_path / "pulled.kevo"
    assert _kevo("store", "pull", f"file://{remote}", dest).returncode == 0
    p = _kevo("store", "pull", f"file://{remote}", dest)
    assert p.returncode == 0 and "already holds this store" in p.stdout
    (dest / "hidden" / "zarr.json").chmod(0o644)
    (dest / "hidden" / "zarr.json").unlink()  # now it is not the same store: refused, not "up to date"
    p = _kevo("store", "pull", f"file://{remote}", dest)
    assert p.returncode != 0 and "not an empty directory" in p.stderr


def test_pull_refuses_a_source_without_its_zarr_metadata(store, tmp_path):
    import shutil

    src = tmp_path / "src.kevo"
    shutil.copytree(store, src)
    (src / "hidden" / "zarr.json").unlink()
    p = _kevo("store", "pull", f"file://{src}", tmp_path / "out.kevo")
    assert p.returncode != 0 and "zarr.json" in p.stderr and not (tmp_path / "out.kevo").exists()


def test_info_counts_bytes_on_disk_as_du(store):
    import json
    import re

    du = int(subprocess.run(["du", "-s", "--block-size=1", str(store)], capture_output=True, text=True,
                            check=True).stdout.split()[0])
    p = _kevo("store", "info", store, "--json")
    assert json.loads(p.stdout)["disk_bytes"] == du
    assert re.search(r"disk .* on disk in all", _kevo("store", "info", store).stdout)


def test_open_store_warns_in_sql_and_push_refuses_without_force(tmp_path):
    path = tmp_path / "open.kevo"
    code = (f"import store_helpers as H, os; H.write_store({str(path)!r}, 2, close=False); os._exit(0)")
    subprocess.run([__import__("sys").executable, "-c", code], check=True, timeout=120,
                   env={**__import__("os").environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).parent)})
    (path / ".lock").unlink()
    p = _kevo("sql", path, "SELECT count(*) FROM samples")
    assert p.returncode == 0 and "is open (a writer is running, or was interrupted)" in p.stderr
    remote = tmp_path / "r.kevo"
    p = _kevo("store", "push", path, f"file://{remote}")
    assert p.returncode != 0 and "is open" in p.stderr and "--force" in p.stderr
    p = _kevo("store", "push", path, f"file://{remote}", "--force")
    assert p.returncode == 0, p.stderr


def test_partial_pull_names_the_table_it_left_out_and_a_missing_index_is_named(store, tmp_path):
    import json
    import shutil

    part = tmp_path / "part.kevo"
    assert _kevo("store", "pull", f"file://{store}", part, "--tables", "samples,tokens").returncode == 0
    p = _kevo("sql", part, "SELECT count(*) FROM topk")
    assert p.returncode != 0 and "a partial pull of" in p.stderr and "left it out" in p.stderr
    src = tmp_path / "noidx.kevo"
    shutil.copytree(store, src)
    idx = json.loads((src / "manifest.json").read_text())["hidden"]["index"][0]
    (src / idx).unlink()
    p = _kevo("store", "pull", f"file://{src}", tmp_path / "out.kevo")
    assert p.returncode != 0 and f"the chunk index '{idx}'" in p.stderr and "Traceback" not in p.stderr


def test_merge_keeps_derived_tables_on_their_tokens(tmp_path):
    import numpy as np
    import pyarrow as pa

    from kevo_store import open_store, write_derived_table

    a, b, out = tmp_path / "a.kevo", tmp_path / "b.kevo", tmp_path / "m.kevo"
    H.write_store(a, 2)
    H.write_store(b, 4, start=2)
    for path, tag in ((a, 1.0), (b, 2.0)):
        with open_store(path) as s:
            uids = s.sql("SELECT token_uid FROM tokens ORDER BY token_uid")["token_uid"].to_numpy()[::3]
        write_derived_table(path, "embeddings", pa.table({
            "embedding_id": ["e1"] * len(uids), "token_uid": uids, "layer": np.zeros(len(uids), np.int16),
            "x": (uids * tag).astype(np.float32), "y": -(uids * tag).astype(np.float32)}), {"method": "test"})

    def by_token(path, prefix=""):
        with open_store(path) as s:
            df = s.sql("SELECT e.embedding_id, s.sample_key, t.step, e.x, e.y FROM embeddings e "
                       "JOIN tokens t USING (token_uid) JOIN samples s ON s.sample_id = t.sample_id")
        return {(r[0].split(":")[-1] if prefix else r[0], r[1], r[2]): (r[3], r[4]) for r in df.iter_rows()}

    p = _kevo("store", "merge", a, b, "--out", out)
    assert p.returncode == 0, p.stderr
    want = {**by_token(a), **by_token(b)}
    got = by_token(out, prefix="yes")
    assert got == want and len(got) > 0
    with open_store(out) as s:
        ids = set(s.sql("SELECT DISTINCT embedding_id FROM embeddings")["embedding_id"].to_list())
    assert ids == {"a:e1", "b:e1"}  # two inputs' embeddings are not one embedding
