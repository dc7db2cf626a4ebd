"""A deterministic synthetic world in AMBER's exact file format.

Images are 64x64 JPEGs of one to four small icons (apple, boat, fish, ...) drawn with PIL on a
plain background (grass, sand or snow), laid out on a 2x2 grid. Every object has a colour, so the
world also has attribute questions ("Is the apple red in this image?").

The co-occurrence bias that makes the trained model hallucinate: in the *train* split an object X
nearly always appears together with its partner Y (``BIAS_PAIRS``: a boat comes with a fish, a car
with a tree). Captions list objects in a fixed canonical order in which Y directly follows X, so
the language prior "boat -> fish" is as strong as it can be. The *test* split shows X alone about
half the time; there the partner Y heads the record's ``hallu`` list, and a model that learned
the prior instead of looking says "a white boat and a blue fish" anyway: a real hallucination.

Everything is a pure function of (split, seed, n_images): same arguments, same bytes.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

IMAGE_SIZE = 64
"""Side of the square images, in pixels."""

CELL = IMAGE_SIZE // 2
"""Objects sit in the cells of a 2x2 grid (with a little jitter)."""

# The canonical caption order. Each biased partner directly follows its object.
OBJECTS: tuple[str, ...] = (
    "sun", "cloud", "bird", "house", "car", "tree", "boat", "fish", "flower", "ball", "cup", "apple",
)

COLOURS: dict[str, tuple[str, str]] = {
    "sun": ("yellow", "red"),
    "cloud": ("white", "grey"),
    "bird": ("blue", "black"),
    "house": ("red", "brown"),
    "car": ("red", "yellow"),
    "tree": ("green", "yellow"),
    "boat": ("white", "brown"),
    "fish": ("blue", "yellow"),
    "flower": ("pink", "purple"),
    "ball": ("red", "blue"),
    "cup": ("blue", "white"),
    "apple": ("red", "green"),
}

RGB: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 40),
    "green": (40, 150, 50),
    "blue": (40, 80, 210),
    "yellow": (240, 210, 40),
    "brown": (130, 80, 40),
    "white": (250, 250, 250),
    "grey": (140, 140, 140),
    "black": (25, 25, 25),
    "pink": (240, 140, 190),
    "purple": (130, 50, 170),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grass": (165, 205, 135),
    "sand": (225, 205, 160),
    "snow": (215, 225, 240),
}

BIAS_PAIRS: dict[str, str] = {"boat": "fish", "car": "tree"}
"""X -> Y: in the train split, Y nearly always accompanies X."""

TRAIN_BIAS = 0.97
"""P(Y present | X present) in the train split."""

TEST_BIAS = 0.4
"""P(Y present | X present) in the test split: X is shown alone most of the time."""

TEST_X_RATE = 0.5
"""Share of test images that contain at least one biased object X (so hallucination is measurable)."""

N_HALLU = 5
"""Length of a generative record's ``hallu`` list (AMBER uses about 5)."""

SAFE_WORDS: tuple[str, ...] = ("picture", "scene", "image", "photo")

# word -> associated words (AMBER's relation.json is not strict synonyms either).
RELATION: dict[str, list[str]] = {
    **{o: [] for o in OBJECTS},
    "tree": ["forest"],
    "grass": ["ground"],
    "sand": ["ground", "beach"],
    "snow": ["ground"],
    "cup": ["mug"],
    "boat": ["ship"],
}

GENERATIVE_PROMPT = "Describe this image."

VQA_OBJECT = "flower"
"""The object of the cross-image VQA split (the paper asks one question over many images)."""

VQA_QUESTION = f"What is the colour of the {VQA_OBJECT}?"
"""The VQA split's one question; the answer is a single colour word."""


def colour_question(obj: str) -> str:
    """The single-word-answer VQA question about an object's colour."""
    return f"What is the colour of the {obj}?"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def existence_question(o: str) -> str:
    """The existence question of AMBER's discriminative-hallucination split."""
    return f"Is there {article(o)} {o} in this image?"


@dataclass
class Scene:
    """One image of the world: which objects, where, in which colour, on which background."""

    image_id: int
    background: str
    objects: dict[str, str]  # object -> colour, in canonical order
    cells: dict[str, tuple[int, int]] = field(default_factory=dict)  # object -> icon centre

    @property
    def present(self) -> list[str]:
        return [o for o in OBJECTS if o in self.objects]

    def caption(self, colours: bool = True) -> str:
        """The reference description, in the canonical object order (with each object's colour)."""
        parts = [f"a {self.objects[o]} {o}" if colours else f"{article(o)} {o}" for o in self.present]
        if len(parts) == 1:
            listed = parts[0]
        else:
            listed = ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"There is {listed} on the {self.background}."

    def column(self, obj: str) -> int:
        return self.cells[obj][0] // CELL

    def row(self, obj: str) -> int:
        return self.cells[obj][1] // CELL

    def hallu(self, rng: random.Random) -> list[str]:
        """Absent objects to watch for: the biased partners first, then random others."""
        out = [y for x, y in BIAS_PAIRS.items() if x in self.objects and y not in self.objects]
        absent = [o for o in OBJECTS if o not in self.objects and o not in out]
        rng.shuffle(absent)
        return out + absent[: max(0, N_HALLU - len(out))]


