"""Visual question answering sets with single-word answers (the paper's cross-image experiment).

``--questions FILE``: a JSON list or JSONL of records ``{"image": ..., "question": ...[, "answer": ...][, "id": ...]
[, "constraint": ...]}``; ``image`` is a path relative to ``--images`` (or absolute). ``constraint`` is the
span of the question the answer depends on ("this building"): its tokens are flagged in
``tokens.is_constraint`` (prompt rows, with ``--capture-prompt``) and ``kevo trace`` corrupts them; a
constraint not found in its question is an ``errors`` row. The answer word of each response is
marked in ``tokens.is_answer`` (its first token): the expected answer where the response contains it,
else the first word of the response.
"""

from __future__ import annotations

from pathlib import Path

from ingest.datasets.base import Dataset, DatasetError, DatasetItem, read_records, sha256_file

_SKIP = frozenset({"the", "a", "an", "it", "is", "its", "it's", "this", "that", "of"})


def read_questions(path: Path, required: tuple[str, ...] = ("image", "question"), option: str = "--questions"
                   ) -> list[dict]:
    """Question records (JSON list or JSONL); DatasetError naming the file and the record for malformed input."""
    path = Path(path)
    records = [r.value for r in read_records(path, option)]
    for i, r in enumerate(records, 1):
        if not isinstance(r, dict):
            raise DatasetError(f"{path}, record {i}: expected an object")
        for key in required:
            if not isinstance(r.get(key), str) or not r[key].strip():
                raise DatasetError(f"{path}, record {i}: missing or empty {key!r}")
        if "answer" in r and not isinstance(r["answer"], str):
            raise DatasetError(f"{path}, record {i}: 'answer' must be a string")
        if "constraint" in r and not (isinstance(r["constraint"], str) and r["constraint"].strip()):
            raise DatasetError(f"{path}, record {i}: 'constraint' must be a non-empty string")
    return records


def dataset(questions: str | Path, images: str | Path, limit: int | None = None) -> Dataset:
    """The VQA :class:`Dataset`."""
    images = Path(images)
    if not images.is_dir():
        raise DatasetError(f"--images {images}: not a directory")
    recs = read_questions(Path(questions))
    items = []
    seen = set()
    for i, r in enumerate(recs):
        item_id = str(r.get("id", i))
        if item_id in seen:
            raise DatasetError(f"{questions}, record {i + 1}: duplicate id {item_id!r}")
        seen.add(item_id)
        p = Path(r["image"])
        items.append(DatasetItem(key=f"vqa:{item_id}", item_id=item_id, prompt=r["question"],
                                 image_path=p if p.is_absolute() else images / p, annotations=dict(r),
                                 image_id=r["image"],
                                 error=constraint_problem(r, f"{Path(questions).name}, record {i + 1}")))
    if limit is not None:
        items = items[:limit]
    with_constraints = any("constraint" in it.annotations for it in items)
    return Dataset(name="vqa", items=items, labeler=labeler, n_items=len(items),
                   prompt_labeler=constraint_labeler if with_constraints else None,
                   fingerprint={"questions": str(Path(questions).resolve()),
                                "files": {Path(questions).name: sha256_file(questions)}, "images": str(images)},
                   settings={})


def constraint_problem(record: dict, where: str) -> str | None:
    """None, or why the record's constraint cannot be used (it is not in its question)."""
    from ingest.trace.constraint import ConstraintError, constraint_span

    c = record.get("constraint")
    if c is None:
        return None
    try:
        constraint_span(record["question"], c)
    except ConstraintError as e:
        return f"{where}: {e}"
    return None


def constraint_labeler(item: DatasetItem, input_ids: list[int], adapter):
    """The input positions of the item's constraint (flagged in tokens.is_constraint), or None."""
    from ingest.trace.constraint import constraint_positions

    c = item.annotations.get("constraint")
    if not c:
        return None
    return constraint_positions(adapter.tokenizer, input_ids, item.prompt, c, adapter.image_token_ids)


def answer_word(response: str, expected: str | None):
    """The answer word of a response (a :class:`ingest.labels.words.Word`) or None."""
    from ingest.labels.words import split_words

    words = [w for w in split_words(response) if w.text[:1].isalnum()]
    if expected:
        for w in words:
            if w.text.lower() == expected.strip().lower():
                return w
    for w in words:
        if w.text.lower() not in _SKIP:
            return w
    return words[0] if words else None


def labeler(item: DatasetItem, response: str, tokens):
    """Words, the answer token, and correctness when an answer is given."""
    from ingest.labels.align import label_columns

    expected = item.annotations.get("answer")
    w = answer_word(response, expected)
    cols = label_columns(response, tokens, (), answer_span=(w.start, w.end) if w else None)
    if w is None:
        cols["is_answer"] = [False] * len(cols["word_index"])
    metrics = {"task": "vqa", "answer": w.text if w else None, "expected": expected,
               "correct": (w.text.lower() == expected.strip().lower()) if (w and expected) else None}
    return cols, metrics
