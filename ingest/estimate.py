"""The disk estimate printed before a run (and by ``--dry-run``): an upper bound from the options alone."""

from __future__ import annotations

from dataclasses import dataclass

from ingest.datasets.base import DatasetItem
from kevo_store.units import human_bytes

# bytes per row of each table after zstd, measured on tiny-model stores (a rough, honest guess)
_BYTES_PER_LAYER_ROW = 28
_BYTES_PER_TOPK_ROW = 6
_BYTES_PER_TOKEN_ROW = 40


@dataclass
class DiskEstimate:
    n_items: int
    tokens: int
    n_layers: int
    hidden_layers: int
    hidden_size: int
    lens_modes: int
    top_k: int
    hidden_bytes: int
    layers_rows: int
    topk_rows: int
    table_bytes: int
    prompt_tokens_guess: int = 0
    """Prompt/image positions per sample assumed with --capture-prompt (0 without)."""

    @property
    def total_bytes(self) -> int:
        return self.hidden_bytes + self.table_bytes

    def format(self) -> str:
        return (
            "disk estimate (upper bound: every sample generates max_new_tokens"
            + (f", plus ~{self.prompt_tokens_guess} prompt/image positions" if self.prompt_tokens_guess else "")
            + f"): {self.n_items} samples, <= {self.tokens:,} tokens\n"
            f"  hidden: {self.tokens:,} tokens x {self.hidden_layers} layers x {self.hidden_size} x 2 B = "
            f"{human_bytes(self.hidden_bytes)}\n"
            f"  layers: {self.layers_rows:,} rows ({self.lens_modes} lens mode(s) x {self.n_layers + 1} layers), "
            f"topk: {self.topk_rows:,} rows (k={self.top_k}); tables ~ {human_bytes(self.table_bytes)}\n"
            f"  total ~ {human_bytes(self.total_bytes)}"
        )


def estimate_disk(n_items: int, tokens_per_item: int, n_layers: int, n_hidden_layers: int, hidden_size: int,
                  n_modes: int, top_k: int) -> DiskEstimate:
    tokens = n_items * tokens_per_item
    layers_rows = tokens * n_modes * (n_layers + 1)
    topk_rows = layers_rows * top_k
    return DiskEstimate(
        n_items=n_items, tokens=tokens, n_layers=n_layers, hidden_layers=n_hidden_layers, hidden_size=hidden_size,
        lens_modes=n_modes, top_k=top_k, hidden_bytes=tokens * n_hidden_layers * hidden_size * 2,
        layers_rows=layers_rows, topk_rows=topk_rows,
        table_bytes=layers_rows * _BYTES_PER_LAYER_ROW + topk_rows * _BYTES_PER_TOPK_ROW
        + tokens * _BYTES_PER_TOKEN_ROW,
    )


def prompt_tokens_guess(items: list[DatasetItem]) -> int:
    """A rough prompt length for the estimate with --capture-prompt (LLaVA-1.5: ~35 text + 576 image tokens)."""
    has_image = any(it.image_path is not None for it in items)
    return 64 + (576 if has_image else 0)
