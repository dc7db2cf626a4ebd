"""The manifest sections an ingest run writes (``model``, ``lens``, ``generation``, ``dataset``, ``capture``).

:func:`planned_meta` is what is known before the model loads (the weights' fingerprint, the
dataset, the options): the resume check compares it with the store (:mod:`ingest.resume`).
:func:`store_meta` adds what the loaded model says (family, dimensions, template) and is what the
writer records.
"""

from __future__ import annotations

from ingest.config import IngestConfig
from ingest.datasets.base import Dataset

LENS_DESCRIPTIONS = {
    "final_norm": "layers 0..L-1: lm_head(final_norm(h_l)); layer L: the model's own output",
    "raw": "layers 0..L-1: lm_head(h_l); layer L: the model's own output",
}


def dataset_section(dataset: Dataset, config: IngestConfig) -> dict:
    return {"name": dataset.name, "fingerprint": dataset.fingerprint, "settings": dataset.settings,
            "n_items": dataset.n_items, "limit": config.limit}


def planned_meta(dataset: Dataset, config: IngestConfig, fingerprint: dict, n_layers: int, skip: list[int],
                 hidden_layers: list[int], forced: dict[str, str] | None = None) -> dict:
    """The sections this run will write, as far as they are known without loading the model."""
    model = {"id": config.model, "revision": config.revision, "fingerprint": fingerprint, "n_layers": n_layers,
             "skipped_layers": list(skip)}
    if config.dtype != "auto":
        model["dtype"] = config.dtype
    capture = {"hidden_layers": hidden_layers, "skip_layers": list(skip), "capture_prompt": config.capture_prompt}
    if config.hidden_dtype != "auto":
        capture["hidden_dtype"] = config.hidden_dtype
    return {
        "model": model,
        "lens": {"modes": list(config.lens_modes), "top_k": config.top_k, "dola": config.dola},
        "generation": {"max_new_tokens": config.max_new_tokens, "padding": "left", **decoding(config, forced)},
        "dataset": dataset_section(dataset, config),
        "capture": capture,
    }


def decoding(config: IngestConfig, forced: dict[str, str] | None) -> dict:
    """Greedy generation, or teacher forcing: the given responses (a resumed store must agree on them)."""
    if forced is None:
        return {"decoding": "greedy"}
    from ingest.datasets.base import sha256_file

    return {"decoding": "teacher-forced",
            "responses": {"file": str(config.responses), "sha256": sha256_file(config.responses), "n": len(forced)}}


def store_meta(dataset: Dataset, config: IngestConfig, adapter, fingerprint: dict | None, hidden_layers: list[int],
               hidden_dtype: str, skip: list[int], world_size: int, forced: dict[str, str] | None = None) -> dict:
    info = dict(adapter.model_info)
    if fingerprint is not None:
        info["fingerprint"] = fingerprint
    template = getattr(adapter, "prompt_template", "") or ""
    return {
        "model": info,
        "lens": {
            "modes": list(config.lens_modes),
            "dtype": "float32",
            "top_k": config.top_k,
            "dola": config.dola,
            **LENS_DESCRIPTIONS,
            "final_logit_softcapping": info.get("final_logit_softcapping"),
        },
        "generation": {
            "decoding": "greedy",  # or "teacher-forced": decoding() below
            "max_new_tokens": config.max_new_tokens,
            "padding": "left",
            "prompt_template": template,
            "prompt_example_text_only": _safe_prompt(adapter, "{prompt}", False),
            "prompt_example_image": _safe_prompt(adapter, "{prompt}", True),
            **decoding(config, forced),
        },
        "dataset": dataset_section(dataset, config),
        "capture": {
            "hidden_layers": hidden_layers,
            "hidden_dtype": hidden_dtype,
            "skip_layers": skip,
            "capture_prompt": config.capture_prompt,
            "world_size": world_size,
            # provenance, not identity: a run that ran out of memory must be able to resume with a
            # smaller batch (left padding changes results only at fp rounding level)
            "batch_size": config.batch_size,
        },
    }


def _safe_prompt(adapter, prompt: str, has_image: bool) -> str | None:
    try:
        return adapter.build_prompt(prompt, has_image)
    except Exception:  # noqa: BLE001 - a text-only model has no image template
        return None
