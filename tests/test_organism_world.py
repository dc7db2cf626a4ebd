"""The organism's synthetic world: deterministic bytes, AMBER's exact format, the built-in bias."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from ingest.organism import world

AMBER_TYPES = {
    "generative", "discriminative-attribute-state", "discriminative-attribute-number",
    "discriminative-attribute-action", "discriminative-hallucination", "discriminative-relation", "relation",
}
QUERY_FILES = (
    "query_all.json", "query_generative.json", "query_discriminative.json",
    "query_discriminative-existence.json", "query_discriminative-attribute.json",
    "query_discriminative-relation.json",
)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = world.write_world(tmp_path / "a", n_images=12, seed=3)
    b = world.write_world(tmp_path / "b", n_images=12, seed=3)
    c = world.write_world(tmp_path / "c", n_images=12, seed=4)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    assert len([k for k in _digest(a) if k.startswith("image/")]) == 12


def test_amber_format(tmp_path):
    root = world.write_world(tmp_path / "w", n_images=20, seed=0)
    data = root / "data"
    raw = (data / "annotations.json").read_text()
    ann = json.loads(raw)
    assert raw == json.dumps(ann, indent=4)  # AMBER's own layout: indent 4, no trailing newline
    assert [r["id"] for r in ann] == list(range(1, len(ann) + 1))
    gen = [r for r in ann if r["type"] == "generative"]
    assert [r["id"] for r in gen] == list(range(1, 21))  # generative records first, like AMBER
    assert {r["type"] for r in ann} <= AMBER_TYPES
    relation = json.loads((data / "relation.json").read_text())
    vocabulary = set(relation) | {w for v in relation.values() for w in v}
    for r in gen:
        assert r["truth"] and r["hallu"] and not set(r["truth"]) & set(r["hallu"])
        assert set(r["truth"]) | set(r["hallu"]) <= vocabulary
    for r in ann[20:]:
        assert r["truth"] in ("yes", "no") and r["type"] != "generative"
    # AMBER asks existence questions only about absent objects
    assert {r["truth"] for r in ann if r["type"] == "discriminative-hallucination"} == {"no"}
    safe = (data / "safe_words.txt").read_text()
    assert not safe.endswith("\n") and all(w.isalpha() for w in safe.split("\n"))

    queries = {f: json.loads((data / "query" / f).read_text()) for f in QUERY_FILES}
    by_id = {r["id"]: r for r in ann}
    assert [q["id"] for q in queries["query_all.json"]] == [r["id"] for r in ann]
    assert queries["query_all.json"] == queries["query_generative.json"] + queries["query_discriminative.json"]
    assert queries["query_discriminative.json"] == (
        queries["query_discriminative-attribute.json"] + queries["query_discriminative-existence.json"]
        + queries["query_discriminative-relation.json"])
    for q in queries["query_all.json"]:
        assert set(q) == {"id", "image", "query"}
        assert (root / "image" / q["image"]).is_file()
        if by_id[q["id"]]["type"] == "generative":
            assert q["query"] == "Describe this image." and q["image"] == f"AMBER_{q['id']}.jpg"
        else:
            assert q["query"].startswith("Is ") and q["query"].endswith("?")
    for q in queries["query_discriminative-existence.json"]:
        assert by_id[q["id"]]["type"] == "discriminative-hallucination"
        obj = q["query"].split()[3]  # "Is there a|an {obj} in this image?"
        n = int(q["image"][len("AMBER_"):-len(".jpg")])
        assert obj in by_id[n]["hallu"]


def test_captions_match_the_drawn_scene():
    from PIL import Image

    sc = world.scenes("train", 5, seed=1)[0]
    cap = sc.caption()
    assert cap.startswith("There is a ") and cap.endswith(f" on the {sc.background}.")
    for o, colour in sc.objects.items():
        assert f"a {colour} {o}" in cap
    # every object leaves ink in its own cell; the background colour elsewhere
    img = world.render(sc)
    assert isinstance(img, Image.Image) and img.size == (world.IMAGE_SIZE, world.IMAGE_SIZE)
    for o, (cx, cy) in sc.cells.items():
        box = img.crop((cx - 10, cy - 10, cx + 10, cy + 10))
        assert len(set(box.tobytes()[i:i + 3] for i in range(0, len(box.tobytes()), 3))) > 2, o


def test_cooccurrence_bias():
    train = world.scenes("train", 2000, seed=0)
    test = world.scenes("test", 400, seed=0)
    for x, y in world.BIAS_PAIRS.items():
        with_x = [s for s in train if x in s.objects]
        p_train = sum(y in s.objects for s in with_x) / len(with_x)
        assert p_train > 0.93, (x, y, p_train)
        alone = [s for s in test if x in s.objects and y not in s.objects]
        assert len(alone) > 40  # enough test images show X without Y
        for s in alone[:10]:
            import random
            assert s.hallu(random.Random(0))[0] == y or y in s.hallu(random.Random(0))
        # the partner follows its object directly in the canonical caption order
        assert world.OBJECTS.index(y) == world.OBJECTS.index(x) + 1


def test_cli_writes_the_same_world(tmp_path):
    kevo = Path(sys.executable).parent / "kevo"
    out = tmp_path / "cli"
    r = subprocess.run([str(kevo), "organism", "world", "--out", str(out), "--n-images", "6", "--seed", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ref = world.write_world(tmp_path / "ref", n_images=6, seed=2)
    assert _digest(out) == _digest(ref)
    bad = tmp_path / "notamber"
    bad.mkdir()
    (bad / "x.txt").write_text("mine")
    r = subprocess.run([str(kevo), "organism", "world", "--out", str(bad)], capture_output=True, text=True)
    assert r.returncode != 0 and "notamber" in r.stderr
    assert (bad / "x.txt").read_text() == "mine"


def test_relation_questions_follow_the_drawn_layout(tmp_path):
    """AMBER's relation task: one question per pair of objects, its truth read off the 2x2 grid."""
    root = world.write_world(tmp_path / "w", n_images=30, seed=0)
    ann = {r["id"]: r for r in json.loads((root / "data" / "annotations.json").read_text())}
    rel = json.loads((root / "data" / "query" / "query_discriminative-relation.json").read_text())
    assert len(rel) >= 15
    assert {ann[q["id"]]["type"] for q in rel} == {"discriminative-relation"}
    assert {ann[q["id"]]["truth"] for q in rel} == {"yes", "no"}
    scs = {sc.image_id: sc for sc in world.scenes("test", 30, seed=0)}
    for q in rel:
        words = q["query"].rstrip("?").split()  # Is the X (to the left of|above) the Y in this image
        a, b = words[2], words[-4]
        sc = scs[int(q["image"][len("AMBER_"):-len(".jpg")])]
        (ax, ay), (bx, by) = sc.cells[a], sc.cells[b]  # icon centres in pixels, independent of the grid helpers
        holds = ax < bx - world.CELL // 2 if "left" in words else ay < by - world.CELL // 2
        assert ann[q["id"]]["truth"] == ("yes" if holds else "no"), q


def test_vqa_split_one_question_single_word_answers(tmp_path):
    from PIL import Image

    a = world.write_vqa(tmp_path / "a", n_images=14, seed=0)
    b = world.write_vqa(tmp_path / "b", n_images=14, seed=0)
    assert _digest(a) == _digest(b)
    recs = json.loads((a / "questions.json").read_text())
    assert len(recs) == 14 and len({r["image"] for r in recs}) == 14
    assert {r["question"] for r in recs} == {"What is the colour of the flower?"}
    assert {r["answer"] for r in recs} <= set(world.COLOURS["flower"]) and len({r["answer"] for r in recs}) == 2
    scs = world.vqa_scenes(14, seed=0)
    for r, sc in zip(recs, scs):
        assert sc.objects["flower"] == r["answer"]
        img = Image.open(a / "images" / r["image"])
        assert img.size == (world.IMAGE_SIZE, world.IMAGE_SIZE)
