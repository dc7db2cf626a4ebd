"""Every named query returns exactly what the synthetic store planted, and nothing else."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import queries
from kevo_store import open_store

LENSES = ("final_norm", "raw")


def _i64(df, *cols):
    return df.with_columns(pl.col(c).cast(pl.Int64) for c in cols)


@pytest.mark.parametrize("lens", LENSES)
def test_critical_layers_both_definitions(planted, lens):  # noqa: F811
    path, truth = planted
    got = _i64(queries.run(path, "critical-layers", lens=lens), "critical_layer", "critical_layer_js")
    want = truth.tokens.filter(pl.col("lens") == lens)
    assert got["token_uid"].to_list() == want["token_uid"].to_list()
    assert got["critical_layer"].to_list() == want["critical_layer"].to_list()
    assert got["critical_layer_js"].to_list() == want["critical_layer_js"].to_list()


def test_critical_layers_of_the_hand_written_plants(planted):  # noqa: F811
    """The plants (on the first lens only) as written in tests/queries_helpers.py: camera at 20, never, ..."""
    path, _ = planted
    got = queries.run(path, "critical-layers").filter(pl.col("token_uid") < 7)
    assert got["critical_layer"].to_list() == [20, None, 14, 15, 12, 16, 12]


@pytest.mark.parametrize("window", [0, 1, 2, 5])
def test_stabilisation_variant_other_windows(planted, window):  # noqa: F811
    path, truth = planted
    got = queries.run(path, "critical-layers", window=window)["critical_layer_js"].fill_null(-1).to_numpy()
    assert np.array_equal(got, truth.critical_layers_js(window, "final_norm"))


def test_critical_layer_distribution_counts(planted):  # noqa: F811
    path, truth = planted
    d = _i64(queries.run(path, "critical-layer-distribution"), "layer", "n_critical", "n_critical_js")
    t = truth.tokens.filter(pl.col("lens") == "final_norm")
    want = t.group_by("critical_layer").len().rename({"critical_layer": "layer", "len": "n"})
    got = d.select("layer", "n_critical").filter(pl.col("n_critical") > 0)
    assert sorted(got.rows(), key=str) == sorted(want.cast({"n": pl.Int64}).rows(), key=str)
    want_js = t.group_by("critical_layer_js").len()
    got_js = d.select("layer", "n_critical_js").filter(pl.col("n_critical_js") > 0)
    assert sorted(got_js.rows(), key=str) == sorted(want_js.cast({"len": pl.Int64}).rows(), key=str)
    assert d["n_tokens"].unique().to_list() == [360]
    assert d["layer"][-1] is None  # "never reached" comes last


@pytest.mark.parametrize("lens", LENSES)
@pytest.mark.parametrize("min_held", [2, 3, 4])
def test_mutation_events_exactly_the_planted_ones(planted, lens, min_held):  # noqa: F811
    path, truth = planted
    got = _i64(queries.run(path, "mutation-events", lens=lens, min_held=min_held),
               "mutation_layer", "displaced_id")
    want = truth.events(min_held).filter(pl.col("lens") == lens)
    cols = ["token_uid", "mutation_layer", "kind", "displaced_id"]
    assert got.select(cols).rows() == want.select(cols).rows()
    assert got.height > 50  # the planted store has plenty of each kind
    assert set(got["kind"]) == {"top1", "js", "top1+js"}


def test_mutation_event_details_for_the_hand_written_plants(planted):  # noqa: F811
    path, truth = planted
    ev = queries.run(path, "mutation-events").filter(pl.col("token_uid") < 7)
    rows = [(r["token_uid"], r["critical_layer"], r["mutation_layer"], r["kind"], r["displaced_piece"],
             r["new_top1_piece"], r["held_layers"]) for r in ev.iter_rows(named=True)]
    assert rows == [
        (0, 20, 27, "top1+js", "▁camera", "▁water", 7),
        (2, 14, 24, "js", None, "▁cat", None),
        (4, 12, 18, "top1+js", "▁car", "▁tree", 6),
        (4, 12, 25, "top1+js", "▁tree", "▁person", 7),
        (5, 16, 22, "top1", "▁horse", "▁bench", 6),
        (6, 12, 18, "top1+js", "▁car", "▁tree", 6),
        (6, 12, 25, "top1+js", "▁tree", "▁car", 7),
    ]
    e0 = ev.row(0, named=True)
    # the divergence jump is recorded: js_prev at the mutation layer against the stable-stage median
    s = open_store(path)
    js = s.sql("SELECT layer, js_prev FROM layers WHERE token_uid = 0 AND lens = 'final_norm' ORDER BY layer")
    after = js.filter(pl.col("layer") > 20)["js_prev"].to_numpy()
    assert e0["js_prev"] == pytest.approx(float(js["js_prev"][27]))
    assert e0["js_median"] == pytest.approx(float(np.median(after)), rel=1e-6)
    assert e0["js_ratio"] > 5


def test_label_filter(planted):  # noqa: F811
    path, truth = planted
    got = queries.run(path, "mutation-events", label="hallucinated")
    labels = truth.tokens.filter(pl.col("lens") == "final_norm").select("token_uid", "label")
    want = truth.events_default.filter(pl.col("lens") == "final_norm").join(labels, on="token_uid").filter(
        pl.col("label") == "hallucinated")
    assert got["token_uid"].to_list() == want["token_uid"].to_list()
    assert set(got["label"]) == {"hallucinated"}


def test_stages(planted):  # noqa: F811
    path, truth = planted
    st = _i64(queries.run(path, "stages"), "critical_layer", "mutation_layer", "rapid_layers", "stable_layers",
              "mutation_layers")
    t = truth.tokens.filter(pl.col("lens") == "final_norm")
    assert st["critical_layer"].to_list() == t["critical_layer"].to_list()
    assert st["mutation_layer"].to_list() == t["mutation_layer"].to_list()
    assert (st["rapid_layers"] + st["stable_layers"] + st["mutation_layers"] == 33).all()
    r0 = st.row(0, named=True)
    assert (r0["rapid_layers"], r0["stable_layers"], r0["mutation_layers"]) == (20, 7, 6)
    r1 = st.row(1, named=True)  # never stands out: all rapid evolution
    assert (r1["rapid_layers"], r1["stable_layers"], r1["mutation_layers"]) == (33, 0, 0)


def test_stage_distribution_matches_per_token_stages(planted):  # noqa: F811
    path, truth = planted
    t = truth.tokens.filter(pl.col("lens") == "final_norm")
    c = t["critical_layer"].fill_null(99).to_numpy()[:, None]
    m = t["mutation_layer"].fill_null(99).to_numpy()[:, None]
    lay = np.arange(33)[None, :]
    d = queries.run(path, "stage-distribution").sort("layer")
    assert d["n_rapid"].to_list() == (lay < c).sum(0).tolist()
    assert d["n_stable"].to_list() == ((lay >= c) & (lay < m)).sum(0).tolist()
    assert d["n_mutation"].to_list() == (lay >= m).sum(0).tolist()


def test_hallucination_contrast(planted):  # noqa: F811
    path, truth = planted
    t = truth.tokens.filter(pl.col("lens") == "final_norm").with_columns(
        pl.col("label").fill_null("non-object").alias("token_class"))
    want = t.group_by("token_class").agg(
        pl.len().alias("n_tokens"), pl.col("mutation_layer").is_not_null().sum().alias("n_mutated"),
        pl.col("n_events").sum().alias("n_events"), pl.col("critical_layer").mean().alias("critical_layer_mean"),
        pl.col("mutation_layer").median().alias("mutation_layer_median"))
    got = queries.run(path, "hallucination-contrast")
    assert got["token_class"].to_list()[:2] == ["hallucinated", "correct"]
    g = got.join(want, on="token_class", suffix="_t")
    assert g.height == want.height
    for col in ("n_tokens", "n_mutated", "n_events"):
        assert (g[col].cast(pl.Int64) == g[f"{col}_t"].cast(pl.Int64)).all(), col
    np.testing.assert_allclose(g["critical_layer_mean"], g["critical_layer_mean_t"])
    np.testing.assert_allclose(g["mutation_layer_median"], g["mutation_layer_median_t"])
    np.testing.assert_allclose(g["mutation_rate"], g["n_mutated_t"] / g["n_tokens_t"])
    # the planted tendency is visible: hallucinated tokens mutate more often than correct ones
    rate = dict(zip(got["token_class"], got["mutation_rate"]))
    assert rate["hallucinated"] > rate["correct"]


def test_hallucination_curves_count_events_and_critical_layers(planted):  # noqa: F811
    path, truth = planted
    got = queries.run(path, "hallucination-curves")
    labels = truth.tokens.filter(pl.col("lens") == "final_norm").select(
        "token_uid", pl.col("label").fill_null("non-object").alias("token_class"), "critical_layer")
    ev = truth.events_default.filter(pl.col("lens") == "final_norm").join(labels, on="token_uid")
    want_ev = ev.group_by("token_class", "mutation_layer").len()
    g = got.filter(pl.col("n_mutation_events") > 0).select(
        "token_class", pl.col("layer").cast(pl.Int64), pl.col("n_mutation_events").cast(pl.UInt32))
    assert sorted(g.rows()) == sorted(want_ev.rows())
    want_c = labels.drop_nulls("critical_layer").group_by("token_class", "critical_layer").len()
    gc = got.filter(pl.col("n_critical") > 0).select(
        "token_class", pl.col("layer").cast(pl.Int64), pl.col("n_critical").cast(pl.UInt32))
    assert sorted(gc.rows()) == sorted(want_c.rows())
    # p_out median against numpy over the raw table
    s = open_store(path)
    raw = s.sql("""SELECT coalesce(t.label, 'non-object') AS c, y.layer, y.p_out FROM layers y JOIN tokens t
                   USING (token_uid) WHERE y.lens = 'final_norm' AND t.label = 'hallucinated' AND y.layer = 25""")
    row = got.filter((pl.col("token_class") == "hallucinated") & (pl.col("layer") == 25))
    assert row["p_out_median"][0] == pytest.approx(float(np.median(raw["p_out"].to_numpy())), rel=1e-6)
    assert row["p_out_q25"][0] == pytest.approx(float(np.quantile(raw["p_out"].to_numpy(), 0.25)), rel=1e-6)


def test_divergence_curves_against_numpy(planted):  # noqa: F811
    path, _ = planted
    got = queries.run(path, "divergence-curves", lens="raw")
    s = open_store(path)
    raw = s.sql("""SELECT coalesce(t.label, 'non-object') AS c, y.layer, y.js_prev FROM layers y
                   JOIN tokens t USING (token_uid) WHERE y.lens = 'raw'""")
    for (c, layer), g in raw.group_by("c", "layer"):
        row = got.filter((pl.col("token_class") == c) & (pl.col("layer") == layer)).row(0, named=True)
        v = g["js_prev"].drop_nulls().to_numpy().astype(np.float64)
        if len(v) == 0:
            assert row["js_prev_median"] is None
            continue
        assert row["js_prev_median"] == pytest.approx(np.median(v), rel=1e-6)
        assert row["js_prev_q25"] == pytest.approx(np.quantile(v, 0.25), rel=1e-6)
        assert row["js_prev_q75"] == pytest.approx(np.quantile(v, 0.75), rel=1e-6)
    assert got.height == raw.select("c", "layer").unique().height


def test_top_candidates_fig2_data(planted):  # noqa: F811
    path, truth = planted
    got = queries.run(path, "top-candidates", token_uid=0)
    v = truth.vocab
    assert got["piece"].unique(maintain_order=True).to_list() == ["▁camera", "▁water"]
    assert set(got["vocab_id"]) == {v["camera"], v["water"]}
    assert got.filter(pl.col("is_emitted"))["vocab_id"].unique().to_list() == [v["water"]]
    assert got["critical_layer"].unique().to_list() == [20]
    assert got.height == 2 * 33
    s = open_store(path)
    k = s.sql(f"""SELECT layer, vocab_id, prob FROM topk WHERE token_uid = 0 AND lens = 'final_norm'
                 AND vocab_id = {v['camera']}""")
    cam = got.filter(pl.col("vocab_id") == v["camera"]).join(k, on=["layer", "vocab_id"], how="left", suffix="_k")
    assert cam["prob"].to_list() == cam["prob_k"].to_list()  # straight from topk, null where not in the top-10
    water = got.filter(pl.col("vocab_id") == v["water"])
    p_out = s.sql("SELECT p_out FROM layers WHERE token_uid = 0 AND lens = 'final_norm' ORDER BY layer")["p_out"]
    assert water.sort("layer")["prob"].to_list() == p_out.to_list()  # the emitted token: p_out at every layer
    # top-1 by layer from the critical layer on
    top1 = got.filter(pl.col("rank") == 1).sort("layer")
    assert top1.filter(pl.col("layer") >= 20)["piece"].to_list() == ["▁camera"] * 7 + ["▁water"] * 6


def test_compare_store_with_itself(planted):  # noqa: F811
    path, truth = planted
    r = queries.run([path, path], "compare-stores").row(0, named=True)
    assert r["token_agreement"] == 1.0 and r["response_agreement"] == 1.0
    assert r["n_token_pairs"] == 360 and r["n_prefix_tokens"] == 360
    assert r["critical_layer_delta"] == 0 and r["hallucinated_rate_delta"] == 0
    layers = queries.run([path, path], "compare-layers")
    assert layers.height == 33
    assert (layers["top1_agreement"] == 1.0).all() and (layers["p_out_delta"] == 0).all()


def test_compare_two_different_stores(planted, other_seed):  # noqa: F811
    pa_, ta = planted
    pb, tb = other_seed
    r = queries.run([pa_, pb], "compare-stores").row(0, named=True)
    a = ta.tokens.filter(pl.col("lens") == "final_norm").select("sample_key", "step", "token_id")
    b = tb.tokens.select("sample_key", "step", "token_id")
    j = a.join(b, on=["sample_key", "step"], suffix="_b").with_columns(
        (pl.col("token_id") == pl.col("token_id_b")).alias("same"))
    assert r["n_token_pairs"] == j.height
    assert r["token_agreement"] == pytest.approx(j["same"].mean())
    first = j.group_by("sample_key").agg(pl.when(~pl.col("same")).then(pl.col("step")).min().alias("f"))
    assert r["first_diff_step_mean"] == pytest.approx(first["f"].mean())
    before_first_diff = pl.col("f").is_null() | (pl.col("step") < pl.col("f"))
    prefix = j.join(first, on="sample_key").filter(pl.col("same") & before_first_diff)
    assert r["n_prefix_tokens"] == prefix.height
    cl = queries.run([pa_, pb], "compare-layers")
    assert (cl["n_tokens"] == prefix.height).all() if prefix.height else cl.height == 0


def test_displaced_candidates(planted):  # noqa: F811
    path, truth = planted
    got = queries.run(path, "displaced-candidates")
    labels = truth.tokens.filter(pl.col("lens") == "final_norm").select(
        "token_uid", pl.col("label").fill_null("non-object").alias("token_class"))
    ev = truth.events_default.filter((pl.col("lens") == "final_norm") & pl.col("displaced_id").is_not_null())
    want = ev.join(labels, on="token_uid").group_by("token_class", "displaced_id").agg(
        pl.len().alias("n_events"), pl.col("token_uid").n_unique().alias("n_tokens"))
    g = got.select("token_class", pl.col("displaced_id").cast(pl.Int64), pl.col("n_events").cast(pl.UInt32),
                   pl.col("n_tokens").cast(pl.UInt32))
    assert sorted(g.rows()) == sorted(want.rows())
    cam = got.filter(pl.col("displaced_piece") == "▁camera")
    assert "hallucinated" in cam["token_class"].to_list()


def _emitted_truth(truth, lens):
    """(token_uid, emitted, emitted_stays) critical layers per token from the answer key, -1 = none."""
    uid = truth.tokens.filter(pl.col("lens") == lens).sort("token_uid")["token_uid"].to_numpy()
    return uid, truth.critical_layers("emitted", lens), truth.critical_layers("emitted_stays", lens)


@pytest.mark.parametrize("lens", LENSES)
def test_emitted_token_critical_layers(planted, lens):  # noqa: F811
    path, truth = planted
    uid, emitted, stays = _emitted_truth(truth, lens)
    for definition, want in (("emitted", emitted), ("emitted_stays", stays)):
        got = queries.run(path, "critical-layers", lens=lens, definition=definition)
        assert got["token_uid"].to_list() == uid.tolist()
        assert np.array_equal(got["critical_layer"].fill_null(-1).to_numpy(), want), definition
        assert set(got["definition"]) == {definition}
        # the stabilisation variant does not depend on the definition
        js = truth.tokens.filter(pl.col("lens") == lens)["critical_layer_js"].fill_null(-1).to_numpy()
        assert np.array_equal(got["critical_layer_js"].fill_null(-1).to_numpy(), js)
    if lens == "final_norm":  # plants are on the first lens: camera->water, never, cat, table->chair, ...
        assert emitted[:7].tolist() == [27, -1, 14, 17, 25, 22, 12]
        assert stays[:7].tolist() == [27, -1, 14, 17, 25, 22, 25]
    # the paper's definition never comes later than the emitted token's
    top1 = truth.tokens.filter(pl.col("lens") == lens)["critical_layer"].fill_null(99).to_numpy()
    assert (top1 <= np.where(emitted < 0, 99, emitted)).all() and (emitted != top1).sum() > 50


def test_emitted_stays_differs_when_the_emitted_token_comes_back(tmp_path):
    """car (top-1 from 12), displaced by tree at 18, back at 25: 'emitted' says 12, 'emitted_stays' 25."""
    from queries.testing import Plant, build_synthetic_store

    plants = [Plant("double", critical_layer=12, mutation_layers=(18, 25), words=("car", "tree", "car"),
                    label="correct"),
              Plant("double", critical_layer=10, mutation_layers=(14, 20), words=("cup", "tree", "bird"),
                    label="hallucinated")]
    path = tmp_path / "back.kevo"
    truth = build_synthetic_store(path, n_samples=2, n_tokens=6, seed=3, plants=plants)
    uid, emitted, stays = _emitted_truth(truth, "final_norm")
    assert (emitted[:2].tolist(), stays[:2].tolist()) == ([12, 20], [25, 20])
    for engine in ("duckdb", "polars"):
        for definition, want in (("emitted", emitted), ("emitted_stays", stays)):
            got = queries.run(path, "critical-layers", definition=definition, engine=engine)
            assert np.array_equal(got["critical_layer"].fill_null(-1).to_numpy(), want), (engine, definition)
    d = _i64(queries.run(path, "critical-layer-distribution", definition="emitted_stays", label="correct"),
             "layer", "n_critical")
    lab = truth.tokens.filter(pl.col("label") == "correct").sort("token_uid")
    want = pl.DataFrame({"layer": stays[lab["token_uid"].to_numpy()]}).group_by("layer").len()
    got = d.filter(pl.col("n_critical") > 0).select(pl.col("layer").fill_null(-1), "n_critical")
    assert sorted(got.rows()) == sorted(want.cast({"len": pl.Int64}).rows())
    assert d["n_tokens"].unique().to_list() == [lab.height]


@pytest.mark.parametrize("definition", ["top1", "emitted", "emitted_stays"])
@pytest.mark.parametrize("label", ["", "hallucinated", "correct"])
def test_critical_layer_distribution_by_definition_and_label(planted, definition, label):  # noqa: F811
    path, truth = planted
    t = truth.tokens.filter(pl.col("lens") == "final_norm").sort("token_uid").with_columns(
        layer=pl.Series(truth.critical_layers(definition, "final_norm")))
    if label:
        t = t.filter(pl.col("label") == label)
    want = t.group_by("layer").len().cast({"len": pl.Int64})
    d = _i64(queries.run(path, "critical-layer-distribution", definition=definition, label=label),
             "layer", "n_critical", "n_tokens")
    got = d.filter(pl.col("n_critical") > 0).select(pl.col("layer").fill_null(-1), "n_critical")
    assert sorted(got.rows()) == sorted(want.rows())
    assert d["n_tokens"].unique().to_list() == [t.height]
    np.testing.assert_allclose(d["frac_critical"].sum(), 1.0)
