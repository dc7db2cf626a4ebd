"""A tiny COCO 2014 val directory in the real file formats (instances + captions JSON, val2014 JPEGs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "coco"


def make_coco_dir(tmp: Path, missing: tuple[int, ...] = ()) -> Path:
    """Copy tests/fixtures/coco/annotations to ``tmp/coco`` and write the images it lists (except ``missing`` ids)."""
    from PIL import Image

    root = tmp / "coco"
    shutil.copytree(FIXTURE / "annotations", root / "annotations")
    (root / "val2014").mkdir()
    inst = json.loads((root / "annotations" / "instances_val2014.json").read_text())
    for k, im in enumerate(inst["images"]):
        if im["id"] not in missing:
            Image.new("RGB", (im["width"], im["height"]), (40 * k, 90, 160)).save(root / "val2014" / im["file_name"])
    return root
