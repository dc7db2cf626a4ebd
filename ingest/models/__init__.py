"""Model adapters, one file per family, and :func:`load_adapter`, the single entry point.

>>> from ingest.models import load_adapter
>>> ad = load_adapter("llava-hf/llava-1.5-7b-hf", dtype="float16", device="cuda")
>>> text = ad.build_prompt("Describe this image.", has_image=True)
>>> batch = ad.encode([text], [pil_image])

``model`` is a local directory or a Hugging Face hub id. Hub ids are resolved through the local
Hugging Face cache only (``HF_HOME``/``HF_HUB_CACHE``), never the network: kevo runs offline.
Weights load from ``*.safetensors`` only (pickled ``.bin``/``.pt`` checkpoints can run code on load).
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

from .base import Adapter, Batch, ModelError
from .causal_lm import CausalLMAdapter
from .gemma3 import Gemma3Adapter
from .idefics3 import Idefics3Adapter
from .instructblip import InstructBlipAdapter
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter
from .paligemma import PaliGemmaAdapter
from .qwen2_vl import Qwen2VLAdapter

ADAPTERS: tuple[type[Adapter], ...] = (
    LlavaAdapter,
    LlavaNextAdapter,
    Qwen2VLAdapter,
    Idefics3Adapter,
    PaliGemmaAdapter,
    Gemma3Adapter,
    InstructBlipAdapter,
    CausalLMAdapter,
)
DTYPES = ("auto", "float32", "float16", "bfloat16")

__all__ = ["ADAPTERS", "Adapter", "Batch", "ModelError", "load_adapter", "resolve_model_path",
           "supported_families"]


def supported_families() -> str:
    return "; ".join(f"{a.family} ({', '.join(a.model_types)})" for a in ADAPTERS)


def resolve_model_path(model: str, revision: str | None = None) -> tuple[Path, str | None]:
    """A local directory, or a hub id found in the local Hugging Face cache -> (directory, revision)."""
    p = Path(model).expanduser()
    if p.is_dir():
        return p.resolve(), revision
    if p.exists():
        raise ModelError(f"model {model!r} is a file, not a model directory")
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelError(f"model {model!r}: no such directory (and not a hub id of the form 'org/name')")
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE

    cache = os.environ.get("HF_HUB_CACHE") or HF_HUB_CACHE  # read now: the env may change after import
    try:
        path = snapshot_download(model, revision=revision, local_files_only=True, cache_dir=cache)
    except Exception as e:  # noqa: BLE001 - every failure here means "not in the cache"
        raise ModelError(
            f"model {model!r} is neither a local directory nor in the Hugging Face cache ({cache}); "
            f"kevo works offline: download it first (e.g. `hf download {model}`) ({type(e).__name__})"
        ) from None
    path = Path(path)
    return path, path.name  # snapshots/<commit>: the resolved commit, whatever ref was asked for


def _check_weights(path: Path, model: str) -> None:
    st = glob.glob(str(path / "*.safetensors"))
    if st:
        return
    pickled = [Path(f).name for ext in ("bin", "pt", "pth", "ckpt") for f in glob.glob(str(path / f"*.{ext}"))]
    if pickled:
        raise ModelError(
            f"model {model!r}: only pickled weights ({', '.join(sorted(pickled)[:3])}); kevo loads safetensors "
            "only (convert with `safetensors`' convert script or save_pretrained(safe_serialization=True))"
        )
    raise ModelError(f"model {model!r}: no *.safetensors weights in {path}")


def _pick_adapter(path: Path, model: str) -> type[Adapter]:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelError(f"model {model!r}: no config.json in {path}")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"model {model!r}: config.json is not valid JSON ({e})") from None
    mt = cfg.get("model_type")
    for a in ADAPTERS:
        if mt in a.model_types:
            return a
    archs = ", ".join(cfg.get("architectures") or []) or "?"
    if mt in ("llava_llama", "llava_mistral", "llava_mpt"):
        raise ModelError(
            f"model {model!r} is an original haotian-liu/LLaVA checkpoint (model_type={mt!r}); use its "
            "transformers conversion (e.g. llava-hf/llava-1.5-7b-hf), which kevo runs as the original does"
        )
    raise ModelError(
        f"model {model!r}: unsupported architecture (model_type={mt!r}, architectures={archs}). "
        f"Supported families: {supported_families()}"
    )


def _torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return "auto" if dtype == "auto" else getattr(torch, dtype)


def load_adapter(
    model: str,
    dtype: str = "auto",
    device: str | None = None,
    device_map: str | dict | None = None,
    skip_layers: list[int] | None = None,
    revision: str | None = None,
) -> Adapter:
    """Load ``model`` (local dir or cached hub id) and wrap it in its family's adapter.

    dtype: 'auto' (the checkpoint's), 'float32', 'float16' or 'bfloat16'.
    device: e.g. 'cpu', 'cuda', 'cuda:1' (the whole model on one device); or device_map
    (e.g. 'auto', passed to from_pretrained) to spread a large model over several GPUs.
    skip_layers: decoder layers (0-based indices of the original model) to remove; see
    :mod:`ingest.skip`.
    """
    import transformers

    path, rev = resolve_model_path(model, revision)
    _check_weights(path, model)
    cls = _pick_adapter(path, model)
    torch_dtype = _torch_dtype(dtype)
    if device is not None and device_map is not None:
        raise ModelError("give either device or device_map, not both")
    model_cls = getattr(transformers, cls.model_class)
    kwargs = {"dtype": torch_dtype, "use_safetensors": True}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        m = model_cls.from_pretrained(str(path), **kwargs)
    except Exception as e:
        raise ModelError(f"model {model!r}: loading failed: {type(e).__name__}: {e}") from e
    if device is not None and device_map is None:
        m = m.to(device)
    try:
        proc = cls.load_processor(str(path))
    except Exception as e:
        raise ModelError(f"model {model!r}: its processor/tokenizer failed to load: {type(e).__name__}: {e}") from e
    ad = cls(m, proc, model_id=model, revision=rev, dtype=dtype, path=str(path))
    if skip_layers:
        from ..skip import skip_layers as _skip

        _skip(ad, skip_layers)
    return ad
