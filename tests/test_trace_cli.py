"""`kevo trace` end to end: questions with constraints ingested through `kevo ingest vqa` (a
left-padded batch, prompt captured), traced through the real command, every row checked against the
naive reference (tests/trace_reference.py), and every user error refused with the store untouched."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from tests.runner_helpers import kevo, make_images, tiny_model_dir
from tests.trace_reference import NaiveTracer

QUESTIONS = [
    {"id": "q0", "image": "img00.png", "question": "Is there a red car in the picture?", "constraint": "red car"},
    {"id": "q1", "image": "img01.png", "question": "What is on the table next to the guitar?",
     "constraint": "the guitar"},
    {"id": "q2", "image": "img02.png", "question": "Is there a horse?", "constraint": "zebra"},
    {"id": "q3", "image": "img02.png", "question": "What is in the picture?"},
]
HAS_CONSTRAINT = "json_extract_string(annotations, '$.constraint') IS NOT NULL"


@pytest.fixture(scope="module")
def model():
    return tiny_model_dir("llava")


@pytest.fixture(scope="module")
def store(tmp_path_factory, model):
    tmp = tmp_path_factory.mktemp("trace")
    images = make_images(tmp / "images", 3)
    q = tmp / "q.jsonl"
    q.write_text("".join(json.dumps(r) + "\n" for r in QUESTIONS))
    out = tmp / "vqa.kevo"
    kevo("ingest", "vqa", "--questions", q, "--images", images, "--model", model, "--out", out,
         "--max-new-tokens", 2, "--batch-size", 2, "--capture-prompt")
    kevo("trace", out, "--model", model, "--where", HAS_CONSTRAINT, "--corrupt", "swap:cat", "--window", 3,
         "--dtype", "float32", "--device", "cpu")
    return dict(out=out, images=images, tmp=tmp)


def _table(store, name):
    from kevo_store import open_store

    return open_store(str(store)).sql(f"SELECT * FROM {name}")


def _inputs(model, store, sample_id, images):
    from PIL import Image

    from ingest.models import load_adapter

    ad = load_adapter(str(model), dtype="float32")
    row = [r for r in _table(store, "samples").to_dicts() if r["sample_id"] == sample_id][0]
    img = Image.open(images / row["image_id"]).convert("RGB")
    b = ad.encode([row["prompt_text"]], [img])
    return ad, ad.generate_inputs(b)


def test_constraint_flags_and_errors(store):
    tok = _table(store["out"], "tokens")
    err = _table(store["out"], "errors").to_dicts()
    assert len(err) == 1 and "q.jsonl, record 3" in err[0]["message"] and "zebra" in err[0]["message"]
    runs = _table(store["out"], "trace_runs").sort("sample_id").to_dicts()
    assert len(runs) == 2
    for r in runs:
        flagged = tok.filter((tok["sample_id"] == r["sample_id"]) & tok["is_constraint"].fill_null(False))
        assert sorted(flagged["position"].to_list()) == r["corrupted_positions"]
        assert r["causal_prefix"] and r["kv_cache"] and r["window"] == 3 and r["kinds"] == ["hidden", "mlp", "attn"]
        assert r["corruption"] == "swap:cat" and r["replacement_id"] is not None and r["noise_scale"] is None
        assert json.loads(r["params"])["window"] == 3


def test_every_row_equals_the_naive_reference(store, model):
    runs = _table(store["out"], "trace_runs").to_dicts()
    tr = _table(store["out"], "traces")
    n_checked = 0
    for r in runs:
        ad, inputs = _inputs(model, store["out"], r["sample_id"], store["images"])
        nv = NaiveTracer(ad, inputs, r["corrupted_positions"], ("swap", r["replacement_id"]))
        assert nv.answer == r["answer_id"]
        assert abs(nv.p_clean - r["p_clean"]) < 1e-6 and abs(nv.p_corrupt - r["p_corrupt"]) < 1e-6
        rows = tr.filter(tr["trace_id"] == r["trace_id"]).to_dicts()
        L = ad.n_layers
        assert len(rows) == r["n_positions"] * ((L + 1) + 2 * L)
        for k, row in enumerate(rows):
            assert abs(row["effect"] - (row["p_restored"] - r["p_corrupt"])) < 1e-6
            if not row["computed"]:
                assert row["position"] < r["first_corrupted"] and row["p_restored"] == r["p_corrupt"]
                continue
            if k % 4 and row["position"] != r["n_positions"] - 1:
                continue  # a quarter of the rows, and the last position's (test_trace_engine checks them all)
            ref = nv.restored([(row["kind"], row["window_layers"], row["positions"])])
            assert abs(ref - row["p_restored"]) < 2e-6, row
            n_checked += 1
        # one prefix row recomputed naively: restoring it leaves the corrupted run bit for bit
        pre = [x for x in rows if not x["computed"]][5]
        assert nv.restored([(pre["kind"], pre["window_layers"], pre["positions"])]) == nv.p_corrupt
    assert n_checked > 40


def test_contributions_table(store):
    c = _table(store["out"], "attention_contributions")
    runs = _table(store["out"], "trace_runs").to_dicts()
    for r in runs:
        mine = c.filter(c["sample_id"] == r["sample_id"])
        lc = mine.filter(mine["target"] == "last_constraint")
        assert set(lc["source_role"].to_list()) == {"image"} and lc["patch_row"].null_count() == 0
        assert lc["target_position"].to_list()[0] == max(r["corrupted_positions"])
        last = mine.filter(mine["target"] == "last")
        assert {"constraint", "prompt", "image_all"} <= set(last["source_role"].to_list())
        assert (mine["contribution"] >= 0).all()


def _manifest_bytes(out):
    return hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()


def test_second_run_keeps_the_first_and_records_noise(store, model):
    out = store["out"]
    kevo("trace", out, "--model", model, "--where", HAS_CONSTRAINT, "--corrupt", "noise:3", "--noise-samples", 2,
         "--window", 1, "--kinds", "hidden", "--name", "noise", "--no-contributions", "--dtype", "float32",
         "--device", "cpu")
    runs = _table(out, "trace_runs")
    assert sorted(set(runs["name"].to_list())) == ["noise", "swap:cat/w3"]
    noise = runs.filter(runs["name"] == "noise").to_dicts()[0]
    assert noise["noise_samples"] == 2 and noise["noise_scale"] == 3.0 and noise["noise_sigma"] > 0
    assert len(json.loads(noise["params"])["p_corrupt_draws"]) == 2
    assert _table(out, "attention_contributions").height > 0  # the first run's contributions are kept


@pytest.mark.parametrize("args, message", [
    (["--kinds", "hidden,residual"], "unknown kind 'residual'"),
    (["--window", "9"], "--window 9 is larger than the model"),
    (["--where", "sample_id = 2"], "has no constraint"),
    (["--corrupt", "blur:3"], "expected swap:WORD"),
])
def test_user_errors_leave_the_store_as_it_was(store, model, args, message):
    out = store["out"]
    before = _manifest_bytes(out)
    base = ["--where", HAS_CONSTRAINT] if "--where" not in args else []
    p = kevo("trace", out, "--model", model, *base, *args, "--dtype", "float32", "--device", "cpu", check=False)
    assert p.returncode == 1 and message in p.stderr, p.stderr
    assert _manifest_bytes(out) == before


def test_store_from_other_weights_is_refused(store, model, tmp_path):
    import shutil

    from transformers import LlavaForConditionalGeneration

    other = tmp_path / "other"
    shutil.copytree(model, other)
    m = LlavaForConditionalGeneration.from_pretrained(str(model))
    with torch.no_grad():
        m.lm_head.weight.mul_(1.5)
    m.save_pretrained(str(other), safe_serialization=True)
    before = _manifest_bytes(store["out"])
    p = kevo("trace", store["out"], "--model", other, "--where", HAS_CONSTRAINT, "--dtype", "float32",
             "--device", "cpu", check=False)
    assert p.returncode == 1 and "other weights" in p.stderr, p.stderr
    assert _manifest_bytes(store["out"]) == before


def test_image_noise_needs_images(tmp_path):
    lm = tiny_model_dir("causal_lm")
    prompts = tmp_path / "p.txt"
    prompts.write_text("Is there a red car?\n")
    out = tmp_path / "text.kevo"
    kevo("ingest", "text", "--prompts", prompts, "--model", lm, "--out", out, "--max-new-tokens", 1)
    before = _manifest_bytes(out)
    p = kevo("trace", out, "--model", lm, "--corrupt", "image-noise:3", "--device", "cpu", check=False)
    assert p.returncode == 1 and "no images" in p.stderr, p.stderr
    assert _manifest_bytes(out) == before


def test_trace_queries_and_figures(store, tmp_path):
    import polars as pl

    import queries
    from kevo_store import open_store
    from queries import plots

    out = str(store["out"])
    s = open_store(out)
    tr = s.sql("SELECT t.*, r.name FROM traces t JOIN trace_runs r USING (trace_id)")
    for engine in ("duckdb",):  # trace-* use DuckDB functions (ARG_MAX) Polars' SQL lacks
        e = queries.run(out, "trace-effects", engine=engine, trace_run="swap:cat/w3")
        before = e.filter(e["token_group"] == "before")
        assert before.height and (before["aie"] == 0).all()  # exactly: rows before the constraint are p_corrupt
        # ROME's average: per sample over the group's positions, then over samples
        sub = tr.filter((tr["name"] == "swap:cat/w3") & (tr["kind"] == "mlp") & (tr["layer"] == 2)
                        & (tr["token_group"] == "further"))
        want = sub.group_by("sample_id").agg(pl.col("effect").mean().alias("m"))["m"].mean()
        got = e.filter((e["kind"] == "mlp") & (e["layer"] == 2) & (e["token_group"] == "further"))["aie"][0]
        assert abs(got - want) < 1e-6
    p = queries.run(out, "trace-peaks", trace_run="swap:cat/w3")
    for row in p.iter_rows(named=True):
        cells = tr.filter((tr["name"] == "swap:cat/w3") & (tr["sample_id"] == row["sample_id"])
                          & (tr["kind"] == row["kind"]))
        assert abs(row["peak_effect"] - cells["effect"].max()) < 1e-7
    c = queries.run([out, out], "trace-compare", name_a="swap:cat/w3", name_b="swap:cat/w3")
    assert c.height and (c["aie_diff"].abs() < 1e-12).all()
    for kind, kw in (("trace", {"trace_run": "swap:cat/w3"}), ("trace", {"trace_run": "swap:cat/w3", "sample_id": 0}),
                     ("attention-patches", {})):
        files = plots.plot(kind, out, tmp_path / f"{kind}-{len(kw)}.png", **kw)
        assert files and all((tmp_path / f).stat().st_size > 1000 for f in files)


CRASH_BETWEEN_TABLES = """
import os, sys
import pyarrow.parquet as pq
import kevo_store.writer as w
from ingest.trace.cli import trace
real, n = pq.write_table, [0]
def write_table(table, where, **kw):
    n[0] += 1
    real(table, where, **kw)
    if n[0] == 2:  # the first two tables' files are on disk, fsynced or not: the process dies here
        os._exit(9)
