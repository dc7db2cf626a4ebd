"""The AMBER fixture: real AMBER records (tests/fixtures/amber) copied to a temp dir, with generated images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "amber"
SHARED_AMBER = Path(__file__).resolve().parents[2] / "shared" / "amber" / "data"


def responses() -> list[dict]:
    return json.loads((FIXTURE / "responses.json").read_text())


def make_amber_dir(tmp: Path, images: bool = True, missing: tuple[str, ...] = ()) -> Path:
    """Copy the fixture to ``tmp/amber`` and write an image AMBER_<n>.jpg for every query (except ``missing``)."""
    from PIL import Image

    root = tmp / "amber"
    shutil.copytree(FIXTURE / "data", root / "data")
    if images:
        (root / "image").mkdir()
        names = {q["image"] for q in json.loads((root / "data" / "query" / "query_all.json").read_text())}
        for k, name in enumerate(sorted(names)):
            if name in missing:
                continue
            Image.new("RGB", (40, 30), (20 * k % 255, 120, 200)).save(root / "image" / name, quality=90)
    return root
