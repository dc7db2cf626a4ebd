"""CHAIR's rules (Rohrbach et al., 2018): synonyms, double words, special cases, and the metrics, by hand."""

from __future__ import annotations

import pytest

from ingest.labels.chair import (
    caption_objects,
    chair_totals,
    ground_truth,
    score_caption,
    singularize,
    synonyms,
)

COCO_80 = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
"""The 80 category names of the COCO 2014 instances files."""


def test_synonym_table_has_exactly_the_80_coco_categories():
    assert len(set(COCO_80)) == 80
    assert sorted(synonyms()) == sorted(COCO_80)
    assert synonyms()["person"][:4] == ["person", "girl", "boy", "man"]


@pytest.mark.parametrize("caption,expected", [
    ("Two women sit at the table with a laptop.",
     [("women", "person"), ("table", "dining table"), ("laptop", "laptop")]),
    ("A baby elephant next to an adult giraffe.", [("baby elephant", "elephant"), ("adult giraffe", "giraffe")]),
    ("A passenger jet above hot dogs and a Teddy Bear.", [("passenger jet", "airplane"), ("hot dogs", "hot dog"),
                                                           ("Teddy Bear", "teddy bear")]),
    ("The seat of the toilet is up.", [("toilet", "toilet")]),                       # toilet seat is not a chair
    ("A seat near the traffic lights, knives and glasses.", [("seat", "chair"), ("traffic lights", "traffic light"),
                                                           ("knives", "knife")]),
    ("Puppies and kittens on a sofa.", [("Puppies", "dog"), ("kittens", "cat"), ("sofa", "couch")]),
])
def test_caption_objects(caption, expected):
    assert [(m.text, m.object) for m in caption_objects(caption)] == expected


def test_singularize():
    assert [singularize(w) for w in ("dogs", "buses", "glasses", "benches", "skies", "knives", "people", "bus",
                                     "sheep", "boxes", "tomatoes", "shoes")] == \
        ["dog", "bus", "glass", "bench", "sky", "knife", "person", "bus", "sheep", "box", "tomato", "shoe"]


def test_ground_truth_and_metrics_by_hand():
    gt139 = ground_truth(["person", "dining table"], ["A man eating a hot dog at a table.",
                                                        "Two people sit near a traffic light."])
    assert gt139 == {"person", "dining table", "hot dog", "traffic light"}
    gt285 = ground_truth(["dog"], ["A puppy lying on the floor."])
    gt632 = ground_truth(["toilet"], ["The seat of the toilet is up."])
    assert gt285 == {"dog"} and gt632 == {"toilet"}
    with pytest.raises(KeyError, match="spaceship"):
        ground_truth(["spaceship"], [])

    m1, s1 = score_caption("Two women sit at the table with a laptop and a dog.", gt139)
    assert [(m.text, m.label) for m in m1] == [("women", "correct"), ("table", "correct"),
                                               ("laptop", "hallucinated"), ("dog", "hallucinated")]
    assert (s1["chair_s"], s1["chair_i"], s1["n_gt_mentioned"], s1["n_gt"]) == (1, 0.5, 2, 4)
    m2, s2 = score_caption("A baby dog sleeps on a couch.", gt285)      # "baby dog" is a dog, not a person
    assert [(m.object, m.label) for m in m2] == [("dog", "correct"), ("couch", "hallucinated")]
    m3, s3 = score_caption("A white toilet with its seat up.", gt632)
    assert [(m.object, m.label) for m in m3] == [("toilet", "correct")]
    _, s4 = score_caption("", gt632)
    assert (s4["n_mentions"], s4["chair_s"], s4["chair_i"]) == (0, 0, 0.0)
    t = chair_totals([s1, s2, s3])
    # CHAIR_s: 2 of 3 captions; CHAIR_i: 3 hallucinated of 7 mentions; Recall: 4 of 6 ground-truth objects
    assert (t["CHAIR_s"], t["CHAIR_i"], t["Recall"]) == (round(200 / 3, 1), round(300 / 7, 1), round(400 / 6, 1))