w.pq.write_table = write_table
trace.main(sys.argv[1:], standalone_mode=True)
"""


def _derived_files(out):
    return sorted(str(p.relative_to(out)) for p in (out / "derived").rglob("*") if p.is_file())


def test_a_crash_between_tables_leaves_no_partial_run_and_a_rerun_completes(store, model, tmp_path):
    """kevo trace writes trace_runs, traces and attention_contributions in one commit: a process killed
    after two of the three files leaves the store as it was (no table of the run is visible, the
    earlier runs intact); an error in between does too, and removes its files; a rerun completes."""
    import shutil
    import subprocess
    import sys

    from kevo_store import open_store, verify_store

    out = tmp_path / "copy.kevo"
    shutil.copytree(store["out"], out)
    runs_before = sorted(_table(out, "trace_runs")["trace_id"].to_list())
    n_samples = len(set(_table(out, "trace_runs")["sample_id"].to_list()))
    n_traces, n_contrib = _table(out, "traces").height, _table(out, "attention_contributions").height
    before, files_before = _manifest_bytes(out), _derived_files(out)
    args = [str(out), "--model", str(model), "--where", HAS_CONSTRAINT, "--corrupt", "swap:dog", "--window", "1",
            "--kinds", "hidden", "--name", "crash", "--dtype", "float32", "--device", "cpu"]
    p = subprocess.run([sys.executable, "-c", CRASH_BETWEEN_TABLES, *args], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 9, p.stderr
    assert _manifest_bytes(out) == before
    assert len(_derived_files(out)) == len(files_before) + 2  # the dead process's files, named by no manifest
    s = open_store(str(out))
    assert sorted(s.sql("SELECT trace_id FROM trace_runs")["trace_id"].to_list()) == runs_before
    assert s.sql("SELECT count(*) AS n FROM traces")["n"][0] == n_traces
    assert s.sql("SELECT count(*) AS n FROM attention_contributions")["n"][0] == n_contrib
    assert verify_store(str(out)).ok

    # an error while the second table is written: nothing committed, and its own files are gone
    import pyarrow.parquet as pq

    import kevo_store.writer as w
    from ingest.trace.corrupt import parse_corruption
    from ingest.trace.engine import TraceSettings
    from ingest.trace.run import TraceRequest, trace_store

    real, calls = pq.write_table, []

    def failing(table, where, **kw):
        calls.append(where)
        if len(calls) == 2:
            raise OSError("disk full")
        real(table, where, **kw)
    req = TraceRequest(store=str(out), model=str(model), where=HAS_CONSTRAINT, name="crash", dtype="float32",
                       device="cpu", settings=TraceSettings(parse_corruption("swap:dog"), kinds=("hidden",)))
    w.pq.write_table = failing
    try:
        with pytest.raises(OSError, match="disk full"):
            trace_store(req, echo=lambda m: None, progress=False)
    finally:
        w.pq.write_table = real
    assert _manifest_bytes(out) == before and _derived_files(out) == files_before  # the orphans went too

    trace_store(req, echo=lambda m: None, progress=False)
    s = open_store(str(out))
    runs = s.sql("SELECT name, trace_id FROM trace_runs").to_dicts()
    assert sorted(r["trace_id"] for r in runs if r["name"] != "crash") == runs_before
    crash = [r["trace_id"] for r in runs if r["name"] == "crash"]
    assert len(crash) == n_samples
    traced = s.sql("SELECT DISTINCT trace_id FROM traces")["trace_id"].to_list()
    assert set(crash) | set(runs_before) == set(traced)
    assert s.sql("SELECT count(*) AS n FROM attention_contributions")["n"][0] == n_contrib  # same samples replaced
    m = json.loads((out / "manifest.json").read_text())
    commits = {m["derived"][t]["files"][0].rsplit("-", 1)[1]
               for t in ("traces", "trace_runs", "attention_contributions")}
    assert len(commits) == 1  # the three tables name one commit
    assert verify_store(str(out)).ok and _derived_files(out) == sorted(
        f for t in ("traces", "trace_runs", "attention_contributions") for f in m["derived"][t]["files"])
