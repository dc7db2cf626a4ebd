"""Questions with constraints from an AMBER-format world (the embedded organism's, or AMBER itself):
the existence ("Is there a car in this image?") and colour ("Is the car red in this image?")
questions, each with its object word as the constraint, written as `kevo ingest vqa` records.

AMBER's existence questions all name objects the image does not show (answer "No"); swapping their
object word for another absent one leaves the answer where it was, so they cannot show where a model
stores what it sees. The kind ``present`` asks the same question about an object the image does show
(from the generative annotations' truth; answer "Yes")."""

from __future__ import annotations

import json
import re
from pathlib import Path

PATTERNS = (
    ("existence", "query_discriminative-existence.json", re.compile(r"^Is there an? (.+?) in this image\?$")),
    ("attribute", "query_discriminative-attribute.json", re.compile(r"^Is the (.+?) \w+ in this image\?$")),
)


def constraint_questions(data: str | Path, out: str | Path, per_kind: int | None = None,
                         kinds: tuple[str, ...] = ("existence", "attribute"), exclude: tuple[str, ...] = (),
                         objects: tuple[str, ...] | None = None, without: tuple[str, ...] = ()) -> Path:
    """Write ``out`` (JSONL: id, image, question, answer, constraint, kind) from ``data`` (an AMBER-format
    directory: ``query/`` and ``annotations.json``); ``per_kind`` questions of each kind at most, none
    whose object is in ``exclude`` (e.g. the unrelated questions of an edit about the car).

    Kind ``present``: one question per generative image about the first word of its truth that is in
    ``objects`` (None: any word), leaving out the images that show a word of ``without`` (e.g. the word
    a swap corruption puts in, so that the corrupted question names an absent object)."""
    data = Path(data)
    annotations = json.loads((data / "annotations.json").read_text())
    truth = {int(a["id"]): a.get("truth") for a in annotations}
    rows = []
    if "present" in kinds:
        images = {int(r["id"]): r["image"] for r in json.loads((data / "query" / "query_generative.json").read_text())}
        n = 0
        for a in annotations:
            shown = a.get("truth") or []
            if a.get("type") != "generative" or int(a["id"]) not in images or set(shown) & set(without):
                continue
            named = [w for w in shown if (objects is None or w in objects) and w not in exclude]
            if not named:
                continue
            o = named[0]
            rows.append({"id": f"present-{a['id']}", "image": images[int(a["id"])], "kind": "present",
                         "question": f"Is there {'an' if o[0] in 'aeiou' else 'a'} {o} in this image?",
                         "constraint": o, "answer": "Yes"})
            n += 1
            if per_kind is not None and n >= per_kind:
                break
    for kind, fname, pat in PATTERNS:
        if kind not in kinds:
            continue
        recs = json.loads((data / "query" / fname).read_text())
        n = 0
        for r in recs:
            m = pat.match(r["query"])
            if not m or m.group(1) in exclude:
                continue
            rows.append({"id": f"{kind}-{r['id']}", "image": r["image"], "question": r["query"],
                         "constraint": m.group(1), "answer": (truth.get(int(r["id"])) or "").capitalize() or None,
                         "kind": kind})
            n += 1
            if per_kind is not None and n >= per_kind:
                break
    out = Path(out)
    out.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows))
    return out


def main(argv=None) -> int:
    """``python -m ingest.trace.questions WORLD_DATA OUT.jsonl [--per-kind N] [--kinds attribute,existence]
    [--exclude car]``"""
    import argparse

    ap = argparse.ArgumentParser(description="questions with constraints from an AMBER-format world")
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--per-kind", type=int, default=None)
    ap.add_argument("--kinds", default="existence,attribute", help="of existence, attribute, present")
    ap.add_argument("--exclude", default="", help="objects whose questions are left out, comma-separated")
    ap.add_argument("--without", default="",
                    help="present: leave out the images that show one of these words, comma-separated")
    a = ap.parse_args(argv)

    def words(text: str) -> tuple[str, ...]:
        return tuple(x.strip() for x in text.split(",") if x.strip())

    p = constraint_questions(a.data, a.out, a.per_kind, words(a.kinds), words(a.exclude), without=words(a.without))
    print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
