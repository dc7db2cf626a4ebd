"""A checkpoint's dimensions from its config.json (no weights loaded): to validate options and estimate disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ingest.config import IngestError


@dataclass
class ModelDims:
    n_layers: int
    """Decoder layers L in the checkpoint (before skipping)."""
    hidden_size: int
    vocab_size: int
    torch_dtype: str | None
    path: Path | None = None
    """The resolved model directory."""


def model_dims(model: str, revision: str | None) -> ModelDims:
    """Read L, D and V from the model's config (no weights loaded)."""
    from transformers import AutoConfig

    from ingest.models import ModelError, resolve_model_path

    try:
        path, _ = resolve_model_path(model, revision)
    except ModelError as e:
        raise IngestError(str(e)) from None
    if not (Path(path) / "config.json").is_file():
        raise IngestError(f"model {model!r}: no config.json in {path}")
    try:
        cfg = AutoConfig.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001 - any failure: the config is unusable
        raise IngestError(f"model {model!r}: cannot read {path / 'config.json'}: {e}") from None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    dtype = getattr(text, "dtype", None) or getattr(cfg, "dtype", None)
    try:
        return ModelDims(int(text.num_hidden_layers), int(text.hidden_size), int(text.vocab_size),
                         str(dtype).removeprefix("torch.") if dtype is not None else None, Path(path))
    except AttributeError as e:
        raise IngestError(f"model {model!r}: config has no {e.name}; is it a supported model?") from None
