"""The analyses on a real store written by `kevo ingest` (a tiny LLaVA built from a config, the AMBER fixture):
every named query runs and both engines agree, the top-candidates data matches the stored top-k, the
figures, the embedding and the report are produced from it."""

from __future__ import annotations

import polars as pl
import pytest

import queries
from kevo_store import open_store
from queries import plots
from queries.embed import embed_store
from queries.report import build_report
from tests.amber_helpers import make_amber_dir
from tests.queries_helpers import assert_frames_close
from tests.runner_helpers import kevo, tiny_model_dir


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real")
    root = make_amber_dir(tmp)
    out = tmp / "amber.kevo"
    kevo("ingest", "amber", "--data", root, "--task", "generative", "--model", tiny_model_dir("llava"), "--out", out,
         "--max-new-tokens", 8, "--hidden", "0,2,3", "--top-k", 5, "--lens", "final_norm,raw")
    return str(out)


# trace-* read derived tables this store lacks: tests/test_trace_queries.py
@pytest.mark.parametrize("name", [q.name for q in queries.list_queries() if not q.tables])
def test_every_query_runs_on_an_ingested_store(real, name):
    q = queries.load(name)
    s = open_store(real)
    params = {"lens": "raw"} if name in ("critical-layers", "mutation-events") else {}
    if name == "top-candidates":
        params["token_uid"] = int(s.sql("SELECT max(token_uid) AS t FROM tokens WHERE role = 'generated'")["t"][0])
    target = [real, real] if q.stores == 2 else real
    a = queries.run(target, name, **params)
    b = queries.run(target, name, engine="polars", **params)
    assert_frames_close(a, b)
    if name in ("critical-layers", "stages"):
        assert a.height == s.sql("SELECT count(*) AS n FROM tokens WHERE role = 'generated'")["n"][0]
    if name == "compare-stores":
        assert a["token_agreement"][0] == 1.0


def test_top_candidates_match_the_stored_topk(real):
    s = open_store(real)
    uid = int(s.sql("SELECT min(token_uid) AS t FROM tokens WHERE role = 'generated'")["t"][0])
    got = queries.run(real, "top-candidates", token_uid=uid)
    top1 = s.sql(f"SELECT layer, top1_id FROM layers WHERE token_uid = {uid} AND lens = 'final_norm'")
    crit = got["critical_layer"][0]
    last = int(top1["layer"].max())
    start = crit if crit is not None else last
    assert set(got["vocab_id"]) == set(top1.filter(pl.col("layer") >= start)["top1_id"])
    k = s.sql(f"SELECT layer, vocab_id, prob FROM topk WHERE token_uid = {uid} AND lens = 'final_norm'")
    j = got.filter(~pl.col("is_emitted")).join(k, on=["layer", "vocab_id"], how="left", suffix="_k")
    assert j["prob"].to_list() == j["prob_k"].to_list()


def test_figures_embedding_and_report_from_an_ingested_store(real, tmp_path):
    for kind in ("candidates", "js-heatmap", "stages", "critical-layers", "divergence", "hallucination"):
        assert len(plots.plot(kind, real, tmp_path / kind)) == 2
    out = embed_store(real, where="role = 'generated'", method="pca")
    assert out.layers == [0, 2, 3] and out.dispersion.height == 3
    assert len(plots.plot("tsne", real, tmp_path / "tsne.png")) == 1
    html = build_report(real, tmp_path / "r.html")
    text = open(html).read()
    assert "Provenance" in text and "llava" in text.lower() and "data:image/png;base64," in text
