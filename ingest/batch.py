"""One batch of items -> table rows: read the images, template the prompts, capture, label.

A batch that fails to generate is retried one sample at a time, so that one bad sample cannot
poison the others; each failure becomes that sample's ``errors`` row with its stage (read,
prepare, generate, label).
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ingest.datasets.base import Dataset, DatasetItem, sha256_file
from ingest.rows import BatchRows, LabelError, Prepared, add_sample


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def error_row(item: DatasetItem, stage: str, exc: BaseException, message: str | None = None) -> dict:
    etype, msg = type(exc).__name__, message or str(exc) or repr(exc)
    return {"sample_key": item.key, "dataset": item.dataset, "item_id": item.item_id, "stage": stage,
            "error_type": etype, "message": msg, "time": _now()}


def load_image(path: Path):
    """Open and fully decode an image (PIL is lazy: verify() alone misses truncated files)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.copy()


def process_batch(batch: list[DatasetItem], adapter, settings, dataset: Dataset,
                  forced: dict[str, str] | None = None) -> BatchRows:
    """``forced``: teacher forcing, the given response of each item (by key) is scored instead of generated."""
    from ingest.capture import capture

    rows = BatchRows()
    prepared: list[Prepared] = []
    for item in batch:
        image = sha = None
        if getattr(item, "error", None):
            rows.errors.append(error_row(item, "read", ValueError(item.error), item.error))
            continue
        if item.image_path is not None:
            try:
                image = load_image(Path(item.image_path))
                sha = sha256_file(item.image_path)
            except Exception as e:  # noqa: BLE001 - any unreadable image is that sample's error
                rows.errors.append(error_row(item, "read", e, f"{item.image_path}: cannot read the image ({e})"))
                continue
        try:
            prompt_text = adapter.build_prompt(item.prompt, has_image=image is not None)
        except Exception as e:  # noqa: BLE001
            rows.errors.append(error_row(item, "prepare", e))
            continue
        prepared.append(Prepared(item, image, sha, prompt_text))

    forced_ids: dict[str, list[int]] = {}
    if forced is not None:
        from ingest.forced import ForcedResponseError, response_ids

        kept = []
        for p in prepared:
            try:
                forced_ids[p.item.key] = response_ids(adapter, forced[p.item.key])
                kept.append(p)
            except ForcedResponseError as e:
                rows.errors.append(error_row(p.item, "prepare", e))
        prepared = kept

    def capture_(ps: list[Prepared]):
        texts, images = [p.prompt_text for p in ps], [p.image for p in ps]
        if forced is None:
            return capture(adapter, texts, images, settings)
        from ingest.forced import capture_forced

        return capture_forced(adapter, texts, images, [forced_ids[p.item.key] for p in ps], settings)

    results: list[tuple[Prepared, Any]] = []
    if prepared:
        try:
            caps = capture_(prepared)
            results = list(zip(prepared, caps))
        except Exception:  # noqa: BLE001 - retry one by one so one bad sample cannot poison the batch
            if len(prepared) == 1:
                results = [(prepared[0], _exc_info())]
            else:
                for p in prepared:
                    try:
                        results.append((p, capture_([p])[0]))
                    except Exception:  # noqa: BLE001
                        results.append((p, _exc_info()))
    for p, cap in results:
        if isinstance(cap, _Failure):
            rows.errors.append(error_row(p.item, _failed_stage(adapter, p), cap.exc))
            rows.first_traceback = rows.first_traceback or cap.tb
            continue
        try:
            add_sample(rows, p, cap, adapter, dataset)
        except LabelError as e:
            rows.errors.append(error_row(p.item, "label", e.__cause__ or e))
    return rows


def _failed_stage(adapter, p: Prepared) -> str:
    """'prepare' if the processor alone rejects the sample (e.g. a prompt with a stray image token), else 'generate'."""
    try:
        adapter.encode([p.prompt_text], [p.image])
    except Exception:  # noqa: BLE001
        return "prepare"
    return "generate"


@dataclass
class _Failure:
    exc: BaseException
    tb: str


def _exc_info() -> _Failure:
    exc = sys.exc_info()[1]
    return _Failure(exc, traceback.format_exc())
