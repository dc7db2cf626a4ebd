"""The AMBER reader: the real benchmark files unchanged, its invariants, and bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from ingest.datasets import amber
from ingest.datasets.base import DatasetError
from tests.amber_helpers import SHARED_AMBER, make_amber_dir


@pytest.mark.skipif(not (SHARED_AMBER / "annotations.json").is_file(),
                    reason=f"the real AMBER files are not here ({SHARED_AMBER}); a user's clone has no shared/ folder")
def test_reader_takes_the_full_real_benchmark_unchanged():
    counts = {"generative": 1004, "discriminative": 14216, "existence": 4924, "attribute": 7628,
              "relation": 1664, "all": 15220}
    for task, n in counts.items():
        data = amber.load(SHARED_AMBER.parent, task, check_images=False)
        assert len(data.queries) == n, task
        inconsistency = [w for w in data.warnings if "13193" in w]
        # 13193 reads "computer" in query_all.json but "chair" in the existence files
        assert bool(inconsistency) == (task in ("discriminative", "existence", "all")), (task, data.warnings)
    data = amber.load(SHARED_AMBER, "generative", check_images=True)
    items = list(amber.items(data, ids=[1, 1004], prompt=amber.PAPER_PROMPT))
    assert [i.key for i in items] == ["amber:1", "amber:1004"]
    assert items[0].prompt == "Please describe this image in detail."
    assert items[0].annotations["truth"][:2] == ["sky", "forest"] and items[0].image_path.name == "AMBER_1.jpg"
    assert any("1004 of 1004 images missing" in w for w in data.warnings)
    with pytest.raises(DatasetError, match=r"id 15221 is out of range: AMBER ids are 1\.\.15220"):
        list(amber.items(data, ids=[15221]))


def test_fixture_reader_items_prompts_and_warnings(tmp_path):
    root = make_amber_dir(tmp_path)
    data = amber.load(root, "all")
    items = list(amber.items(data))
    assert [i.item_id for i in items] == ["1", "2", "3", "6", "1005", "1006", "8633", "13193", "13557", "15220"]
    assert items[0].prompt == "Describe this image." and items[4].prompt == "Is the sky sunny in this image?"
    assert items[0].image_path == root / "image" / "AMBER_1.jpg" and items[0].image_path.is_file()
    assert items[7].annotations == {"id": 13193, "type": "discriminative-hallucination", "truth": "no",
                                    "image": "AMBER_931.jpg", "query": "Is there a computer in this image?"}
    # the fixture is a sparse subset (ids are not 1..N) and carries the upstream 13193 inconsistency
    assert any("not 1..10 in order" in w for w in data.warnings)
    assert any("13193" in w and "chair" in w for w in data.warnings)
    assert not any("images missing" in w for w in data.warnings)
    gen = amber.load(root, "generative")
    assert [i.item_id for i in amber.items(gen, prompt="P")] == ["1", "2", "3", "6"]
    assert all(i.prompt == "P" for i in amber.items(gen, prompt="P"))
    assert [i.item_id for i in amber.items(gen, ids=amber.parse_ids("6,1-2"))] == ["6", "1", "2"]
    assert [i.item_id for i in amber.items(gen, limit=2)] == ["1", "2"]


def test_images_dir_option_and_missing_images(tmp_path):
    root = make_amber_dir(tmp_path, missing=("AMBER_2.jpg",))
    data = amber.load(root, "generative")
    assert any("1 of 4 images missing" in w and "AMBER_2.jpg" in w for w in data.warnings)
    shutil.move(root / "image", tmp_path / "elsewhere")
    data = amber.load(root, "generative", images=tmp_path / "elsewhere")
    assert data.image_dir == tmp_path / "elsewhere"
    with pytest.raises(DatasetError, match="--images .*nope: not a directory"):
        amber.load(root, "generative", images=tmp_path / "nope")


def test_ids_out_of_range_or_not_in_the_task(tmp_path):
    data = amber.load(make_amber_dir(tmp_path), "generative")
    with pytest.raises(DatasetError, match=r"id 20000 is out of range: AMBER ids are 1\.\.15220"):
        list(amber.items(data, ids=[20000]))
    with pytest.raises(DatasetError, match=r"id 0 is out of range"):
        list(amber.items(data, ids=[0]))
    with pytest.raises(DatasetError,
                       match=r"id 1005 \(discriminative-attribute-state\) is not in query_generative.json"):
        list(amber.items(data, ids=[1005]))
    with pytest.raises(DatasetError, match=r"--ids '1,x': 'x' is not an id"):
        amber.parse_ids("1,x")


def test_malformed_json_names_the_file_and_the_record(tmp_path):
    root = make_amber_dir(tmp_path)
    q = root / "data" / "query" / "query_generative.json"
    lines = q.read_text().splitlines()
    lines[3] = lines[3].replace('"query": "Describe', '"query" "Describe')  # record 3 (id 3)
    q.write_text("\n".join(lines))
    with pytest.raises(DatasetError,
                       match=r"query_generative.json: malformed JSON at line 4 column \d+ \(in record 3\)"):
        amber.load(root, "generative")


def test_records_missing_fields_and_broken_invariants(tmp_path):
    root = make_amber_dir(tmp_path)
    ann = root / "data" / "annotations.json"
    recs = json.loads(ann.read_text())
    recs[1]["truth"].append("spaceship")             # not a relation.json key
    del recs[2]["type"]
    ann.write_text(json.dumps(recs))
    with pytest.raises(DatasetError, match=r"annotations.json, record 3 \(id 3\): missing field 'type'"):
        amber.load(root, "generative")
    recs[2]["type"] = "generative"
    ann.write_text(json.dumps(recs[:-1]))             # id 15220 loses its annotation
    with pytest.raises(DatasetError) as e:
        amber.load(root, "all")
    msg = str(e.value)
    assert "id 2: truth word(s) ['spaceship'] are not keys of relation.json" in msg
    assert "query_all.json, record 10: id 15220 has no annotation in annotations.json" in msg


def test_unknown_task_and_missing_dir(tmp_path):
    with pytest.raises(DatasetError, match="--task 'nope'"):
        amber.load(make_amber_dir(tmp_path), "nope")
    with pytest.raises(DatasetError, match="AMBER directory not found"):
        amber.load(tmp_path / "missing")


def test_dataset_labeler_fills_token_columns_and_metrics(tmp_path):
    import pyarrow as pa

    ds = amber.dataset(make_amber_dir(tmp_path), task="all", warn=lambda m: None)
    assert ds.n_items == 10 and ds.settings["task"] == "all"
    items = {i.item_id: i for i in ds.items}
    response = "A ship near a TV."
    # one token per character pair, as a stand-in for real pieces: spans are what matter here
    spans = [(k, min(k + 2, len(response))) for k in range(0, len(response), 2)]
    tokens = pa.table({"char_start": [s for s, _ in spans], "char_end": [e for _, e in spans],
                       "piece": [response[s:e] for s, e in spans]})
    cols, metrics = ds.labeler(items["2"], response, tokens)
    assert metrics["chair_score"] == 1 and metrics["chair_num"] == 2 and metrics["safe_cover_score"] == 1
    # "ship" = chars 2..6 -> tokens [2,4) [4,6); "TV" = chars 14..16 -> token [14,16)
    assert cols["object"] == [None, "ship", "ship", None, None, None, None, "TV", None]
    assert cols["label"][1:3] == ["correct", "correct"] and cols["hallucinated"][7] is True
    assert cols["is_word_start"][1:3] == [True, False]
    cols, metrics = ds.labeler(items["1005"], "Yes, there is.", tokens.slice(0, 7))
    assert metrics["answer_normalised"] == "yes" and metrics["answer_official"] is None
    assert cols["is_answer"] == [True, False, False, False, False, False, False]
