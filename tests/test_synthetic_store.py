"""The synthetic store builder: the tables it writes are internally consistent and carry what it says it planted."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from kevo_store import open_store
from kevo_store.verify import verify_store
from queries.testing import Plant, build_synthetic_store, synthesize


def test_store_opens_and_verifies(planted):  # noqa: F811
    path, truth = planted
    s = open_store(path)
    assert s.rows("samples") == 30 and s.rows("tokens") == 360
    assert s.rows("layers") == 360 * 33 * 2 and s.rows("topk") == 360 * 33 * 2 * 10
    assert sorted(s.lens_modes) == ["final_norm", "raw"]
    rep = verify_store(path)
    assert rep.ok, rep.problems


def test_topk_agrees_with_layers(planted):  # noqa: F811
    path, _ = planted
    s = open_store(path)
    # rank 1 of topk is the layer's top-1 with its probability; ranks are strictly descending in prob
    bad = s.sql("""SELECT count(*) AS n FROM topk k JOIN layers y USING (token_uid, lens, layer)
                   WHERE k.rank = 1 AND (k.vocab_id <> y.top1_id OR k.prob <> y.top1_prob)""")["n"][0]
    assert bad == 0
    k = s.sql("SELECT token_uid, lens, layer, rank, prob FROM topk ORDER BY token_uid, lens, layer, rank")
    p = k["prob"].to_numpy().reshape(-1, 10)
    assert (np.diff(p, axis=1) < 0).all()
    assert (p.sum(axis=1) <= 1.0 + 1e-6).all()
    # p_out/rank_out of the emitted token agree with topk wherever it is there, and are below rank 10 elsewhere
    j = s.sql("""SELECT y.p_out, y.rank_out, k.prob, k.rank, k10.prob AS p10 FROM layers y
                 JOIN tokens t USING (token_uid)
                 LEFT JOIN topk k ON k.token_uid = y.token_uid AND k.lens = y.lens AND k.layer = y.layer
                                  AND k.vocab_id = t.token_id
                 JOIN topk k10 ON k10.token_uid = y.token_uid AND k10.lens = y.lens AND k10.layer = y.layer
                               AND k10.rank = 10""")
    hit = j.filter(pl.col("prob").is_not_null())
    assert (hit["p_out"] == hit["prob"]).all() and (hit["rank_out"] == hit["rank"]).all()
    miss = j.filter(pl.col("prob").is_null())
    assert (miss["rank_out"] > 10).all() and (miss["p_out"] < miss["p10"]).all()


def test_emitted_token_is_last_layer_top1_and_js_bounds(planted):  # noqa: F811
    path, _ = planted
    s = open_store(path)
    n = s.sql("""SELECT count(*) AS n FROM layers y JOIN tokens t USING (token_uid)
                 WHERE y.layer = 32 AND y.top1_id <> t.token_id""")["n"][0]
    assert n == 0
    js = s.sql("SELECT layer, js_prev FROM layers")
    assert js.filter(pl.col("layer") == 0)["js_prev"].null_count() == js.filter(pl.col("layer") == 0).height
    v = js.filter(pl.col("layer") > 0)["js_prev"]
    assert v.null_count() == 0 and v.min() >= 0 and v.max() <= np.log(2)


def test_planted_critical_layers_match_the_rendered_values(planted):  # noqa: F811
    """An independent numpy reading of the layers table finds the critical layers the truth states."""
    path, truth = planted
    s = open_store(path)
    for lens in ("final_norm", "raw"):
        p = s.sql(f"SELECT top1_prob FROM layers WHERE lens = '{lens}' ORDER BY token_uid, layer")["top1_prob"]
        m = p.to_numpy().reshape(360, 33) >= truth.params["tau"]
        crit = np.where(m.any(axis=1), m.argmax(axis=1), -1)
        assert np.array_equal(crit, truth.critical[lens])


def test_emitted_critical_layers_match_the_rendered_values(planted):  # noqa: F811
    """The truth's critical layers under the emitted-token definitions, against a numpy reading of rank_out/p_out."""
    path, truth = planted
    s = open_store(path)
    tau = truth.params["tau"]
    for lens in ("final_norm", "raw"):
        d = s.sql(f"SELECT rank_out, p_out FROM layers WHERE lens = '{lens}' ORDER BY token_uid, layer")
        top = d["rank_out"].to_numpy().reshape(360, 33) == 1
        ok = top & (d["p_out"].to_numpy().reshape(360, 33) >= tau)
        emitted = np.where(ok.any(axis=1), ok.argmax(axis=1), -1)
        assert np.array_equal(emitted, truth.critical_layers("emitted", lens))
        # stays: ok at the layer and top-1 at every layer after it
        stays_top = np.flip(np.cumprod(np.flip(top, axis=1), axis=1), axis=1).astype(bool)
        okk = ok & stays_top
        stays = np.where(okk.any(axis=1), okk.argmax(axis=1), -1)
        assert np.array_equal(stays, truth.critical_layers("emitted_stays", lens))
        assert (emitted != truth.critical[lens]).sum() > 50  # the definitions really differ on this store


