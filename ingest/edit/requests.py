"""Edit requests: (image, question, constraint, target answer), from JSON or JSONL.

A request is ``{"id": ..., "image": "cat.png", "question": "What is in this image?",
"constraint": "this image", "target": "dog", "paraphrases": ["...", ...]}``; ``image`` is relative to
``--images`` (default: the request file's folder) or absolute; ``id`` defaults to the record's index;
``paraphrases`` (other wordings of the question, each containing the constraint) are optional and
feed the generalisation measure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ingest.datasets.base import DatasetError
from ingest.datasets.vqa import read_records


@dataclass(frozen=True)
class EditRequest:
    id: str
    image: Path | None
    question: str
    constraint: str
    target: str
    paraphrases: tuple[str, ...] = field(default_factory=tuple)

    def as_json(self) -> dict:
        return {"id": self.id, "image": None if self.image is None else str(self.image),
                "question": self.question, "constraint": self.constraint, "target": self.target,
                "paraphrases": list(self.paraphrases)}


def read_requests(path: str | Path, images: str | Path | None = None) -> list[EditRequest]:
    """Parse and check a request file; a DatasetError names the file and the record."""
    path = Path(path)
    base = Path(images) if images is not None else path.parent
    out: list[EditRequest] = []
    seen: set[str] = set()
    for i, r in enumerate(read_records(path, required=("question",), option="--requests"), 1):
        where = f"{path}, request {i}"
        for key in ("constraint", "target"):
            if not isinstance(r.get(key), str) or not r[key].strip():
                raise DatasetError(f"{where}: missing or empty {key!r}")
        question, constraint = r["question"], r["constraint"]
        if constraint not in question:
            raise DatasetError(f"{where}: constraint {constraint!r} is not in the question {question!r}")
        paraphrases = r.get("paraphrases", [])
        if not isinstance(paraphrases, list) or not all(isinstance(p, str) for p in paraphrases):
            raise DatasetError(f"{where}: 'paraphrases' must be a list of strings")
        for p in paraphrases:
            if constraint not in p:
                raise DatasetError(f"{where}: constraint {constraint!r} is not in the paraphrase {p!r}")
        rid = str(r.get("id", i - 1))
        if rid in seen:
            raise DatasetError(f"{where}: duplicate id {rid!r}")
        seen.add(rid)
        img = r.get("image")
        img_path = None if img is None else (Path(img) if Path(img).is_absolute() else base / img)
        if img_path is not None and not img_path.is_file():
            raise DatasetError(f"{where}: image {img_path} not found")
        out.append(EditRequest(rid, img_path, question, constraint, r["target"].strip(), tuple(paraphrases)))
    if not out:
        raise DatasetError(f"{path}: no requests")
    return out
