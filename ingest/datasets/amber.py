"""AMBER (Wang et al., 2023): a real AMBER directory, read unchanged.

Files are looked up by name under ``DIR``, ``DIR/data`` or ``DIR/data/query`` / ``DIR/query``:
``annotations.json``, ``relation.json``, ``safe_words.txt`` and ``query_<task>.json``. Images
``AMBER_<n>.jpg`` come from ``--images`` or the first of ``DIR/image``, ``DIR/images``,
``DIR/data/image``, ``DIR/data/images`` that exists.

The benchmark's invariants are checked before anything runs (:func:`check_invariants`): ids 1..N in
order, every generative truth/hallu word a key of ``relation.json``, every query annotated with a
record of the query file's kind, every image present. Violations that make the data unusable raise
:class:`DatasetError` listing them; a missing image is a warning (that sample becomes an ``errors``
row and the run goes on), and so is the known upstream inconsistency (id 13193 reads "computer" in
query_all.json but "chair" in the existence file).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ingest.datasets.base import Dataset, DatasetError, DatasetItem, find_under, read_json, sha256_file

TASK_FILES = {
    "generative": "query_generative.json",
    "discriminative": "query_discriminative.json",
    "existence": "query_discriminative-existence.json",
    "attribute": "query_discriminative-attribute.json",
    "relation": "query_discriminative-relation.json",
    "all": "query_all.json",
}
"""``--task`` -> the benchmark's query file."""

_TASK_TYPES = {
    "generative": {"generative"},
    "existence": {"discriminative-hallucination"},
    "attribute": {"discriminative-attribute-state", "discriminative-attribute-number",
                  "discriminative-attribute-action"},
    "relation": {"discriminative-relation", "relation"},
}
_TASK_TYPES["discriminative"] = _TASK_TYPES["existence"] | _TASK_TYPES["attribute"] | _TASK_TYPES["relation"]
_TASK_TYPES["all"] = _TASK_TYPES["discriminative"] | _TASK_TYPES["generative"]

KNOWN_INCONSISTENCIES = {13193}
"""Ids whose query text differs between query files upstream (reported as warnings)."""

PAPER_PROMPT = "Please describe this image in detail."
"""The prompt the paper used for the generative task (AMBER's own query is "Describe this image.")."""


# --------------------------------------------------------------------------------------------
# files


def find_file(root: Path, name: str) -> Path:
    """``name`` under root, root/data, root/query, root/data/query (first found), else DatasetError."""
    return find_under(root, name, (".", "data", "query", "data/query"), "AMBER")


def _records(path: Path, data, required: dict) -> list[dict]:
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    for i, rec in enumerate(data, 1):
        if not isinstance(rec, dict):
            raise DatasetError(f"{path}, record {i}: expected an object, got {type(rec).__name__}")
        for key, types in required.items():
            if key not in rec:
                raise DatasetError(f"{path}, record {i} (id {rec.get('id', '?')}): missing field {key!r}")
            if not isinstance(rec[key], types):
                raise DatasetError(f"{path}, record {i} (id {rec.get('id', '?')}): field {key!r} has type "
                                   f"{type(rec[key]).__name__}")
    return data


def _image_dir(root: Path, images: Path | None) -> Path:
    if images is not None:
        if not Path(images).is_dir():
            raise DatasetError(f"--images {images}: not a directory")
        return Path(images)
    for d in (root / "image", root / "images", root / "data" / "image", root / "data" / "images"):
        if d.is_dir():
            return d
    return root / "image"  # absent: every image is reported missing and each sample becomes an errors row


# --------------------------------------------------------------------------------------------
# the benchmark


@dataclass
class AmberData:
    """A loaded AMBER directory."""

    root: Path
    annotations: dict[int, dict]
    """id -> annotation record."""
    queries: list[dict]
    """The task's query records, in file order."""
    query_file: Path
    annotation_file: Path
    image_dir: Path
    task: str
    warnings: list[str] = field(default_factory=list)
    """Non-fatal invariant violations, for the user to read."""

    @property
    def max_id(self) -> int:
        return max(self.annotations) if self.annotations else 0


def load(data_dir: str | Path, task: str = "generative", images: str | Path | None = None,
         check_images: bool = True) -> AmberData:
    """Read and check an AMBER directory (see the module docstring)."""
    if task not in TASK_FILES:
        raise DatasetError(f"--task {task!r}: expected one of {', '.join(TASK_FILES)}")
    root = Path(data_dir)
    ann_path = find_file(root, "annotations.json")
    anns = _records(ann_path, read_json(ann_path), {"id": int, "type": str})
    q_path = find_file(root, TASK_FILES[task])
    queries = _records(q_path, read_json(q_path), {"id": int, "image": str, "query": str})
    data = AmberData(root, {}, queries, q_path, ann_path, _image_dir(root, Path(images) if images else None), task)
    errors = check_invariants(data, anns, check_images=check_images)
    if errors:
        shown = "\n  ".join(errors[:20]) + (f"\n  … and {len(errors) - 20} more" if len(errors) > 20 else "")
        raise DatasetError(f"AMBER data in {root} violates the benchmark's invariants:\n  {shown}")
    return data


