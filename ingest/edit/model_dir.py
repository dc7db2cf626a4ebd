"""Write an edited model as an ordinary Hugging Face directory, with ``edit.json`` beside the weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ingest.models import ModelError
from ingest.models.base import Adapter

#: files save_pretrained writes itself; everything else in the source directory is copied as is
_WRITTEN = ("config.json", "generation_config.json")


def check_out_dir(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"--out {out}: exists and is not an empty directory (choose a new directory)")
    return out


def write_model_dir(ad: Adapter, out: str | Path, record: dict) -> Path:
    """Save ``ad.model`` (safetensors) with the source's processor/tokenizer files and ``edit.json``."""
    if ad.skipped_layers:
        raise ModelError("an edit of a model with skipped layers cannot be saved as a model directory")
    out = check_out_dir(out)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    src = Path(ad.path)
    for f in sorted(src.iterdir()):
        if f.is_file() and not (f.suffix == ".safetensors" or f.name.endswith(".safetensors.index.json")
                                or f.name in _WRITTEN or f.name == "edit.json"):
            shutil.copy2(f, tmp / f.name)
    ad.model.save_pretrained(tmp, safe_serialization=True)
    (tmp / "edit.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out
