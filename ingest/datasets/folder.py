"""``kevo ingest folder``: every image under a directory, each with the same prompt."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ingest.datasets.base import Dataset, DatasetError, DatasetItem

# Files with these suffixes are images; anything else in the folder is ignored. A file with an
# image suffix that does not decode is not skipped here: the runner records it in `errors`.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def image_files(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, sorted by their relative path (POSIX)."""
    return sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: p.relative_to(root).as_posix(),
    )


def dataset(images: str | Path, prompt: str, name: str = "folder") -> Dataset:
    """A :class:`Dataset` of every image under ``images`` with ``prompt``; key 'folder:<relative path>'."""
    root = Path(images).expanduser()
    if not root.exists():
        raise DatasetError(f"--images {root}: no such directory")
    if not root.is_dir():
        raise DatasetError(f"--images {root}: not a directory")
    if not prompt.strip():
        raise DatasetError("--prompt is empty")
    files = image_files(root)
    if not files:
        raise DatasetError(
            f"--images {root}: no image files (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, recursively)"
        )
    # The fingerprint names every file with its size: cheap, and changes when the folder does.
    # Each sample additionally stores its image's sha256 (samples.image_sha256).
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(root).as_posix()}\t{p.stat().st_size}\n".encode())
    items = [
        DatasetItem(
            key=f"{name}:{p.relative_to(root).as_posix()}",
            item_id=p.relative_to(root).as_posix(),
            prompt=prompt,
            image_path=p,
            annotations={},
            image_id=p.relative_to(root).as_posix(),
        )
        for p in files
    ]
    return Dataset(
        name=name,
        items=items,
        fingerprint={"root": str(root.resolve()), "n_files": len(files), "listing_sha256": h.hexdigest()},
        n_items=len(items),
        settings={"prompt": prompt},
    )
