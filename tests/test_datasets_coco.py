"""The COCO reader (CHAIR ground truth from real-format instances + captions files) and `kevo eval coco`."""

from __future__ import annotations

import json

import pytest

from ingest.datasets import coco
from ingest.datasets.base import DatasetError
from tests.coco_helpers import make_coco_dir
from tests.runner_helpers import kevo


def test_items_and_chair_ground_truth(tmp_path):
    ds = coco.dataset(make_coco_dir(tmp_path))
    items = list(ds.items)
    assert [i.key for i in items] == ["coco:139", "coco:285", "coco:632"]
    assert items[0].prompt == "Please describe this image in detail."
    assert items[0].image_path.name == "COCO_val2014_000000000139.jpg" and items[0].image_path.is_file()
    # instances {person, dining table} + captions ("hot dog", "traffic light", man/people -> person)
    assert items[0].annotations["gt_objects"] == ["dining table", "hot dog", "person", "traffic light"]
    assert items[1].annotations["gt_objects"] == ["dog"]            # "puppy" -> dog
    assert items[2].annotations["gt_objects"] == ["toilet"]         # "the seat of the toilet" is no chair
    cols, metrics = ds.labeler(items[1], "A baby dog on a couch.", {"char_start": [0, 1, 6, 10, 13, 15, 22],
                                                                      "char_end": [1, 6, 10, 13, 15, 22, 23]})
    assert metrics["n_mentions"] == 2 and metrics["n_hallucinated"] == 1
    assert cols["object"] == [None, "dog", "dog", None, None, "couch", None]
    assert cols["label"][5] == "hallucinated" and cols["hallucinated"][1] is False


def test_image_ids_file_limit_and_errors(tmp_path):
    root = make_coco_dir(tmp_path)
    ids = tmp_path / "ids.txt"
    ids.write_text("# the paper's subset\n632\n139\n")
    assert [i.item_id for i in coco.dataset(root, image_ids=ids).items] == ["632", "139"]
    assert [i.item_id for i in coco.dataset(root, limit=1).items] == ["139"]
    ids.write_text("632\n999\n")
    with pytest.raises(DatasetError, match=r"ids.txt: 1 id\(s\) not in instances_val2014.json \(e.g. \[999\]\)"):
        coco.dataset(root, image_ids=ids)
    ids.write_text("632\nabc\n")
    with pytest.raises(DatasetError, match=r"ids.txt, line 2: 'abc' is not an image id"):
        coco.dataset(root, image_ids=ids)
    cap = root / "annotations" / "captions_val2014.json"
    cap.write_text(cap.read_text()[:-30])
    with pytest.raises(DatasetError, match=r"captions_val2014.json: malformed JSON at line \d+"):
        coco.dataset(root)
    with pytest.raises(DatasetError, match="COCO directory not found"):
        coco.dataset(tmp_path / "nope")


def test_unknown_category_is_reported(tmp_path):
    root = make_coco_dir(tmp_path)
    inst = root / "annotations" / "instances_val2014.json"
    data = json.loads(inst.read_text())
    data["categories"][0]["name"] = "spaceship"
    inst.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="category 'spaceship' is not one of CHAIR's 80"):
        coco.dataset(root)


def test_kevo_eval_coco_on_a_store(tmp_path):
    """A real store (StoreWriter) holding hand-written captions; numbers as in test_labels_chair."""
    from kevo_store import StoreWriter

    ds = coco.dataset(make_coco_dir(tmp_path))
    captions = {"139": "Two women sit at the table with a laptop and a dog.", "285": "A baby dog sleeps on a couch.",
                "632": "A white toilet with its seat up."}
    rows = [{"sample_key": i.key, "dataset": "coco", "item_id": i.item_id, "response": captions[i.item_id],
             "annotations": json.dumps(i.annotations)} for i in ds.items]
    out = tmp_path / "coco.kevo"
    with StoreWriter(out, meta={"model": {"n_layers": 2}}) as w:   # no hidden array, as --hidden none
        w.write_batch(samples={k: [r[k] for r in rows] for k in rows[0]})
    res = json.loads(kevo("eval", "coco", out, "--json").stdout)
    assert (res["CHAIR_s"], res["CHAIR_i"], res["Recall"]) == (66.7, 42.9, 66.7)
    assert res["counts"] == {"captions": 3, "hallucinated_captions": 2, "mentions": 7, "hallucinated_mentions": 3,
                             "gt_objects": 6, "gt_objects_mentioned": 4}
    table = kevo("eval", "coco", out).stdout
    assert "CHAIR_s    66.7" in table and "7 object mentions" in table


def test_kevo_ingest_coco_then_eval(tmp_path):
    from kevo_store import open_store
    from tests.runner_helpers import tiny_model_dir

    root = make_coco_dir(tmp_path, missing=(285,))
    out = tmp_path / "c.kevo"
    p = kevo("ingest", "coco", "--data", root, "--model", tiny_model_dir("llava"), "--out", out, "--limit", 2,
             "--max-new-tokens", 6, "--hidden", "none", "--top-k", 1)
    s = open_store(out)
    assert s.sql("SELECT sample_key FROM samples").to_series().to_list() == ["coco:139"]
    assert s.sql("SELECT sample_key, stage FROM errors").rows() == [("coco:285", "read")]
    assert "1 samples failed" in p.stderr
    ann = json.loads(s.sql("SELECT annotations FROM samples").item())
    assert ann["gt_objects"] == ["dining table", "hot dog", "person", "traffic light"]
    res = json.loads(kevo("eval", "coco", out, "--json").stdout)
    from ingest.labels.chair import chair_totals, score_caption

    response = s.sql("SELECT response FROM samples").item()
    assert res == chair_totals([score_caption(response, ann["gt_objects"])[1]])


def test_kevo_eval_coco_on_a_chair_caption_file(tmp_path):
    root = make_coco_dir(tmp_path)
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps([{"image_id": 139, "caption": "Two women sit at the table with a laptop and a dog."},
                                {"image_id": 285, "caption": "A baby dog sleeps on a couch."},
                                {"image_id": 632, "caption": "A white toilet with its seat up."}]))
    res = json.loads(kevo("eval", "coco", "--responses", caps, "--data", root, "--json").stdout)
    assert (res["CHAIR_s"], res["CHAIR_i"], res["Recall"]) == (66.7, 42.9, 66.7)
    caps.write_text(json.dumps([{"image_id": 139, "caption": "x"}, {"image_id": 7, "caption": "y"}]))
    p = kevo("eval", "coco", "--responses", caps, "--data", root, check=False)
    assert p.returncode != 0 and "caps.json, record 2: image_id 7 is not in instances_val2014.json" in p.stderr