# --------------------------------------------------------------------------------------------
# drawing


def _draw_icon(d: ImageDraw.ImageDraw, name: str, colour: str, cx: int, cy: int) -> None:
    c = RGB[colour]
    k = (20, 20, 20)  # outline, so white objects show on snow
    if name == "sun":
        for dx, dy in ((0, -11), (0, 11), (-11, 0), (11, 0), (-8, -8), (8, 8), (-8, 8), (8, -8)):
            d.line((cx, cy, cx + dx, cy + dy), fill=c, width=2)
        d.ellipse((cx - 6, cy - 6, cx + 6, cy + 6), fill=c, outline=k)
    elif name == "cloud":
        for dx, dy, r in ((-6, 1, 5), (0, -3, 6), (6, 1, 5)):
            d.ellipse((cx + dx - r, cy + dy - r, cx + dx + r, cy + dy + r), fill=c, outline=k)
        d.rectangle((cx - 6, cy + 1, cx + 6, cy + 6), fill=c)
    elif name == "bird":
        d.ellipse((cx - 8, cy - 4, cx + 6, cy + 5), fill=c, outline=k)
        d.polygon(((cx - 3, cy - 1), (cx + 3, cy - 1), (cx - 2, cy - 10)), fill=c, outline=k)
        d.polygon(((cx + 6, cy - 2), (cx + 11, cy), (cx + 6, cy + 2)), fill=(240, 160, 30))
    elif name == "house":
        d.rectangle((cx - 8, cy - 2, cx + 8, cy + 10), fill=c, outline=k)
        d.polygon(((cx - 11, cy - 2), (cx, cy - 11), (cx + 11, cy - 2)), fill=(90, 60, 40), outline=k)
        d.rectangle((cx - 2, cy + 3, cx + 2, cy + 10), fill=(60, 40, 20))
    elif name == "car":
        d.rectangle((cx - 11, cy - 2, cx + 11, cy + 5), fill=c, outline=k)
        d.rectangle((cx - 6, cy - 8, cx + 5, cy - 2), fill=c, outline=k)
        for wx in (cx - 6, cx + 6):
            d.ellipse((wx - 3, cy + 3, wx + 3, cy + 9), fill=(20, 20, 20))
    elif name == "tree":
        d.rectangle((cx - 2, cy + 2, cx + 2, cy + 11), fill=(110, 70, 30))
        d.ellipse((cx - 9, cy - 11, cx + 9, cy + 5), fill=c, outline=k)
    elif name == "boat":
        d.polygon(((cx - 11, cy + 3), (cx + 11, cy + 3), (cx + 7, cy + 9), (cx - 7, cy + 9)), fill=c, outline=k)
        d.line((cx, cy + 3, cx, cy - 11), fill=(60, 40, 20), width=2)
        d.polygon(((cx + 1, cy - 10), (cx + 1, cy + 1), (cx + 9, cy + 1)), fill=(235, 235, 235), outline=k)
    elif name == "fish":
        d.ellipse((cx - 9, cy - 5, cx + 5, cy + 5), fill=c, outline=k)
        d.polygon(((cx + 4, cy), (cx + 11, cy - 6), (cx + 11, cy + 6)), fill=c, outline=k)
        d.ellipse((cx - 6, cy - 2, cx - 4, cy), fill=(0, 0, 0))
    elif name == "flower":
        d.line((cx, cy, cx, cy + 11), fill=(40, 120, 40), width=2)
        for dx, dy in ((0, -6), (6, -1), (4, 5), (-4, 5), (-6, -1)):
            d.ellipse((cx + dx - 4, cy + dy - 4, cx + dx + 4, cy + dy + 4), fill=c, outline=k)
        d.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill=(240, 210, 40))
    elif name == "ball":
        d.ellipse((cx - 9, cy - 9, cx + 9, cy + 9), fill=c, outline=k)
        d.rectangle((cx - 8, cy - 2, cx + 8, cy + 2), fill=(250, 250, 250))
    elif name == "cup":
        d.rectangle((cx - 7, cy - 8, cx + 5, cy + 9), fill=c, outline=k)
        d.arc((cx + 1, cy - 4, cx + 11, cy + 5), start=270, end=90, fill=k, width=2)
    elif name == "apple":
        d.ellipse((cx - 9, cy - 7, cx + 9, cy + 10), fill=c, outline=k)
        d.line((cx, cy - 7, cx + 1, cy - 12), fill=(100, 60, 20), width=2)
        d.ellipse((cx + 2, cy - 12, cx + 8, cy - 8), fill=(50, 160, 50))
    else:  # pragma: no cover - OBJECTS is closed
        raise ValueError(name)


