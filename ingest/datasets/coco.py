"""COCO 2014 val with CHAIR ground truth.

``DIR`` holds ``annotations/instances_val2014.json`` and ``annotations/captions_val2014.json`` (or the
same files directly in ``DIR``) and the images ``val2014/COCO_val2014_<12-digit id>.jpg`` (or the
file names the instances file lists, under ``DIR/val2014``, ``DIR/images`` or ``DIR``). One item per
image (sorted by image id, or in the order of ``--image-ids FILE``: one id per line, or a JSON list),
with the CHAIR ground-truth objects in its annotations.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ingest.datasets.base import Dataset, DatasetError, DatasetItem, find_under, read_json, sha256_file

DEFAULT_PROMPT = "Please describe this image in detail."
"""The paper's prompt for open-ended description."""


def annotation_files(root: Path) -> tuple[Path, Path]:
    """``instances_val2014.json`` and ``captions_val2014.json`` under root/annotations or root."""
    pi, pc = (find_under(root, name, ("annotations", "."), "COCO")
              for name in ("instances_val2014.json", "captions_val2014.json"))
    return pi, pc


def _image_root(root: Path) -> Path:
    for d in (root / "val2014", root / "images", root):
        if d.is_dir() and any(d.glob("*.jpg")):
            return d
    return root / "val2014"


def read_image_ids(path: Path) -> list[int]:
    """--image-ids FILE: one id per line, or a JSON list of ids."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        ids = read_json(path)
        if not all(isinstance(i, int) for i in ids):
            raise DatasetError(f"{path}: expected a JSON list of integer image ids")
        return ids
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            out.append(int(line))
        except ValueError as e:
            raise DatasetError(f"{path}, line {n}: {line!r} is not an image id") from e
    return out


def load_ground_truth(instances: dict, captions: dict, path_i: Path, path_c: Path):
    """image id -> (file name, instance categories, reference captions)."""
    from ingest.labels.chair import inverse_synonyms

    try:
        images = {im["id"]: im["file_name"] for im in instances["images"]}
        cats = {c["id"]: c["name"] for c in instances["categories"]}
    except (KeyError, TypeError) as e:
        raise DatasetError(f"{path_i}: not a COCO instances file (missing {e})") from e
    inv = inverse_synonyms()
    for name in cats.values():
        if name not in inv:
            raise DatasetError(f"{path_i}: category {name!r} is not one of CHAIR's 80 MSCOCO categories")
    inst: dict[int, set] = defaultdict(set)
    for k, a in enumerate(instances.get("annotations", []), 1):
        try:
            inst[a["image_id"]].add(cats[a["category_id"]])
        except (KeyError, TypeError) as e:
            raise DatasetError(f"{path_i}, annotation {k}: bad record ({e})") from e
    caps: dict[int, list] = defaultdict(list)
    for k, a in enumerate(captions.get("annotations", []) if isinstance(captions, dict) else [], 1):
        try:
            caps[a["image_id"]].append(a["caption"])
        except (KeyError, TypeError) as e:
            raise DatasetError(f"{path_c}, annotation {k}: bad record ({e})") from e
    return images, inst, caps


def dataset(data_dir: str | Path, image_ids: str | Path | None = None, prompt: str | None = None,
            limit: int | None = None) -> Dataset:
    """The COCO :class:`Dataset` (CHAIR labeler attached)."""
    from ingest.labels.chair import ground_truth

    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"{root}: COCO directory not found")
    pi, pc = annotation_files(root)
    images, inst, caps = load_ground_truth(read_json(pi), read_json(pc), pi, pc)
    if image_ids is not None:
        ids = read_image_ids(Path(image_ids))
        unknown = [i for i in ids if i not in images]
        if unknown:
            raise DatasetError(f"--image-ids {image_ids}: {len(unknown)} id(s) not in {pi.name} "
                               f"(e.g. {unknown[:5]})")
    else:
        ids = sorted(images)
    if limit is not None:
        ids = ids[:limit]
    img_root = _image_root(root)
    items = []
    for i in ids:
        gt = ground_truth(sorted(inst.get(i, ())), caps.get(i, ()))
        items.append(DatasetItem(
            key=f"coco:{i}", item_id=str(i), prompt=prompt or DEFAULT_PROMPT, image_path=img_root / images[i],
            image_id=images[i],
            annotations={"image_id": i, "file_name": images[i], "instance_categories": sorted(inst.get(i, ())),
                         "captions": caps.get(i, []), "gt_objects": sorted(gt)},
        ))
    return Dataset(name="coco", items=items, labeler=labeler, n_items=len(items),
                   fingerprint={"root": str(root.resolve()), "files": {p.name: sha256_file(p) for p in (pi, pc)}},
                   settings={"prompt": prompt or DEFAULT_PROMPT, "image_ids": str(image_ids) if image_ids else None})


def labeler(item: DatasetItem, response: str, tokens):
    """Words and CHAIR object labels for a generated caption."""
    from ingest.labels.align import label_columns
    from ingest.labels.chair import score_caption

    mentions, metrics = score_caption(response, item.annotations.get("gt_objects", []))
    return label_columns(response, tokens, mentions), metrics
