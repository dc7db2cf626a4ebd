"""Every query with a critical layer or mutation events, under every definition of the critical layer and
every label filter, answers exactly what the synthetic store planted (queries.testing's answer key:
the plan, not the SQL)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import queries
from queries.testing import DEFINITIONS

LABELS = ("", "hallucinated", "correct", "safe")
CASES = [(d, lab, "final_norm") for d in DEFINITIONS for lab in LABELS] + [(d, "", "raw") for d in DEFINITIONS]
N_LAYERS = 33


def _cls(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.col("label").fill_null("non-object").alias("token_class"))


def _want(truth, definition, label, lens):
    """(per-token stories, events) the plan states for this definition, restricted to the label."""
    st = truth.stories(definition).filter(pl.col("lens") == lens)
    ev = truth.events(definition=definition).filter(pl.col("lens") == lens).join(
        st.select("token_uid", "label"), on="token_uid")
    if label:
        st, ev = st.filter(pl.col("label") == label), ev.filter(pl.col("label") == label)
    return _cls(st), _cls(ev)


def _rows(df: pl.DataFrame, *cols) -> list[tuple]:
    return sorted(df.select(cols).rows(), key=lambda r: tuple((x is None, x) for x in r))


def _ints(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.col(c).cast(pl.Int64) for c, dt in df.schema.items()
                           if dt.is_integer() or isinstance(dt, pl.Decimal))


@pytest.fixture(scope="module", params=CASES, ids=lambda c: "-".join(x or "all" for x in c))
def case(request, planted):  # noqa: F811
    path, truth = planted
    definition, label, lens = request.param
    st, ev = _want(truth, definition, label, lens)
    assert st.height > 0
    got = {}
    for name in ("critical-layers", "critical-layer-distribution", "mutation-events", "stages", "stage-distribution",
                 "hallucination-contrast", "hallucination-curves", "displaced-candidates", "divergence-curves"):
        got[name] = _ints(queries.run(path, name, definition=definition, label=label, lens=lens)
                          if name != "divergence-curves" else queries.run(path, name, label=label, lens=lens))
    return truth, definition, label, lens, st, ev, got


def test_the_definitions_really_differ_on_the_planted_store(planted):  # noqa: F811
    _, truth = planted
    c = {d: truth.critical_layers(d, "final_norm") for d in DEFINITIONS}
    assert (c["top1"] != c["emitted"]).sum() > 50 and (c["emitted"] != c["emitted_stays"]).sum() > 0
    ev = {d: truth.events(definition=d).height for d in DEFINITIONS}
    assert len(set(ev.values())) == 3, ev


def test_critical_layers(case):
    truth, definition, label, lens, st, ev, got = case
    g = got["critical-layers"]
    assert _rows(g, "token_uid", "critical_layer", "critical_layer_js") == _rows(
        st, "token_uid", "critical_layer", "critical_layer_js")
    assert set(g["definition"]) == {definition} and set(g["lens"]) == {lens}


def test_critical_layer_distribution(case):
    truth, definition, label, lens, st, ev, got = case
    d = got["critical-layer-distribution"]
    want = st.group_by("critical_layer").len().rename({"critical_layer": "layer"}).cast({"len": pl.Int64})
    assert _rows(d.filter(pl.col("n_critical") > 0), "layer", "n_critical") == _rows(want, "layer", "len")
    want_js = st.group_by("critical_layer_js").len().cast({"len": pl.Int64})
    assert _rows(d.filter(pl.col("n_critical_js") > 0), "layer", "n_critical_js") == _rows(
        want_js, "critical_layer_js", "len")
    assert d["n_tokens"].unique().to_list() == [st.height]


def test_mutation_events(case):
    truth, definition, label, lens, st, ev, got = case
    cols = ("token_uid", "mutation_layer", "kind", "displaced_id", "held_layers", "critical_layer")
    assert _rows(got["mutation-events"], *cols) == _rows(ev, *cols)
    if not label and definition == "top1":  # later critical layers leave fewer switches to count
        assert set(ev["kind"]) == {"top1", "js", "top1+js"}
    assert ev.height > 0


def test_stages_and_their_distribution(case):
    truth, definition, label, lens, st, ev, got = case
    cols = ("token_uid", "critical_layer", "mutation_layer", "rapid_layers", "stable_layers", "mutation_layers")
    assert _rows(got["stages"], *cols) == _rows(st, *cols)
    c = st["critical_layer"].fill_null(99).to_numpy()[:, None]
    m = st["mutation_layer"].fill_null(99).to_numpy()[:, None]
    lay = np.arange(N_LAYERS)[None, :]
    d = got["stage-distribution"].sort("layer")
    assert d["layer"].to_list() == list(range(N_LAYERS))
    assert d["n_rapid"].to_list() == (lay < c).sum(0).tolist()
    assert d["n_stable"].to_list() == ((lay >= c) & (lay < m)).sum(0).tolist()
    assert d["n_mutation"].to_list() == (lay >= m).sum(0).tolist()


def test_hallucination_contrast(case):
    truth, definition, label, lens, st, ev, got = case
    want = st.group_by("token_class").agg(
        pl.len().cast(pl.Int64).alias("n_tokens"),
        pl.col("mutation_layer").is_not_null().sum().cast(pl.Int64).alias("n_mutated"),
        pl.col("n_events").sum().alias("n_events"), pl.col("n_displaced").sum().alias("n_displaced"),
        pl.col("critical_layer").is_not_null().sum().cast(pl.Int64).alias("n_with_critical"),
        pl.col("critical_layer").mean().alias("critical_layer_mean"),
        pl.col("critical_layer").median().alias("critical_layer_median"),
        pl.col("mutation_layer").mean().alias("mutation_layer_mean"),
        pl.col("mutation_layer").median().alias("mutation_layer_median"))
    g = got["hallucination-contrast"]
    assert sorted(g["token_class"]) == sorted(want["token_class"])
    j = g.join(want, on="token_class", suffix="_t")
    for col in ("n_tokens", "n_mutated", "n_events", "n_displaced", "n_with_critical"):
        assert j[col].to_list() == j[f"{col}_t"].to_list(), col
    for col in ("critical_layer_mean", "critical_layer_median", "mutation_layer_mean", "mutation_layer_median"):
        np.testing.assert_allclose(j[col].fill_null(np.nan).to_numpy(), j[f"{col}_t"].fill_null(np.nan).to_numpy(),
                                   err_msg=col)


def test_hallucination_curves(case):
    truth, definition, label, lens, st, ev, got = case
    g = got["hallucination-curves"]
    want_c = st.drop_nulls("critical_layer").group_by("token_class", "critical_layer").len().cast({"len": pl.Int64})
    assert _rows(g.filter(pl.col("n_critical") > 0), "token_class", "layer", "n_critical") == _rows(
        want_c, "token_class", "critical_layer", "len")
    want_e = ev.group_by("token_class", "mutation_layer").len().cast({"len": pl.Int64})
    assert _rows(g.filter(pl.col("n_mutation_events") > 0), "token_class", "layer", "n_mutation_events") == _rows(
        want_e, "token_class", "mutation_layer", "len")
    per_class = dict(st.group_by("token_class").len().rows())
    assert all(n == per_class[c] for c, n in g.select("token_class", "n_tokens").rows())


def test_displaced_candidates(case):
    truth, definition, label, lens, st, ev, got = case
    want = ev.filter(pl.col("displaced_id").is_not_null()).group_by("token_class", "displaced_id").agg(
        pl.len().cast(pl.Int64).alias("n_events"), pl.col("token_uid").n_unique().cast(pl.Int64).alias("n_tokens"),
        pl.col("mutation_layer").mean().alias("mutation_layer_mean"))
    g = got["displaced-candidates"]
    assert _rows(g, "token_class", "displaced_id", "n_events", "n_tokens") == _rows(
        want, "token_class", "displaced_id", "n_events", "n_tokens")
    j = g.join(want, on=["token_class", "displaced_id"], suffix="_t")
    np.testing.assert_allclose(j["mutation_layer_mean"], j["mutation_layer_mean_t"])


def test_divergence_curves_follow_the_label(case):
    truth, definition, label, lens, st, ev, got = case
    g = got["divergence-curves"]
    assert set(g["token_class"]) == set(st["token_class"])
    per_class = dict(st.group_by("token_class").len().rows())
    assert all(n == per_class[c] for c, n in g.select("token_class", "n_tokens").rows())


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_top_candidates_and_compare_stores(planted, definition):  # noqa: F811
    path, truth = planted
    c = truth.critical_layers(definition, "final_norm")
    start, cand = truth.segments["final_norm"]
    last = N_LAYERS - 1
    for uid in [0, 1, 2, 3, 4, 5, 77, 150, 301]:
        got = queries.run(path, "top-candidates", token_uid=uid, definition=definition)
        assert got["critical_layer"].unique().to_list() == [None if c[uid] < 0 else int(c[uid])]
        # the candidates that hold top-1 somewhere from the critical layer on (the last layer if none)
        frm = c[uid] if c[uid] >= 0 else last
        segs = [s for s in range(3) if cand[uid, s] >= 0]
        ends = [start[uid, s + 1] - 1 if s + 1 in segs else last for s in segs]
        want = {int(cand[uid, s]) for s, e in zip(segs, ends) if e >= frm}
        assert set(got["vocab_id"]) == want, uid
    r = queries.run([path, path], "compare-stores", definition=definition).row(0, named=True)
    assert r["critical_layer_mean_a"] == pytest.approx(c[c >= 0].mean())
    assert r["critical_layer_delta"] == 0


@pytest.mark.parametrize("definition", DEFINITIONS)
def test_both_engines_agree_under_every_definition(planted, definition):  # noqa: F811
    from tests.queries_helpers import assert_frames_close

    path, _ = planted
    for q in queries.list_queries():
        if "definition" not in {p.name for p in q.params}:
            continue
        kw = {"definition": definition, "lens": "raw"}
        if "label" in {p.name for p in q.params}:
            kw["label"] = "hallucinated"
        if q.name == "top-candidates":
            kw["token_uid"] = 4
        target = [path, path] if q.stores == 2 else path
        assert_frames_close(queries.run(target, q.name, **kw), queries.run(target, q.name, engine="polars", **kw))


def test_every_query_with_a_critical_layer_takes_definition_and_label():
    with_definition = {q.name for q in queries.list_queries() if "definition" in {p.name for p in q.params}}
    assert with_definition == {"stages", "stage-distribution", "hallucination-contrast", "hallucination-curves",
                               "displaced-candidates", "mutation-events", "critical-layers",
                               "critical-layer-distribution", "top-candidates", "compare-stores", "align-tokens"}
    one_store = {q.name for q in queries.list_queries() if q.stores == 1 and q.name != "top-candidates"}
    for name in with_definition & one_store:
        assert "label" in {p.name for p in queries.load(name).params}, name