def render(scene: Scene) -> Image.Image:
    """Draw a scene (pure: no randomness here, positions come with the scene)."""
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUNDS[scene.background])
    d = ImageDraw.Draw(img)
    for o in scene.present:
        cx, cy = scene.cells[o]
        _draw_icon(d, o, scene.objects[o], cx, cy)
    return img


def jpeg_bytes(img: Image.Image) -> bytes:
    """The JPEG encoding used for every image of the world (fixed settings: deterministic bytes)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# sampling


def _sample_scene(rng: random.Random, image_id: int, split: str, bias: float | None = None) -> Scene:
    k = rng.choices((1, 2, 3), weights=(3, 4, 3))[0]
    chosen = rng.sample(OBJECTS, k)
    if split == "test" and rng.random() < TEST_X_RATE and not any(x in chosen for x in BIAS_PAIRS):
        chosen[0] = rng.choice(sorted(BIAS_PAIRS))
    p = bias if bias is not None else TRAIN_BIAS if split == "train" else TEST_BIAS
    for x, y in BIAS_PAIRS.items():
        if x in chosen and y not in chosen and rng.random() < p:
            chosen.append(y)
    if len(chosen) > 4:  # four cells: drop unbiased extras first
        keep = set(BIAS_PAIRS) | set(BIAS_PAIRS.values())
        extras = [o for o in chosen if o not in keep]
        for o in extras[: len(chosen) - 4]:
            chosen.remove(o)
        chosen = chosen[:4]
    cells = [(0, 0), (1, 0), (0, 1), (1, 1)]
    rng.shuffle(cells)
    scene = Scene(image_id=image_id, background=rng.choice(sorted(BACKGROUNDS)), objects={})
    for o in OBJECTS:
        if o in chosen:
            scene.objects[o] = rng.choice(COLOURS[o])
    for o, (gx, gy) in zip(chosen, cells):
        scene.cells[o] = (gx * CELL + CELL // 2 + rng.randint(-3, 3), gy * CELL + CELL // 2 + rng.randint(-3, 3))
    return scene


def scenes(split: str, n_images: int, seed: int = 0, bias: float | None = None) -> list[Scene]:
    """The scenes of a split; ``split`` is "train" or "test" (different streams, different bias).

    ``bias`` overrides the split's P(Y present | X present) (``TRAIN_BIAS`` / ``TEST_BIAS``); the
    draws are otherwise the same stream, so the default reproduces the split byte for byte."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    rng = random.Random(f"kevo-organism-world/{split}/{seed}")
    return [_sample_scene(rng, i + 1, split, bias) for i in range(n_images)]


@dataclass
class QA:
    """A yes/no question about a scene, with AMBER's record type."""

    image_id: int
    query: str
    truth: str  # "yes" | "no"
    type: str  # AMBER record type


def questions(scene: Scene, hallu: list[str], *, train: bool = False, relation: bool = True) -> list[QA]:
    """AMBER-style yes/no questions: attribute (colour), existence and (``relation``) relation.

    AMBER asks existence questions only about absent objects (truth always "no"); the train split
    also asks about present ones so the model learns to say "Yes".
    """
    out = []
    for o in scene.present:
        c = scene.objects[o]
        other = [x for x in COLOURS[o] if x != c][0]
        out.append(QA(scene.image_id, f"Is the {o} {c} in this image?", "yes", "discriminative-attribute-state"))
        out.append(QA(scene.image_id, f"Is the {o} {other} in this image?", "no", "discriminative-attribute-state"))
    for o in hallu:
        out.append(QA(scene.image_id, existence_question(o), "no", "discriminative-hallucination"))
    if train:
        for o in scene.present:
            out.append(QA(scene.image_id, existence_question(o), "yes", "discriminative-hallucination"))
    return out + (relation_questions(scene) if relation else [])


