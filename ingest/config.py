"""``IngestConfig``: everything an ingest run needs besides the dataset (one field per option), checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kevo_store import schema
from kevo_store.errors import KevoError


class IngestError(KevoError):
    """A user error in an ingest run (bad option, unusable model, store mismatch): one clear message."""


@dataclass
class IngestConfig:
    """Everything an ingest run needs besides the dataset. Recorded in the store's manifest."""

    model: str
    """Hub id (resolved through the local Hugging Face cache) or a local model directory."""
    out: str
    """The store directory (created, or resumed if it exists)."""
    revision: str | None = None
    """Model revision for a hub id."""
    dtype: str = "auto"
    """Weights dtype: auto (the checkpoint's) | float32 | float16 | bfloat16."""
    device: str | None = None
    """Device (cpu, cuda, cuda:1); None = cuda:LOCAL_RANK if available, else cpu."""
    device_map: str | None = None
    """A transformers device_map (e.g. 'auto') to spread one model over several GPUs."""
    batch_size: int = 1
    """Samples generated together, left padded."""
    max_new_tokens: int = 256
    """Generation budget per sample (the paper's 256)."""
    lens_modes: tuple[str, ...] = ("final_norm",)
    """Logit-lens modes to store: final_norm and/or raw."""
    top_k: int = 10
    """Top-k tokens stored per (token, lens, layer)."""
    hidden: str = "all"
    """Hidden-state layers to store: 'all', 'none' or a list like '0,8,16-32' (layers after skipping)."""
    hidden_dtype: str = "auto"
    """Hidden-state storage dtype: auto (bfloat16 for a bfloat16 model, else float16) | float16 | bfloat16."""
    hidden_codec: str = "none"
    """Compression of a new store's hidden-state shards: none (activations barely compress) | zstd."""
    dola: bool = False
    """Also compute the paper code's JS variant (layers.js_dola)."""
    capture_prompt: bool = False
    """Also capture prompt and image positions."""
    skip_layers: str | None = None
    """Decoder layers (0-based) removed for a skip experiment, e.g. '20-26,30'."""
    limit: int | None = None
    """Only the first N items of the dataset."""
    dry_run: bool = False
    """Print the disk estimate and stop; write nothing."""
    resume: bool = True
    """Skip items already committed; False refuses a store that already holds samples."""
    progress: bool = True
    """Show a progress bar (rank 0 only)."""
    force: bool = False
    """Start even if the disk estimate exceeds the free space."""
    retry_errors: bool = False
    """Run the samples recorded in the errors table again (each error row leaves with its new commit)."""
    responses: str | None = None
    """Teacher forcing: a JSON/JSONL file of {"id", "response"}; each item's given response is scored
    (one forward pass) instead of generating one (ingest/forced.py). Items without a response are left out."""

    @classmethod
    def from_options(cls, **options: Any) -> IngestConfig:
        """Build from the CLI's ``ingest_options`` keyword arguments (unknown keys are an error)."""
        options = dict(options)
        if "out" in options and options["out"] is not None:
            options["out"] = str(options["out"])
        if "lens_modes" in options:
            options["lens_modes"] = tuple(options["lens_modes"])
        return cls(**options)

    def check(self) -> None:
        """Refuse option values no run can use (before anything is read or loaded)."""
        if self.top_k < 0 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise IngestError("--top-k must be >= 0, --batch-size and --max-new-tokens >= 1")
        bad = [m for m in self.lens_modes if m not in schema.LENS_MODES]
        if bad or not self.lens_modes:
            raise IngestError(f"--lens {','.join(self.lens_modes)}: modes are {', '.join(schema.LENS_MODES)}")
