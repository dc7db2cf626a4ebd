"""VQA sets (JSON or JSONL): reading, the answer token, and `kevo ingest vqa` end to end."""

from __future__ import annotations

import json

import pytest

from ingest.datasets import vqa
from ingest.datasets.base import DatasetError
from tests.runner_helpers import kevo, make_images, tiny_model_dir

QUESTION = "What is the color of the flower?"


def test_json_and_jsonl_records(tmp_path):
    make_images(tmp_path / "img", 2)
    recs = [{"image": "img00.png", "question": QUESTION, "answer": "red"},
            {"id": "b", "image": "img01.png", "question": QUESTION}]
    (tmp_path / "q.json").write_text(json.dumps(recs))
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    for name in ("q.json", "q.jsonl"):
        items = list(vqa.dataset(tmp_path / name, tmp_path / "img").items)
        assert [i.key for i in items] == ["vqa:0", "vqa:b"]
        assert items[0].image_path == tmp_path / "img" / "img00.png" and items[0].prompt == QUESTION
        assert items[0].annotations["answer"] == "red"


def test_answer_token(tmp_path):
    item = vqa.DatasetItem("vqa:0", "0", QUESTION, None, {"answer": "red"})
    text = "The flower is red."
    # tokens: "The" " flower" " is" " r" "ed" "."
    spans = {"char_start": [0, 3, 10, 13, 15, 17], "char_end": [3, 10, 13, 15, 17, 18]}
    cols, metrics = vqa.labeler(item, text, spans)
    assert cols["is_answer"] == [False, False, False, True, False, False]
    assert metrics == {"task": "vqa", "answer": "red", "expected": "red", "correct": True}
    cols, metrics = vqa.labeler(vqa.DatasetItem("vqa:1", "1", QUESTION, None, {}), "Yellow.", {"char_start": [0, 6],
                                                                                                 "char_end": [6, 7]})
    assert cols["is_answer"] == [True, False] and metrics["answer"] == "Yellow" and metrics["correct"] is None
    cols, metrics = vqa.labeler(item, "", {"char_start": [0], "char_end": [0]})   # empty response (EOS only)
    assert cols["is_answer"] == [False] and metrics["answer"] is None


def test_malformed_input_names_file_and_record(tmp_path):
    (tmp_path / "img").mkdir()
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"image": "a.png", "question": "Q?"}\n{"image": "b.png", "question": \n')
    with pytest.raises(DatasetError, match=r"q.jsonl, record 2 \(line 2\): malformed JSON"):
        vqa.dataset(bad, tmp_path / "img")
    bad.write_text('{"image": "a.png"}\n')
    with pytest.raises(DatasetError, match=r"q.jsonl, record 1: missing or empty 'question'"):
        vqa.dataset(bad, tmp_path / "img")
    with pytest.raises(DatasetError, match="file not found"):
        vqa.dataset(tmp_path / "none.json", tmp_path / "img")


def test_kevo_ingest_vqa_marks_one_answer_token_per_sample(tmp_path):
    images = make_images(tmp_path / "img", 2)
    q = tmp_path / "q.jsonl"
    q.write_text("\n".join(json.dumps({"image": f"img0{i}.png", "question": QUESTION}) for i in range(2))
                 + '\n{"image": "missing.png", "question": "What is the color of the flower?"}\n')
    out = tmp_path / "vqa.kevo"
    kevo("ingest", "vqa", "--questions", q, "--images", images, "--model", tiny_model_dir("llava"), "--out", out,
         "--max-new-tokens", 6, "--hidden", "none", "--top-k", 1)
    from kevo_store import open_store

    s = open_store(out)
    assert s.sql("SELECT sample_key FROM errors").to_series().to_list() == ["vqa:2"]
    for sid, response, metrics in s.sql("SELECT sample_id, response, metrics FROM samples").iter_rows():
        answer = vqa.answer_word(response, None)
        rows = s.sql(f"SELECT char_start, char_end, is_answer, word_index FROM tokens "
                     f"WHERE sample_id = {sid} AND role = 'generated' ORDER BY step").to_dicts()
        marked = [r for r in rows if r["is_answer"]]
        if answer is None:
            assert marked == []
            continue
        assert len(marked) == 1 and json.loads(metrics)["answer"] == answer.text
        first = next(r for r in rows if r["char_end"] > answer.start and r["char_start"] < answer.end)
        assert marked[0] == first
