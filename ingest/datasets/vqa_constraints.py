"""VQA-Constraints, the test-bed of the multimodal causal-tracing study, in its released layout.

``--data DIR`` holds three CSV files (any of them may be absent, at least one must be there):

- ``multimodal_known.csv``: index, question, subject, main_entity, image_url (images in folders named
  "A photo of <subject>");
- ``multimodal_movies.csv``: index, question, director, main_entity, image_url;
- ``okvqa.csv``: index, question, main_entity, image_url (COCO val2014 images).

``main_entity`` is the constraint (a substring of the question, sometimes cut short: "This
operating"). The image of a row is looked for at ``image_url`` relative to DIR, then under the
folder the file's layout names ("A photo of <subject>", ``val2014``, or a folder named after the
CSV), by the file name of ``image_url``. There is no answer column: ``--answers FILE`` (optional) is
a JSON object ``{"<csv stem>:<index>": "answer"}`` joined onto the rows. A malformed row (a missing
column value, a duplicate index) and a constraint not found in its question are ``errors`` rows
naming the file and the row; the other rows run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ingest.datasets.base import Dataset, DatasetError, DatasetItem, sha256_file
from ingest.datasets.vqa import constraint_labeler, constraint_problem, labeler

FILES = {
    "multimodal_known": ("index", "question", "subject", "main_entity", "image_url"),
    "multimodal_movies": ("index", "question", "director", "main_entity", "image_url"),
    "okvqa": ("index", "question", "main_entity", "image_url"),
}


def _image_candidates(data: Path, stem: str, row: dict) -> list[Path]:
    url = row["image_url"].strip()
    name = url.rstrip("/").rsplit("/", 1)[-1]
    out = []
    if "://" not in url:
        out.append(data / url)
    if stem == "multimodal_known" and row.get("subject"):
        out.append(data / f"A photo of {row['subject'].strip()}" / name)
    if stem == "okvqa":
        out.append(data / "val2014" / name)
    out += [data / stem / name, data / name]
    return out


def dataset(data: str | Path, answers: str | Path | None = None, limit: int | None = None) -> Dataset:
    data = Path(data)
    if not data.is_dir():
        raise DatasetError(f"--data {data}: not a directory")
    present = [s for s in FILES if (data / f"{s}.csv").is_file()]
    if not present:
        raise DatasetError(f"--data {data}: none of {', '.join(s + '.csv' for s in FILES)} found")
    answer_of: dict[str, str] = {}
    if answers is not None:
        try:
            answer_of = json.loads(Path(answers).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DatasetError(f"--answers {answers}: cannot read a JSON object ({e})") from None
        if not isinstance(answer_of, dict) or not all(isinstance(v, str) for v in answer_of.values()):
            raise DatasetError(f"--answers {answers}: expected a JSON object of \"<csv stem>:<index>\": \"answer\"")
    items: list[DatasetItem] = []
    files = {}
    for stem in present:
        path = data / f"{stem}.csv"
        files[path.name] = sha256_file(path)
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in FILES[stem] if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{path}: missing column(s) {missing}; the released columns are {list(FILES[stem])}")
            seen = set()
            for n, row in enumerate(reader, 1):
                where = f"{path.name}, row {n}"
                idx = (row.get("index") or "").strip()
                key = f"vqa-constraints:{stem}:{idx or f'row{n}'}"
                rec = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k is not None}
                rec["file"] = path.name
                rec["row"] = n
                error = None
                empty = [c for c in FILES[stem] if not (row.get(c) or "").strip()]
                if empty or None in row:
                    error = f"{where}: malformed row (" + (f"empty {empty}" if empty else "extra fields") + ")"
                elif idx in seen:
                    error = f"{where}: duplicate index {idx!r}"
                    key = f"vqa-constraints:{stem}:row{n}"
                seen.add(idx)
                if error is None:
                    rec["constraint"] = rec["main_entity"]
                    error = constraint_problem(rec, where)
                if f"{stem}:{idx}" in answer_of:
                    rec["answer"] = answer_of[f"{stem}:{idx}"]
                image = None
                if error is None:
                    cands = _image_candidates(data, stem, row)
                    image = next((c for c in cands if c.is_file()), cands[0])
                items.append(DatasetItem(key=key, item_id=f"{stem}:{idx or n}", prompt=rec.get("question") or "",
                                         image_path=image, annotations=rec, error=error,
                                         image_id=str(image.relative_to(data)) if image is not None and
                                         image.is_relative_to(data) else None))
    if limit is not None:
        items = items[:limit]
    return Dataset(name="vqa-constraints", items=items, labeler=labeler, prompt_labeler=constraint_labeler,
                   n_items=len(items), fingerprint={"root": str(data.resolve()), "files": files, "images": str(data),
                                                   "answers": str(answers) if answers else None},
                   settings={})
