"""End to end: `kevo ingest amber` on the fixture with a tiny LLaVA, then `kevo eval amber` on the store."""

from __future__ import annotations

import json

import pytest

from tests.amber_helpers import make_amber_dir
from tests.runner_helpers import kevo, tiny_model_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("amber_e2e")
    root = make_amber_dir(tmp, missing=("AMBER_2.jpg",))
    out = tmp / "amber.kevo"
    p = kevo("ingest", "amber", "--data", root, "--task", "all", "--model", tiny_model_dir("llava"), "--out", out,
             "--max-new-tokens", 10, "--hidden", "none", "--top-k", 2,
             "--prompt", "Please describe this image in detail.")
    return dict(root=root, out=out, proc=p, tmp=tmp)


def _sql(store, q):
    from kevo_store import open_store

    return open_store(store).sql(q).to_dicts()


def test_missing_image_is_an_errors_row_and_the_run_goes_on(run):
    assert "13193" in run["proc"].stderr and "1 of 6 images missing" in run["proc"].stderr
    errors = _sql(run["out"], "SELECT sample_key, stage, message FROM errors")
    assert [(e["sample_key"], e["stage"]) for e in errors] == [("amber:2", "read")]
    assert "AMBER_2.jpg" in errors[0]["message"]
    keys = [r["sample_key"] for r in _sql(run["out"], "SELECT sample_key FROM samples ORDER BY sample_id")]
    assert keys == ["amber:1", "amber:3", "amber:6", "amber:1005", "amber:1006", "amber:8633", "amber:13193",
                    "amber:13557", "amber:15220"]


def test_the_noun_pipeline_that_ran_is_recorded(run):
    from kevo_store import open_store

    settings = open_store(str(run["out"])).manifest["dataset"]["settings"]
    assert settings["nouns_requested"] == "auto" and settings["nouns"] in ("nltk", "offline")
    # without NLTK data the offline fallback says so, with its measured difference
    assert (settings["nouns"] == "offline") == ("offline approximation, which differs" in run["proc"].stderr)
    metrics = [json.loads(r["metrics"]) for r in _sql(run["out"], "SELECT metrics FROM samples")]
    assert {m["nouns"] for m in metrics if m["task"] == "generative"} == {settings["nouns"]}


def test_samples_carry_annotations_prompt_and_metrics(run):
    rows = _sql(run["out"], "SELECT item_id, prompt, annotations, metrics, response FROM samples")
    for r in rows:
        ann, met = json.loads(r["annotations"]), json.loads(r["metrics"])
        assert ann["id"] == int(r["item_id"])
        assert r["prompt"] == "Please describe this image in detail."     # --prompt overrides AMBER's query
        assert met["task"] == ("generative" if ann["type"] == "generative" else "discriminative")
        if met["task"] == "generative":
            assert met["safe_cover_num"] == len(ann["truth"]) and met["chair_num"] == len(met["mentions"])


def test_token_words_cover_the_response(run):
    samples = {r["sample_id"]: r["response"] for r in _sql(run["out"], "SELECT sample_id, response FROM samples")}
    toks = _sql(run["out"], "SELECT sample_id, step, char_start, char_end, word_index, word, is_word_start, "
                            "object, label, hallucinated FROM tokens WHERE role = 'generated' ORDER BY token_uid")
    from ingest.labels.words import split_words

    for sid, response in samples.items():
        mine = [t for t in toks if t["sample_id"] == sid]
        words = split_words(response)
        for t in mine:
            if t["word_index"] is None:
                continue
            w = words[t["word_index"]]
            assert t["word"] == w.text
            # the token overlaps its word (or is an empty byte piece at a position inside it)
            assert t["char_start"] < w.end and (t["char_end"] > w.start or t["char_start"] >= w.start)
            assert (t["label"] is None) == (t["object"] is None) == (t["hallucinated"] is None)
        starts = [t for t in mine if t["is_word_start"]]
        assert sorted({t["word_index"] for t in starts}) == sorted(t["word_index"] for t in starts)


def test_eval_on_the_store_equals_eval_on_its_responses(run):
    store = kevo("eval", "amber", run["out"], "--json")
    by_store = json.loads(store.stdout)
    rows = _sql(run["out"], "SELECT item_id, response FROM samples ORDER BY sample_id")
    resp = run["tmp"] / "responses.json"
    resp.write_text(json.dumps([{"id": int(r["item_id"]), "response": r["response"]} for r in rows]))
    by_file = json.loads(kevo("eval", "amber", "--responses", resp, "--data", run["root"], "--json").stdout)
    by_store.pop("settings")
    by_file.pop("settings")
    assert by_store == by_file
    assert by_store["n_responses"] == 9 and by_store["generative"]["n"] == 3
    table = kevo("eval", "amber", run["out"]).stdout
    assert "Generative (3)" in table and "official (exact Yes/No) | normalised" in table