def relation_questions(scene: Scene) -> list[QA]:
    """AMBER's relation task on the 2x2 grid: one question per pair of objects, "Is the X to the left
    of the Y in this image?" (or "above" for a pair in one column), the truth alternating yes/no
    from pair to pair."""
    out = []
    present = scene.present
    pairs = [(a, b) for i, a in enumerate(present) for b in present[i + 1:]]
    for n, (a, b) in enumerate(pairs):
        if scene.column(a) != scene.column(b):
            first, second = (a, b) if scene.column(a) < scene.column(b) else (b, a)
            where = "to the left of"
        else:
            first, second = (a, b) if scene.row(a) < scene.row(b) else (b, a)
            where = "above"
        if n % 2:
            first, second, truth = second, first, "no"
        else:
            truth = "yes"
        out.append(QA(scene.image_id, f"Is the {first} {where} the {second} in this image?", truth,
                      "discriminative-relation"))
    return out


# --------------------------------------------------------------------------------------------
# AMBER-format output


def _dump(path: Path, obj) -> None:
    # AMBER's files are json.dumps(indent=4) with no trailing newline
    path.write_text(json.dumps(obj, indent=4), encoding="utf-8")


def write_world(out: Path | str, n_images: int = 60, seed: int = 0, split: str = "test") -> Path:
    """Write an AMBER-format directory (``data/``, ``image/``) and return its path.

    Ids follow AMBER's layout: generative records 1..N, then attribute, then existence
    (hallucination) questions, then relation questions.
    """
    out = Path(out)
    (out / "data" / "query").mkdir(parents=True, exist_ok=True)
    (out / "image").mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"kevo-organism-annotations/{split}/{seed}")
    scs = scenes(split, n_images, seed)
    annotations: list[dict] = []
    q_gen: list[dict] = []
    attr: list[tuple[Scene, QA]] = []
    exist: list[tuple[Scene, QA]] = []
    rel: list[tuple[Scene, QA]] = []
    for sc in scs:
        (out / "image" / f"AMBER_{sc.image_id}.jpg").write_bytes(jpeg_bytes(render(sc)))
        hallu = sc.hallu(rng)
        annotations.append({
            "id": sc.image_id,
            "type": "generative",
            "truth": sc.present + [sc.background],
            "hallu": hallu,
        })
        q_gen.append({"id": sc.image_id, "image": f"AMBER_{sc.image_id}.jpg", "query": GENERATIVE_PROMPT})
        for qa in questions(sc, hallu):
            kind = qa.type.split("-")[1]
            (attr if kind == "attribute" else rel if kind == "relation" else exist).append((sc, qa))
    q_attr, q_exist, q_rel = [], [], []
    for group, qlist in ((attr, q_attr), (exist, q_exist), (rel, q_rel)):
        for sc, qa in group:
            rid = len(annotations) + 1
            annotations.append({"id": rid, "type": qa.type, "truth": qa.truth})
            qlist.append({"id": rid, "image": f"AMBER_{sc.image_id}.jpg", "query": qa.query})
    q_disc = q_attr + q_exist + q_rel
    _dump(out / "data" / "annotations.json", annotations)
    _dump(out / "data" / "relation.json", RELATION)
    (out / "data" / "safe_words.txt").write_text("\n".join(SAFE_WORDS), encoding="utf-8")
    qdir = out / "data" / "query"
    _dump(qdir / "query_generative.json", q_gen)
    _dump(qdir / "query_discriminative-attribute.json", q_attr)
    _dump(qdir / "query_discriminative-existence.json", q_exist)
    _dump(qdir / "query_discriminative-relation.json", q_rel)
    _dump(qdir / "query_discriminative.json", q_disc)
    _dump(qdir / "query_all.json", q_gen + q_disc)
    return out


def vqa_scenes(n_images: int, seed: int = 0, obj: str = VQA_OBJECT) -> list[Scene]:
    """Test-split scenes that all show ``obj`` (its own stream): the cross-image VQA split."""
    rng = random.Random(f"kevo-organism-world/vqa/{obj}/{seed}")
    out: list[Scene] = []
    while len(out) < n_images:
        sc = _sample_scene(rng, len(out) + 1, "test")
        if obj in sc.objects:
            out.append(sc)
    return out


def write_vqa(out: Path | str, n_images: int = 16, seed: int = 0, obj: str = VQA_OBJECT) -> Path:
    """The cross-image VQA split: one question ("What is the colour of the flower?") over
    ``n_images`` images that show the object; single-word answers (its colour). Writes
    ``questions.json`` (records ``{"id", "image", "question", "answer"}``, the format of
    ``kevo ingest vqa``) and ``images/vqa_<n>.jpg``; returns ``out``."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for sc in vqa_scenes(n_images, seed, obj):
        name = f"vqa_{sc.image_id}.jpg"
        (out / "images" / name).write_bytes(jpeg_bytes(render(sc)))
        records.append({"id": sc.image_id, "image": name, "question": colour_question(obj),
                        "answer": sc.objects[obj]})
    _dump(out / "questions.json", records)
    return out
