"""What a dataset hands to the runner: items, an optional labeler, and a source fingerprint.

A dataset module (``ingest/datasets/<name>.py``) exposes ``dataset(...) -> Dataset`` (its keyword
options are those of its ``kevo ingest <name>`` subcommand; malformed input raises
:class:`DatasetError` naming the file and the record). The :class:`Dataset` carries

* ``items``: one :class:`DatasetItem` per (image, prompt), in a deterministic order (the runner
  splits items across ranks by their index in this order);
* optionally ``labeler(item, response, tokens) -> (token_columns, metrics)``, called by the runner
  after generation for every sample (see :data:`Labeler`);
* ``fingerprint`` and ``settings``, recorded in the manifest's ``dataset`` section. What identifies
  the data (a resumed or merged store must agree on it): the name, the settings (prompt, task, ...)
  and ``fingerprint["files"]``, the sha256 of the annotation files. Where the data lies
  (``root``, ``images``, ``path``) and which items a run selected (``settings["ids"]``,
  ``settings["image_ids"]``) are provenance (``kevo_store.manifest.PROVENANCE``).

The file helpers every dataset shares live here: :func:`find_under`, :func:`read_json`,
:func:`read_records` (a JSON list or JSONL file of records), :func:`sha256_file`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the root `kevo` command turns a KevoError into "kevo: error: <message>" and exit 1
from kevo_store.errors import KevoError


class DatasetError(KevoError):
    """Malformed dataset input. The message names the file and the record (e.g. 'query.json, record 17')."""


@dataclass
class DatasetItem:
    """One (image, prompt) to run through the model."""

    key: str
    """``samples.sample_key``: '<dataset>:<item_id>[:<variant>]'. Unique in a store; the resume key."""
    item_id: str
    """The dataset's own id of the item (AMBER id, COCO image id, file name, prompt line id)."""
    prompt: str
    """The user prompt, before templating (the adapter applies the model's chat template)."""
    image_path: Path | None
    """The image file, or None for a text-only item."""
    annotations: dict = field(default_factory=dict)
    """The dataset's record for this item; stored verbatim as JSON in ``samples.annotations``."""
    image_id: str | None = None
    """``samples.image_id``: the image's name relative to the dataset root; defaults to the file name."""
    error: str | None = None
    """A record that could not be used (malformed row, constraint not in its question): the runner
    writes it as an ``errors`` row (stage 'read', the message naming file and row) and runs the rest."""

    @property
    def dataset(self) -> str:
        """The dataset name: the key's prefix before the first ':'."""
        return self.key.split(":", 1)[0]

    @property
    def image_name(self) -> str | None:
        if self.image_id is not None:
            return self.image_id
        return None if self.image_path is None else Path(self.image_path).name


Labeler = Callable[[DatasetItem, str, Any], "tuple[Mapping[str, Iterable], Mapping[str, Any] | None]"]
"""``labeler(item, response, tokens) -> (token_columns, metrics)``.

``tokens`` is a ``pyarrow.Table`` with one row per generated token in generation order and the
columns ``step`` (int32), ``token_id`` (int32), ``piece`` (str), ``char_start``/``char_end`` (int32,
the token's text span in ``response``; a token that contributes no characters of its own, e.g. the
end-of-sequence token or a partial byte of a multi-byte character, has an empty span
``char_start == char_end``).

``token_columns`` maps column names of ``kevo_store.schema.TOKENS`` (``word_index``, ``word``,
``is_word_start``, ``object``, ``label``, ``hallucinated``, ``is_answer``) to sequences aligned with
the rows of ``tokens``. ``metrics`` is a JSON-serialisable dict stored in ``samples.metrics`` (or None).
An exception raised by a labeler sends the sample to ``errors`` with stage 'label'.
"""


@dataclass
class Dataset:
    """A dataset ready for the runner."""

    name: str
    """Dataset name, stored in ``samples.dataset`` and the manifest."""
    items: Iterable[DatasetItem]
    """The items in a deterministic order (iterated once, lazily)."""
    labeler: Labeler | None = None
    """Optional per-sample labeler (see :data:`Labeler`)."""
    fingerprint: dict = field(default_factory=dict)
    """Where the data came from, for the manifest: e.g. {'root': ..., 'files': {name: sha256}} (``files``: identity)."""
    n_items: int | None = None
    """Number of items if known cheaply (for the progress bar and the disk estimate)."""
    settings: dict = field(default_factory=dict)
    """Dataset options worth recording in the manifest (prompt, split, ...)."""
    prompt_labeler: Callable[[DatasetItem, Any, Any], Any] | None = None
    """Optional ``prompt_labeler(item, input_ids, adapter) -> set of input positions`` flagged in
    ``tokens.is_constraint`` (prompt rows, when captured); an exception sends the sample to ``errors``
    (stage 'label'), e.g. a constraint not found in its question."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def find_under(root: str | Path, name: str, subdirs: Iterable[str], kind: str) -> Path:
    """The file ``name`` in the first of ``subdirs`` of ``root`` that has it ('.' is root itself).

    DatasetError when ``root`` is not a directory ("<kind> directory not found") or no subdir has it."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: {kind} directory not found")
    subdirs = list(subdirs)
    for sub in subdirs:
        p = root / sub / name if sub != "." else root / name
        if p.is_file():
            return p
    looked = ", ".join("." if s == "." else f"{s}/" for s in subdirs)
    raise DatasetError(f"{name} not found under {root} (looked in {looked})")


def read_json(path: str | Path, text: str | None = None):
    """json.load with a DatasetError naming the file, the position and the record for malformed JSON
    (``text``: the file's contents when the caller has read them already)."""
    if text is None:
        text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        record = text.count("{", 0, e.pos) - (1 if text.lstrip().startswith("[") is False else 0)
        raise DatasetError(
            f"{path}: malformed JSON at line {e.lineno} column {e.colno} (in record {max(record, 1)}): {e.msg}"
        ) from e


@dataclass(frozen=True)
class Record:
    """One record of a JSON list or JSONL file, with where it is (for messages)."""

    index: int
    """1-based position among the file's records."""
    line: int | None
    """1-based line of a JSONL record (None in a JSON list)."""
    value: Any

    @property
    def where(self) -> str:
        return f"record {self.index}" + (f" (line {self.line})" if self.line is not None else "")


def read_records(path: str | Path, what: str, error: type[KevoError] = DatasetError,
                 jsonl: bool | None = None) -> list[Record]:
    """The records of a JSON list, or of a JSONL file (one JSON value a line, blank lines skipped).

    ``jsonl`` None: JSONL when the name ends in ``.jsonl`` or the text does not start with ``[``.
    ``what`` names the input in messages (``"--responses"``); a missing, unreadable or malformed
    file raises ``error`` naming it, the file and the line (and the record)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path}: file not found" if not path.exists() else f"{what} {path}: not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{what} {path}: cannot read it ({e})") from None
    if jsonl is None:
        jsonl = path.suffix.lower() == ".jsonl" or not text.lstrip().startswith("[")
    if not jsonl:
        try:
            values = read_json(path, text)
        except DatasetError as e:
            raise error(str(e)) from None
        if not isinstance(values, list):
            raise error(f"{path}: expected a JSON list of records")
        return [Record(i, None, v) for i, v in enumerate(values, 1)]
    out: list[Record] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Record(len(out) + 1, n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise error(f"{path}, record {len(out) + 1} (line {n}): malformed JSON: {e.msg}") from None
    return out