def check_invariants(data: AmberData, anns: list[dict], check_images: bool = True) -> list[str]:
    """Fill ``data.annotations``; return fatal violations, append non-fatal ones to ``data.warnings``."""
    errors: list[str] = []
    ann_name = data.annotation_file.name
    seen: dict[int, dict] = {}
    for i, rec in enumerate(anns, 1):
        if rec["id"] in seen:
            errors.append(f"{ann_name}, record {i}: duplicate id {rec['id']}")
        seen[rec["id"]] = rec
    data.annotations = seen
    if [r["id"] for r in anns] != list(range(1, len(anns) + 1)):
        data.warnings.append(
            f"{ann_name}: ids are not 1..{len(anns)} in order; the official evaluator (annotations[id-1]) "
            "would misread this file; kevo looks records up by id")
    relation_path = None
    try:
        relation_path = find_file(data.root, "relation.json")
        relation = read_json(relation_path)
    except DatasetError as e:
        errors.append(str(e))
        relation = {}
    try:
        find_file(data.root, "safe_words.txt")
    except DatasetError as e:
        errors.append(str(e))
    if relation:
        for rec in anns:
            if rec["type"] != "generative":
                if rec.get("truth") not in ("yes", "no"):
                    errors.append(f"{ann_name}, id {rec['id']}: discriminative truth must be 'yes' or 'no', "
                                  f"got {rec.get('truth')!r}")
                continue
            for key in ("truth", "hallu"):
                words = rec.get(key)
                if not isinstance(words, list):
                    errors.append(f"{ann_name}, id {rec['id']}: '{key}' must be a list of words")
                    continue
                bad = [w for w in words if w not in relation]
                if bad:
                    errors.append(f"{ann_name}, id {rec['id']}: {key} word(s) {bad} are not keys of "
                                  f"{relation_path.name}")
    q_name = data.query_file.name
    allowed = _TASK_TYPES[data.task]
    all_queries = None
    for i, q in enumerate(data.queries, 1):
        rec = seen.get(q["id"])
        if rec is None:
            errors.append(f"{q_name}, record {i}: id {q['id']} has no annotation in {ann_name}")
        elif rec["type"] not in allowed:
            errors.append(f"{q_name}, record {i}: id {q['id']} is annotated as {rec['type']!r}, "
                          f"not a {data.task} query")
        if not re.fullmatch(r"AMBER_\d+\.jpg", q["image"]):
            errors.append(f"{q_name}, record {i}: image {q['image']!r} is not AMBER_<n>.jpg")
    # the known upstream inconsistency: the same id with different query text in two files
    for qid in KNOWN_INCONSISTENCIES:
        other_task = "existence" if data.task == "all" else "all"
        if any(q["id"] == qid for q in data.queries):
            if all_queries is None:
                try:
                    all_path = find_file(data.root, TASK_FILES[other_task])
                    all_queries = {q["id"]: q for q in read_json(all_path) if isinstance(q, dict)}
                except DatasetError:
                    all_queries = {}
            mine = next(q for q in data.queries if q["id"] == qid)
            other = all_queries.get(qid)
            if other is not None and other.get("query") != mine["query"]:
                data.warnings.append(
                    f"known upstream inconsistency: id {qid} reads {mine['query']!r} in {q_name} but "
                    f"{other.get('query')!r} in {TASK_FILES[other_task]}; using {q_name}")
    if check_images:
        missing = sorted({q["image"] for q in data.queries if not (data.image_dir / q["image"]).is_file()},
                         key=lambda n: int(re.sub(r"\D", "", n) or 0))
        if missing:
            data.warnings.append(
                f"{len(missing)} of {len({q['image'] for q in data.queries})} images missing under "
                f"{data.image_dir} (e.g. {', '.join(missing[:3])}); their samples will be recorded in "
                "the store's errors table")
    return errors


def parse_ids(spec: str | Sequence[int] | None) -> list[int] | None:
    """'1,2,10-20' -> [1, 2, 10, ..., 20]; None -> None."""
    if spec is None or isinstance(spec, list | tuple):
        return None if spec is None else [int(x) for x in spec]
    out: list[int] = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise DatasetError(f"--ids {spec!r}: {part!r} is not an id or a range like 10-20")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise DatasetError(f"--ids {spec!r}: empty range {part!r}")
        out.extend(range(a, b + 1))
    return out


