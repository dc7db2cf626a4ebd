"""``kevo ingest text``: text-only prompts, for the LVLM-vs-LLM comparison.

Two file formats:

* ``*.jsonl``: one JSON object per line with ``"prompt"`` (required) and ``"id"`` (optional, defaults
  to the line number); other fields are kept as the sample's annotations.
* anything else: plain text, one prompt per line; blank lines are ignored and the id is the
  1-based line number, so ids stay stable when prompts are appended.
"""

from __future__ import annotations

from pathlib import Path

from ingest.datasets.base import Dataset, DatasetError, DatasetItem, read_records, sha256_file


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DatasetError(f"--prompts {path}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def dataset(prompts: str | Path, name: str = "text") -> Dataset:
    """A :class:`Dataset` of the prompts in ``prompts``; keys 'text:<id>'."""
    path = Path(prompts).expanduser()
    if not path.exists():
        raise DatasetError(f"--prompts {path}: no such file")
    if not path.is_file():
        raise DatasetError(f"--prompts {path}: not a file")
    jsonl = path.suffix.lower() == ".jsonl"
    if jsonl:
        rows = [(r.line, r.value, r.where) for r in read_records(path, "--prompts", jsonl=True)]
    else:
        rows = [(n, line, f"line {n}") for n, line in enumerate(_read_lines(path), start=1) if line.strip()]
    items: list[DatasetItem] = []
    seen: dict[str, int] = {}
    for lineno, record, where in rows:
        if jsonl:
            if not isinstance(record, dict):
                raise DatasetError(f"{path}, {where}: expected a JSON object with \"prompt\"")
            prompt = record.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise DatasetError(f"{path}, {where}: \"prompt\" is missing, empty or not a string")
            item_id = str(record.get("id", lineno))
            annotations = {k: v for k, v in record.items() if k != "prompt"}
        else:
            prompt, item_id, annotations = record.strip(), str(lineno), {}
        if item_id in seen:
            raise DatasetError(f"{path}, {where}: duplicate id {item_id!r} (first on line {seen[item_id]})")
        seen[item_id] = lineno
        items.append(DatasetItem(key=f"{name}:{item_id}", item_id=item_id, prompt=prompt,
                                 image_path=None, annotations=annotations))
    if not items:
        raise DatasetError(f"--prompts {path}: the file contains no prompts")
    return Dataset(
        name=name,
        items=items,
        fingerprint={"path": str(path.resolve()), "sha256": sha256_file(path), "format": "jsonl" if jsonl else "lines"},
        n_items=len(items),
    )