def test_hand_written_plants(planted):  # noqa: F811
    path, truth = planted
    t = truth.tokens.filter(pl.col("lens") == "final_norm").sort("token_uid")
    v = truth.vocab
    row0 = t.row(0, named=True)
    assert (row0["kind"], row0["critical_layer"], row0["mutation_layer"]) == ("mutation", 20, 27)
    assert row0["candidates"] == [v["camera"], v["water"]] and row0["token_id"] == v["water"]
    ev = truth.events_default.filter(pl.col("lens") == "final_norm")
    assert ev.filter(pl.col("token_uid") == 0).rows() == [(0, "final_norm", 27, "top1+js", v["camera"], 7, 20)]
    assert ev.filter(pl.col("token_uid") == 1).height == 0 and t.row(1, named=True)["critical_layer"] is None
    assert ev.filter(pl.col("token_uid") == 2).rows() == [(2, "final_norm", 24, "js", None, None, 14)]
    assert ev.filter(pl.col("token_uid") == 3).height == 0  # held 2 layers < min_held 3
    assert truth.events(2).filter((pl.col("token_uid") == 3) & (pl.col("lens") == "final_norm")).rows() == [
        (3, "final_norm", 17, "top1", v["table"], 2, 15)]
    assert ev.filter(pl.col("token_uid") == 4).rows() == [
        (4, "final_norm", 18, "top1+js", v["car"], 6, 12), (4, "final_norm", 25, "top1+js", v["tree"], 7, 12)]
    assert ev.filter(pl.col("token_uid") == 5).rows() == [(5, "final_norm", 22, "top1", v["horse"], 6, 16)]
    s = open_store(path)
    lab = s.sql("SELECT token_uid, label, hallucinated FROM tokens WHERE token_uid < 6 ORDER BY token_uid")
    assert lab["label"].to_list() == ["hallucinated", "correct", "correct", "correct", "hallucinated", "safe"]
    assert lab["hallucinated"].to_list() == [True, False, False, False, True, False]


@pytest.mark.parametrize("plant, msg", [
    (Plant("swap", critical_layer=20, mutation_layers=(22,), words=("camera", "water")), "m1 must hold"),
    (Plant("mutation", critical_layer=20, mutation_layers=(27,), words=("camera",)), "needs 2 words"),
    (Plant("double", critical_layer=12, mutation_layers=(18,), words=("car", "tree", "person")),
     "needs 2 mutation_layers"),
    (Plant("js", critical_layer=14, mutation_layers=(16,), words=("cat",)), "inside the critical_layer_js window"),
    (Plant("bogus"), "unknown kind"),
])
def test_ambiguous_plants_are_refused(plant, msg):
    with pytest.raises(ValueError, match=msg):
        synthesize(n_samples=1, n_tokens=2, plants=[plant])


def test_hidden_guitar_and_resume_free_rebuild(tmp_path):
    truth = build_synthetic_store(tmp_path / "h.kevo", n_samples=6, n_tokens=3, hidden_size=16, seed=1)
    s = open_store(tmp_path / "h.kevo")
    assert s.hidden_layers == list(range(33))
    h = s.hidden([0, 3], [0, 16])
    assert h.shape == (2, 2, 16) and h.dtype == np.float16
    guitar = s.sql("SELECT count(*) AS n FROM tokens WHERE is_answer AND piece = '▁guitar'")["n"][0]
    assert guitar == 6 and truth.answer_token_id == truth.vocab["guitar"]
    assert truth.dispersion_sigma.shape == (33,)


def test_same_seed_same_store(tmp_path):
    a, _, ta = synthesize(n_samples=3, n_tokens=4, seed=9)
    b, _, tb = synthesize(n_samples=3, n_tokens=4, seed=9)
    for name in a:
        assert a[name].equals(b[name]), name
    assert ta.events_default.equals(tb.events_default)


def test_scaled_store_is_chunks_of_synthetic_stores(tmp_path):
    """build_scaled_store (the 16x AMBER benchmark store): chunk 0 is build_synthetic_store's store of the
    same seed, later chunks are other seeds' stores numbered on, and the whole verifies."""
    from queries.testing import build_scaled_store

    info = build_scaled_store(tmp_path / "big.kevo", 10, chunk_samples=4, n_tokens=5, n_layers=24, top_k=3, seed=7)
    assert info["chunks"] == 3
    build_synthetic_store(tmp_path / "one.kevo", n_samples=4, n_tokens=5, n_layers=24, top_k=3, seed=7)
    build_synthetic_store(tmp_path / "two.kevo", n_samples=4, n_tokens=5, n_layers=24, top_k=3, seed=7 + 1_000_003)
    big, one, two = (open_store(tmp_path / f"{n}.kevo") for n in ("big", "one", "two"))
    assert verify_store(tmp_path / "big.kevo").ok
    assert big.rows("samples") == 10 and big.rows("tokens") == 50 and big.rows("topk") == 50 * 24 * 3
    keys = big.sql("SELECT sample_key FROM samples ORDER BY sample_key")["sample_key"].to_list()
    assert keys == sorted(f"synthetic:{i}" for i in range(10))
    cols = "t.token_id, y.layer, y.top1_id, y.top1_prob, y.p_out"
    q = (f"SELECT {cols} FROM layers y JOIN tokens t USING (token_uid) WHERE t.token_uid {{}} "
         "ORDER BY t.token_uid, y.layer")
    assert big.sql(q.format("< 20")).equals(one.sql(q.format("< 20")))
    second = big.sql(q.format("BETWEEN 20 AND 39"))
    assert second.equals(two.sql(q.format("< 20"))) and not second.equals(one.sql(q.format("< 20")))