def items(data: AmberData, ids: Sequence[int] | None = None, prompt: str | None = None,
          limit: int | None = None) -> Iterator[DatasetItem]:
    """One item per query of the task, in file order (restricted to ``ids``, in ``ids`` order)."""
    queries = data.queries
    if ids is not None:
        by_id = {q["id"]: q for q in queries}
        chosen = []
        for i in ids:
            if i < 1 or i > data.max_id:
                raise DatasetError(f"--ids: id {i} is out of range: AMBER ids are 1..{data.max_id} "
                                   f"({data.annotation_file.name})")
            if i not in by_id:
                raise DatasetError(f"--ids: id {i} ({data.annotations[i]['type']}) is not in "
                                   f"{data.query_file.name} (--task {data.task})")
            chosen.append(by_id[i])
        queries = chosen
    for n, q in enumerate(queries):
        if limit is not None and n >= limit:
            return
        rec = data.annotations[q["id"]]
        yield DatasetItem(
            key=f"amber:{q['id']}",
            item_id=str(q["id"]),
            prompt=prompt if prompt else q["query"],
            image_path=data.image_dir / q["image"],
            annotations={**rec, "image": q["image"], "query": q["query"]},
            image_id=q["image"],
        )


def make_labeler(vocab=None, nouns: str = "auto", similarity=None, warn=None):
    """The runner's labeler: words, object mentions and AMBER metrics for each response.

    Its ``nouns`` attribute names the noun extraction that runs ('nltk' or 'offline', see
    :func:`ingest.labels.nouns.make_noun_extractor`)."""
    from ingest.labels import amber as rules
    from ingest.labels.align import label_columns
    from ingest.labels.nouns import make_noun_extractor

    vocab = vocab or rules.AmberVocabulary.load()
    extract = make_noun_extractor(nouns, vocab.vocabulary, warn=warn)
    sim = similarity or rules.exact_similarity

    def labeler(item: DatasetItem, response: str, tokens):
        rec = item.annotations
        if rec.get("type") == "generative":
            score = rules.score_generative(rec, extract(response), vocab, sim)
            metrics = score.metrics()
            metrics["nouns"] = extract.name
            return label_columns(response, tokens, score.mentions), metrics
        metrics = rules.score_discriminative(rec, response)
        answer = next((w for w in _words(response) if w.text[:1].isalnum()), None)
        span = (answer.start, answer.end) if answer is not None else None
        cols = label_columns(response, tokens, (), answer_span=span)
        if span is None:
            cols["is_answer"] = [False] * len(cols["word_index"])
        return cols, metrics

    labeler.nouns = extract.name
    return labeler


def _words(text):
    from ingest.labels.words import split_words

    return split_words(text)


def dataset(data_dir: str | Path, task: str = "generative", ids: str | Sequence[int] | None = None,
            prompt: str | None = None, images: str | Path | None = None, nouns: str = "auto",
            similarity: str | Path | None = None, warn=None) -> Dataset:
    """The AMBER :class:`Dataset` for the runner.

    ``nouns``: 'auto' (the official NLTK pipeline where NLTK and its data are found, else 'offline'
    with a warning), 'nltk' or 'offline'; the settings record the one that ran. ``similarity``: a
    similarity table (JSON, see :class:`ingest.labels.amber.TableSimilarity`) for the official
    similarity rule, else exact match.
    ``warn(msg)`` receives the non-fatal invariant violations.
    """
    from ingest.labels.amber import AmberVocabulary, TableSimilarity

    data = load(data_dir, task, images)
    for w in data.warnings:
        (warn or _stderr)(f"warning: {w}")
    id_list = parse_ids(ids)
    chosen = list(items(data, id_list, prompt))
    vocab = AmberVocabulary.load(data.root)
    try:  # set up the labeler now: a missing NLTK or a bad table is a user error before any model runs
        sim = TableSimilarity(similarity) if similarity else None
        labeler = make_labeler(vocab, nouns, sim, warn=warn or _stderr)
    except (RuntimeError, ValueError, OSError) as e:
        raise DatasetError(str(e)) from e
    files = {p.name: sha256_file(p) for p in (data.annotation_file, data.query_file,
                                               find_file(data.root, "relation.json"),
                                               find_file(data.root, "safe_words.txt"))}
    return Dataset(
        name="amber",
        items=chosen,
        labeler=labeler,
        fingerprint={"root": str(Path(data_dir).resolve()), "files": files, "images": str(data.image_dir)},
        n_items=len(chosen),
        settings={"task": task, "prompt": prompt or "AMBER query", "ids": ids if isinstance(ids, str) else id_list,
                  "nouns": labeler.nouns, "nouns_requested": nouns,
                  "similarity": str(similarity) if similarity else "exact",
                  "warnings": data.warnings},
    )


def _stderr(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr)
