"""`kevo ingest vqa-constraints`: the released three-CSV layout, image folders, answers joined from a
file, and malformed rows / constraints not in their question turned into errors rows (file, row)."""

from __future__ import annotations

import csv
import json

import pytest

from ingest.datasets import vqa_constraints
from ingest.datasets.base import DatasetError
from tests.model_helpers import tiny_image


def _csv(path, header, rows):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


@pytest.fixture()
def data(tmp_path):
    (tmp_path / "A photo of Eiffel Tower").mkdir()
    tiny_image().save(tmp_path / "A photo of Eiffel Tower" / "e1.jpg")
    (tmp_path / "val2014").mkdir()
    tiny_image(seed=1).save(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    _csv(tmp_path / "multimodal_known.csv", ["index", "question", "subject", "main_entity", "image_url"], [
        [0, "In which city is this building located", "Eiffel Tower", "this building", "http://x.org/img/e1.jpg"],
        [1, "Who designed this tower", "Eiffel Tower", "", "http://x.org/img/e1.jpg"],            # malformed
        [2, "Who designed this tower", "Eiffel Tower", "this bridge", "http://x.org/img/e1.jpg"],  # not in question
    ])
    _csv(tmp_path / "okvqa.csv", ["index", "question", "main_entity", "image_url"], [
        [7, "What sport can you use this for", "this", "COCO_val2014_000000000042.jpg"],
    ])
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps({"multimodal_known:0": "Paris"}))
    return tmp_path, answers


def test_released_layout(data):
    root, answers = data
    ds = vqa_constraints.dataset(root, answers=answers)
    items = {it.item_id: it for it in ds.items}
    assert set(items) == {"multimodal_known:0", "multimodal_known:1", "multimodal_known:2", "okvqa:7"}
    ok = items["multimodal_known:0"]
    assert ok.error is None and ok.annotations["constraint"] == "this building" and ok.annotations["answer"] == "Paris"
    assert ok.image_path == root / "A photo of Eiffel Tower" / "e1.jpg" and ok.image_path.is_file()
    assert items["okvqa:7"].image_path == root / "val2014" / "COCO_val2014_000000000042.jpg"
    assert "multimodal_known.csv, row 2" in items["multimodal_known:1"].error and "main_entity" in items[
        "multimodal_known:1"].error
    assert "multimodal_known.csv, row 3" in items["multimodal_known:2"].error
    assert "'this bridge' not found" in items["multimodal_known:2"].error
    assert ds.prompt_labeler is not None and ds.fingerprint["files"].keys() == {"multimodal_known.csv", "okvqa.csv"}


def test_bad_directory_and_columns(tmp_path):
    with pytest.raises(DatasetError, match="none of multimodal_known.csv"):
        vqa_constraints.dataset(tmp_path)
    _csv(tmp_path / "okvqa.csv", ["index", "question", "image_url"], [[0, "q", "x.jpg"]])
    with pytest.raises(DatasetError, match=r"okvqa.csv: missing column\(s\) \['main_entity'\]"):
        vqa_constraints.dataset(tmp_path)
