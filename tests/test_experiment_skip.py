"""`kevo experiment skip`: ranges derived from planted stores, variant stores, the comparison table.

- The derived c, m1, m2 equal a hand computation from the planted truth (mode of the critical
  layers; nearest-rank quartiles, ceil(q * n)-th smallest, of the object tokens' mutation layers,
  or of all tokens' when too few object tokens have one); a store too small says what it needed and had.
- A variant store equals a manual `kevo ingest --skip-layers` with the same range.
- The comparison of two stores with hand-chosen responses equals hand-worked numbers.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from ingest.experiments.command import ExperimentError, Kevo
from ingest.experiments.derive import derive_ranges, variant_ranges
from ingest.organism import world
from ingest.organism.train import WEIGHTS_DIR
from kevo_store import open_store
from queries.testing import build_synthetic_store
from tests.runner_helpers import REPRODUCIBLE_ENV, kevo, store_content

N_LAYERS = 24  # layer rows 0..23 of the synthetic store


def _nearest_rank(values: list[int], q: float) -> int:
    v = sorted(values)
    return v[math.ceil(q * len(v)) - 1]


def _hand(truth, objects_only: bool):
    tok = truth.tokens.to_dicts()
    crit = Counter(t["critical_layer"] for t in tok if t["critical_layer"] is not None and t["critical_layer"] >= 0)
    top = max(crit.values())
    c = min(layer for layer, n in crit.items() if n == top)
    labelled = {t["token_uid"] for t in tok if t["label"] is not None}
    ev = [e for e in truth.events_default.to_dicts() if not objects_only or e["token_uid"] in labelled]
    layers = [e["mutation_layer"] for e in ev]
    return c, _nearest_rank(layers, 0.25), _nearest_rank(layers, 0.75), len({e["token_uid"] for e in ev})


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    d = tmp_path_factory.mktemp("planted")
    store = d / "planted.kevo"
    truth = build_synthetic_store(store, n_samples=30, n_tokens=12, n_layers=N_LAYERS, seed=21)
    return d, store, truth


def test_variant_ranges_stay_inside_the_decoder():
    """A mutation at the last hidden state (m2 = L, the organism's case) is produced by the last decoder
    layer, L - 1: every variant is a range `kevo ingest --skip-layers` accepts."""
    from ingest.experiments.derive import Derivation

    d = Derivation(critical_layer=1, m1=4, m2=8, n_layers=8, n_generated_tokens=0, n_critical_tokens=0,
                   mutation_tokens="object", n_mutation_events=0, n_mutation_tokens=0, sql={})
    v = {k: layers for k, (layers, _) in variant_ranges(d, keep_last=2).items()}
    assert v == {"skip.1": [1, 2], "skip.2": [3, 4, 5, 6, 7], "skip.3": [1, 2, 3, 4, 5]}


def test_derived_ranges_equal_hand_computation(planted):
    d, store, truth = planted
    c, m1, m2, n_obj = _hand(truth, objects_only=True)
    assert n_obj >= 5 and m1 <= m2
    L = open_store(str(store)).n_layers
    got = derive_ranges(Kevo(d / "log", print, quiet=True), str(store), L, d / "a")
    assert (got.critical_layer, got.m1, got.m2, got.mutation_tokens) == (c, m1, m2, "object")
    assert got.n_mutation_tokens == n_obj and got.n_generated_tokens == 30 * 12
    v = variant_ranges(got, keep_last=2)
    # decoder layer i (--skip-layers numbering) produces hidden state i + 1
    produced = {k: [i + 1 for i in layers] for k, (layers, _) in v.items()}
    assert produced["skip.1"] == [h for h in range(L + 1) if c < h < m1]
    assert produced["skip.2"] == [h for h in range(L + 1) if m1 <= h <= m2]
    assert produced["skip.3"] == [h for h in range(L + 1) if c < h <= L - 2]
    # the recorded SQL is the SQL that ran: a copy run by hand gives the same numbers
    sql = (d / "a" / "derivation" / "mutation_layers.sql").read_text()
    assert sql == got.sql["mutation_layers"] and "quantile_disc(mutation_layer, 0.25)" in sql
    row = json.loads(kevo("sql", store, sql, "--format", "json").stdout)[0]
    assert (row["m1"], row["m2"]) == (m1, m2)


def test_too_few_object_tokens_falls_back_to_all_tokens(planted):
    d, store, truth = planted
    _, _, _, n_obj = _hand(truth, objects_only=True)
    c, m1, m2, n_all = _hand(truth, objects_only=False)
    got = derive_ranges(Kevo(d / "log", print, quiet=True), str(store), N_LAYERS, d / "b",
                        min_mutation_tokens=n_obj + 1)
    assert (got.critical_layer, got.m1, got.m2, got.mutation_tokens, got.n_mutation_tokens) == (c, m1, m2, "all", n_all)


def test_too_small_baseline_says_what_it_needed_and_had(tmp_path):
    store = tmp_path / "small.kevo"
    build_synthetic_store(store, n_samples=1, n_tokens=6, n_layers=N_LAYERS, seed=2)
    with pytest.raises(ExperimentError, match=r"needs at least 20 generated tokens with a critical layer .*"
                                              r"it has \d+ \(of 6 generated tokens\)"):
        derive_ranges(Kevo(tmp_path / "log", print, quiet=True), str(store), N_LAYERS, tmp_path / "a")
    with pytest.raises(ExperimentError, match=r"mutation layers: it needs at least 50 tokens with a mutation "
                                              r"event, it has \d+ \(of 6 generated tokens"):
        derive_ranges(Kevo(tmp_path / "log", print, quiet=True), str(store), N_LAYERS, tmp_path / "b",
                      min_tokens=1, min_mutation_tokens=50)
    # through the command: one line, exit 1
    p = kevo("experiment", "skip", store, "--out", tmp_path / "exp", check=False)
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith("kevo: error: baseline ")


INGEST = ("--max-new-tokens", "24", "--batch-size", "4", "--top-k", "3")


def test_variant_store_equals_manual_ingest(tmp_path, monkeypatch):
    for k, v in REPRODUCIBLE_ENV.items():  # bit-exact across processes
        monkeypatch.setenv(k, v)
    data = world.write_world(tmp_path / "world", n_images=3, seed=1)
    base = tmp_path / "base.kevo"
    kevo("ingest", "amber", "--data", data, "--model", WEIGHTS_DIR, "--out", base, *INGEST)
    r = kevo("experiment", "skip", base, "--out", tmp_path / "exp", "--no-derive", "--variant", "mid=3-4")
    manual = tmp_path / "manual.kevo"
    kevo("ingest", "amber", "--data", data, "--task", "generative", "--model", WEIGHTS_DIR, "--out", manual,
         *INGEST, "--skip-layers", "3-4")
    a, b = store_content(tmp_path / "exp" / "mid.kevo"), store_content(manual)
    for table in ("samples", "tokens", "layers", "topk", "vocab", "errors"):
        assert a[table].equals(b[table]), table
    assert (a["hidden"] == b["hidden"]).all() and a["hidden"].shape[1] == 8 - 2 + 1
    m = json.loads((tmp_path / "exp" / "mid.kevo" / "manifest.json").read_text())
    assert m.get("meta", m)["capture"]["skip_layers"] == [3, 4]
    comp = json.loads((tmp_path / "exp" / "comparison.json").read_text())
    assert [v["variant"] for v in comp["variants"]] == ["mid"] and comp["variants"][0]["skip_layers"] == "3-4"
    assert (tmp_path / "exp" / "comparison.csv").read_text().startswith("variant,")
    page = (tmp_path / "exp" / "report.html").read_text()
    assert "Skip experiment: variants against the baseline" in page and "exact_match_rate" in page
    assert "mid" in r.stdout and "exact" in r.stdout
    # re-running resumes: nothing is generated again
    r2 = kevo("experiment", "skip", base, "--out", tmp_path / "exp", "--no-derive", "--variant", "mid=3-4")
    assert "resuming" in r2.stderr or "already in" in r2.stderr


# --- the comparison on a hand-worked case -------------------------------------------------------
# world seed 1: item 1 truth car cup snow, hallu tree sun apple house flower; item 2 truth boat fish snow;
# item 3 truth car tree sand, hallu cloud apple ball bird fish.
BASE = {1: "There is a house and a cup on the snow.", 2: "There is a fish on the snow.",
        3: "There is a car and a tree on the sand."}
VARIANT = {1: "There is a car and a cup on the snow.", 2: "There is a fish on the snow.",
           3: "There is a ball on the sand."}


def test_comparison_equals_hand_worked_numbers(tmp_path):
    from ingest.datasets import amber
    from ingest.experiments.compare import StoreSide, compare_sides
    from ingest.models import load_adapter
    from ingest.runner import IngestConfig, run_ingest

    data = world.write_world(tmp_path / "world", n_images=6, seed=1)
    ad = load_adapter(str(WEIGHTS_DIR), dtype="float32")
    stores = {}
    for name, responses in (("base", BASE), ("variant", VARIANT)):
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps([{"id": k, "response": v} for k, v in responses.items()]))
        stores[name] = tmp_path / f"{name}.kevo"
        run_ingest(amber.dataset(data), IngestConfig(model=str(WEIGHTS_DIR), out=str(stores[name]), responses=str(f),
                                                     top_k=3, progress=False, max_new_tokens=40),
                   adapter=ad, echo=lambda m: None)
    row = compare_sides(StoreSide(stores["base"]), StoreSide(stores["variant"]))
    # tokens (word-level; '.' and the end of sequence are tokens): 12, 9, 12 in the baseline; equal at the
    # same step: 11 (house/car differ), 9, 3 (There is a, then ball/car ... shifted)
    assert row["n_samples"] == 3
    assert row["exact_match_rate"] == pytest.approx(1 / 3)
    assert row["token_agreement"] == pytest.approx((11 + 9 + 3) / 33)
    assert row["n_diverged"] == 2 and row["first_divergence_mean"] == 3 and row["first_divergence_median"] == 3
    # AMBER: mentions 8 (1 hallucinated: house) -> 7 (1: ball); truth covered 7/9 -> 6/9; 1 of 3 responses
    # hallucinates in both; hallu words covered 1/15 in both. AMBER's official denominators start at 0.001:
    # Hal = 100 - 100 * 2 / 3.001 = 33.36 -> 33.4
    assert (row["CHAIR_baseline"], row["CHAIR"], row["CHAIR_delta"]) == (12.5, 14.3, 1.8)
    assert (row["Cover_baseline"], row["Cover"], row["Cover_delta"]) == (77.8, 66.7, -11.1)
    assert (row["Hal_baseline"], row["Hal"], row["Hal_delta"]) == (33.4, 33.4, 0)
    assert (row["Cog_baseline"], row["Cog"]) == (6.7, 6.7)
    assert row["words_changed"] == [{"word": "car and a tree -> ball", "count": 1},
                                    {"word": "house -> car", "count": 1}]
    assert row["hallucinated_disappeared"] == [{"word": "house", "count": 1}]
    assert row["hallucinated_appeared"] == [{"word": "ball", "count": 1}]
