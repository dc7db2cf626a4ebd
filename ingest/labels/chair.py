"""CHAIR (Rohrbach et al., 2018, "Object Hallucination in Image Captioning") for COCO.

A caption's object mentions are found the way the CHAIR evaluation code finds them: lower-case,
tokenise, singularise every word, merge the "double words" (``traffic light``, ``hot dog``, ``baby
bird`` -> ``bird``, ...), drop ``seat`` when ``toilet`` is in the caption, keep words in the synonym
table of the 80 MSCOCO categories (``data/chair_synonyms.txt``) and map each to its category. A
mention is hallucinated when its category is not among the image's ground-truth objects: the
instance annotations' categories plus the objects found (the same way) in the reference captions.

CHAIR_s = captions with a hallucinated mention / captions; CHAIR_i = hallucinated mentions / mentions
(every mention counts, repeats included, as in CHAIR); Recall (not part of CHAIR; the usual companion
in LVLM papers) = ground-truth objects mentioned / ground-truth objects, summed over images.

Singularisation is kevo's own rule set (the original uses ``pattern.en.singularize``); tokenisation is
:func:`ingest.labels.words.split_words` (the original: ``nltk.word_tokenize``). Both agree on ordinary
captions; exotic plurals may differ.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources as _res

from ingest.labels.words import split_words

COCO_DOUBLE_WORDS = (
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal", "stop light",
    "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball", "baseball bat", "baseball glove",
    "tennis racket", "wine glass", "hot dog", "cell phone", "mobile phone", "teddy bear", "hair drier",
    "potted plant", "bow tie", "laptop computer", "stove top oven", "home plate", "train track",
)
"""Two-word names treated as one word (CHAIR's list)."""
ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
"""'baby X' / 'adult X' is the animal X, not a person."""
VEHICLE_WORDS = ("jet", "train")
"""'passenger X' is the vehicle X, not a person."""


@lru_cache(maxsize=1)
def synonyms() -> dict[str, list[str]]:
    """category -> its synonyms (the category first), from the packaged CHAIR table."""
    text = (_res.files("ingest.labels") / "data" / "chair_synonyms.txt").read_text(encoding="utf-8")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = [w.strip() for w in line.split(",") if w.strip()]
        if words:
            out[words[0]] = words
    return out


@lru_cache(maxsize=1)
def inverse_synonyms() -> dict[str, str]:
    """synonym -> category."""
    return {s: cat for cat, words in synonyms().items() for s in words}


@lru_cache(maxsize=1)
def double_words() -> dict[str, str]:
    """'first second' -> the single word it stands for."""
    d = {w: w for w in COCO_DOUBLE_WORDS}
    for a in ANIMAL_WORDS:
        d[f"baby {a}"] = a
        d[f"adult {a}"] = a
    for v in VEHICLE_WORDS:
        d[f"passenger {v}"] = v
    d["bow tie"] = "tie"
    d["toilet seat"] = "toilet"
    d["wine glas"] = "wine glass"
    return d


_IRREGULAR = {
    "men": "man", "women": "woman", "children": "child", "people": "person", "feet": "foot", "teeth": "tooth",
    "geese": "goose", "mice": "mouse", "knives": "knife", "leaves": "leaf", "shelves": "shelf",
    "wolves": "wolf", "scarves": "scarf", "calves": "calf", "halves": "half", "loaves": "loaf",
    "oxen": "ox", "skis": "ski", "lives": "life", "wives": "wife", "thieves": "thief",
    "shoes": "shoe", "toes": "toe", "canoes": "canoe", "buses": "bus", "dice": "die",
}
_UNINFLECTED = frozenset({"sheep", "deer", "fish", "scissors", "series", "species", "cattle", "glasses",
                          "pants", "jeans", "shorts", "news", "sunglasses", "bus", "gas", "lens"})


def singularize(word: str) -> str:
    """English noun singular (rule-based; see the module docstring)."""
    w = word
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if w in _UNINFLECTED or len(w) <= 3:
        return w if w != "glasses" else "glass"
    if w.endswith(("ss", "us", "is", "ous")):
        return w
    if w.endswith("ies"):
        return w[:-3] + ("ie" if len(w) <= 4 else "y")
    if w.endswith(("ches", "shes", "xes", "zes", "sses")):
        return w[:-2]
    if w.endswith("oes"):
        return w[:-2]
    if w.endswith("s"):
        return w[:-1]
    return w


@dataclass
class ChairMention:
    """One MSCOCO object mention in a caption."""

    text: str
    """The words as written (one or two)."""
    start: int
    end: int
    word: str
    """The (singular, merged) synonym found."""
    object: str
    """Its MSCOCO category."""
    label: str = "correct"
    """'correct' (category in the ground truth) or 'hallucinated'."""


def caption_objects(caption: str) -> list[ChairMention]:
    """The MSCOCO object mentions of a caption, in order (see the module docstring)."""
    words = [w for w in split_words(caption) if w.text[:1].isalnum() or w.text in ("-",)]
    sing = [singularize(w.text.lower()) for w in words]
    merged: list[tuple[str, int, int]] = []  # (word, first index, last index)
    dw = double_words()
    i = 0
    while i < len(sing):
        pair = " ".join(sing[i:i + 2])
        if i + 1 < len(sing) and pair in dw:
            merged.append((dw[pair], i, i + 1))
            i += 2
        else:
            merged.append((sing[i], i, i))
            i += 1
    names = [m[0] for m in merged]
    if "toilet" in names and "seat" in names:  # "the seat of the toilet" is not a chair
        merged = [m for m in merged if m[0] != "seat"]
    inv = inverse_synonyms()
    out = []
    for word, a, b in merged:
        if word in inv:
            start, end = words[a].start, words[b].end
            out.append(ChairMention(caption[start:end], start, end, word, inv[word]))
    return out


def ground_truth(instance_categories: Iterable[str], reference_captions: Iterable[str]) -> set[str]:
    """An image's CHAIR ground truth: its instance categories plus the objects of its reference captions."""
    inv = inverse_synonyms()
    gt = set()
    for name in instance_categories:
        if name not in inv:
            raise KeyError(f"COCO category {name!r} is not in the CHAIR synonym table")
        gt.add(inv[name])
    for cap in reference_captions:
        gt.update(m.object for m in caption_objects(cap))
    return gt


def score_caption(caption: str, gt_objects: Iterable[str]) -> tuple[list[ChairMention], dict]:
    """Label each mention of ``caption`` and return (mentions, per-sample metrics)."""
    gt = set(gt_objects)
    mentions = caption_objects(caption)
    for m in mentions:
        m.label = "correct" if m.object in gt else "hallucinated"
    generated = {m.object for m in mentions}
    n_hal = sum(m.label == "hallucinated" for m in mentions)
    metrics = {
        "task": "chair",
        "n_mentions": len(mentions),
        "n_hallucinated": n_hal,
        "chair_s": int(n_hal > 0),
        "chair_i": n_hal / len(mentions) if mentions else 0.0,
        "n_gt": len(gt),
        "n_gt_mentioned": len(generated & gt),
        "hallucinated_objects": sorted({m.object for m in mentions if m.label == "hallucinated"}),
        "mentions": [asdict(m) for m in mentions],
    }
    return mentions, metrics


def chair_totals(per_sample: Iterable[dict]) -> dict:
    """CHAIR_s, CHAIR_i (x100) and Recall (x100) over per-sample metrics of :func:`score_caption`."""
    n = caps_h = mentions = hal = gt = gt_hit = 0
    for m in per_sample:
        n += 1
        caps_h += m["chair_s"]
        mentions += m["n_mentions"]
        hal += m["n_hallucinated"]
        gt += m["n_gt"]
        gt_hit += m["n_gt_mentioned"]
    return {
        "n": n,
        "CHAIR_s": round(100 * caps_h / n, 1) if n else 0.0,
        "CHAIR_i": round(100 * hal / mentions, 1) if mentions else 0.0,
        "Recall": round(100 * gt_hit / gt, 1) if gt else 0.0,
        "counts": {"captions": n, "hallucinated_captions": caps_h, "mentions": mentions,
                   "hallucinated_mentions": hal, "gt_objects": gt, "gt_objects_mentioned": gt_hit},
    }
