"""Questions with constraints from an AMBER-format world (the embedded organism's, or AMBER itself):
the existence ("Is there a car in this image?") and colour ("Is the car red in this image?")
questions, each with its object word as the constraint, written as `kevo ingest vqa` records."""

from __future__ import annotations

import json
import re
from pathlib import Path

PATTERNS = (
    ("existence", "query_discriminative-existence.json", re.compile(r"^Is there an? (.+?) in this image\?$")),
    ("attribute", "query_discriminative-attribute.json", re.compile(r"^Is the (.+?) \w+ in this image\?$")),
)


def constraint_questions(data: str | Path, out: str | Path, per_kind: int | None = None,
                         kinds: tuple[str, ...] = ("existence", "attribute"), exclude: tuple[str, ...] = ()) -> Path:
    """Write ``out`` (JSONL: id, image, question, answer, constraint, kind) from ``data`` (an AMBER-format
    directory: ``query/`` and ``annotations.json``); ``per_kind`` questions of each kind at most, none
    whose object is in ``exclude`` (e.g. the unrelated questions of an edit about the car)."""
    data = Path(data)
    truth = {int(a["id"]): a.get("truth") for a in json.loads((data / "annotations.json").read_text())}
    rows = []
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
    ap.add_argument("--kinds", default="existence,attribute")
    ap.add_argument("--exclude", default="", help="objects whose questions are left out, comma-separated")
    a = ap.parse_args(argv)
    p = constraint_questions(a.data, a.out, a.per_kind, tuple(k.strip() for k in a.kinds.split(",") if k.strip()),
                             tuple(x.strip() for x in a.exclude.split(",") if x.strip()))
    print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
