"""Edit requests: (image, question, constraint, target answer), from JSON or JSONL.

A request is ``{"id": ..., "image": "cat.png", "question": "What is in this image?",
"constraint": "this image", "target": "dog", "paraphrases": ["...", ...]}``; ``image`` is relative to
``--images`` (default: the request file's folder) or absolute; ``id`` defaults to the record's index;
``paraphrases`` (other wordings of the question, each containing the constraint) are optional and
feed the generalisation measure.

``prefix`` (optional) is the start of the answer, given: the edit then targets the next word after it,
so a word in the middle of a response can be edited (e.g. the hallucinated "tree" in "There is a car,
a tree"). With ``"constraint_in": "prefix"`` the constraint is looked up in that prefix (its last
occurrence, the most recent mention) instead of the question; the key is then read at that token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ingest.datasets.base import DatasetError
from ingest.datasets.vqa import read_questions


@dataclass(frozen=True)
class EditRequest:
    id: str
    image: Path | None
    question: str
    constraint: str
    target: str
    paraphrases: tuple[str, ...] = field(default_factory=tuple)
    prefix: str = ""
    constraint_in: str = "question"  # or "prefix"

    def as_json(self) -> dict:
        return {"id": self.id, "image": None if self.image is None else str(self.image),
                "question": self.question, "constraint": self.constraint, "target": self.target,
                "paraphrases": list(self.paraphrases), "prefix": self.prefix, "constraint_in": self.constraint_in}


def read_requests(path: str | Path, images: str | Path | None = None) -> list[EditRequest]:
    """Parse and check a request file; a DatasetError names the file and the record."""
    path = Path(path)
    base = Path(images) if images is not None else path.parent
    out: list[EditRequest] = []
    seen: set[str] = set()
    for i, r in enumerate(read_questions(path, required=("question",), option="--requests"), 1):
        where = f"{path}, request {i}"
        for key in ("constraint", "target"):
            if not isinstance(r.get(key), str) or not r[key].strip():
                raise DatasetError(f"{where}: missing or empty {key!r}")
        question, constraint = r["question"], r["constraint"]
        prefix, constraint_in = r.get("prefix", ""), r.get("constraint_in", "question")
        if not isinstance(prefix, str) or constraint_in not in ("question", "prefix"):
            raise DatasetError(f"{where}: 'prefix' must be a string and 'constraint_in' 'question' or 'prefix'")
        within = prefix if constraint_in == "prefix" else question
        if constraint not in within:
            raise DatasetError(f"{where}: constraint {constraint!r} is not in the {constraint_in} {within!r}")
        paraphrases = r.get("paraphrases", [])
        if not isinstance(paraphrases, list) or not all(isinstance(p, str) for p in paraphrases):
            raise DatasetError(f"{where}: 'paraphrases' must be a list of strings")
        for p in paraphrases:
            if constraint_in == "question" and constraint not in p:
                raise DatasetError(f"{where}: constraint {constraint!r} is not in the paraphrase {p!r}")
        rid = str(r.get("id", i - 1))
        if rid in seen:
            raise DatasetError(f"{where}: duplicate id {rid!r}")
        seen.add(rid)
        img = r.get("image")
        img_path = None if img is None else (Path(img) if Path(img).is_absolute() else base / img)
        if img_path is not None and not img_path.is_file():
            raise DatasetError(f"{where}: image {img_path} not found")
        out.append(EditRequest(rid, img_path, question, constraint, r["target"].strip(), tuple(paraphrases),
                               prefix, constraint_in))
    if not out:
        raise DatasetError(f"{path}: no requests")
    return out
