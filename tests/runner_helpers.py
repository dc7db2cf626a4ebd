"""Helpers for the runner's end-to-end tests: run the real `kevo` command, make inputs, read stores back,
and compute a greedy reference with plain transformers (no kevo code on the reference path)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.llava_reference import expand2square
from tests.model_helpers import tiny_image, tiny_model_dir

KEVO = str(Path(sys.executable).with_name("kevo"))

# Bit-exact comparisons between separate processes need reproducible CPU math: MKL may take other code
# paths (other rounding) depending on buffer alignment unless its conditional numerical reproducibility
# mode is on, and reductions split by thread count. torchrun also sets OMP_NUM_THREADS=1 per rank.
REPRODUCIBLE_ENV = {"MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def kevo(*args, check: bool = True, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed `kevo` command; on an unexpected exit status, fail with its output."""
    e = {**os.environ, **(env or {})}
    p = subprocess.run([KEVO, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=e)
    if check and p.returncode != 0:
        raise AssertionError(f"kevo {' '.join(map(str, args))} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def make_images(d: Path, n: int, corrupt: tuple[str, ...] = ()) -> Path:
    """n tiny PNGs (different sizes and content) plus files with an image suffix that do not decode."""
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        tiny_image(w=30 + 3 * i, h=24 + 2 * i, seed=i).save(d / f"img{i:02d}.png")
    for name in corrupt:
        (d / name).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return d


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def manifest(store: Path) -> dict:
    return json.loads((Path(store) / "manifest.json").read_text())


def store_content(store: Path) -> dict:
    """Every table (sorted by its key, volatile columns dropped) and all hidden bytes of a store."""
    from kevo_store import open_store

    s = open_store(str(store))
    out = {
        "samples": s.arrow("SELECT * FROM samples ORDER BY sample_id"),
        "tokens": s.arrow("SELECT * FROM tokens ORDER BY token_uid"),
        "layers": s.arrow("SELECT * FROM layers ORDER BY token_uid, lens, layer"),
        "topk": s.arrow("SELECT * FROM topk ORDER BY token_uid, lens, layer, rank"),
        "vocab": s.arrow("SELECT * FROM vocab ORDER BY vocab_id"),
        "errors": s.arrow("SELECT * EXCLUDE (time) FROM errors ORDER BY sample_key"),
    }
    n = out["tokens"].num_rows
    out["hidden"] = s.hidden(np.arange(n)) if s.manifest.get("hidden") and n else None
    s.close()
    return out


def generated_ids(store: Path) -> dict[str, list[int]]:
    from kevo_store import open_store

    s = open_store(str(store))
    t = s.sql("SELECT s.sample_key, t.step, t.token_id FROM tokens t JOIN samples s USING (sample_id) "
              "WHERE t.role = 'generated' ORDER BY s.sample_key, t.step")
    s.close()
    out: dict[str, list[int]] = {}
    for k, tid in zip(t["sample_key"].to_list(), t["token_id"].to_list()):
        out.setdefault(k, []).append(int(tid))
    return out


def greedy_reference(model_dir: Path, prompt_text: str, image_path: Path | None, max_new_tokens: int) -> list[int]:
    """model.generate (greedy) on the exact templated text, with plain transformers classes."""
    import torch
    from PIL import Image
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    with torch.no_grad():
        if image_path is None:
            tok = AutoTokenizer.from_pretrained(str(model_dir))
            model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
            inputs = tok(prompt_text, return_tensors="pt")
        else:
            proc = AutoProcessor.from_pretrained(str(model_dir))
            model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32).eval()
            image = Image.open(image_path).convert("RGB")
            # the original LLaVA pads to a square with the CLIP mean colour before the processor
            image = expand2square(image, tuple(int(x * 255) for x in proc.image_processor.image_mean))
            inputs = proc(text=[prompt_text], images=[image], return_tensors="pt")
        out = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens)
        return out[0, inputs["input_ids"].shape[1]:].tolist()


__all__ = ["KEVO", "REPRODUCIBLE_ENV", "kevo", "make_images", "sha256", "manifest", "store_content", "generated_ids",
           "greedy_reference", "tiny_model_dir"]
