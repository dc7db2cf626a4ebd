"""Layer options of ``kevo ingest`` (``--skip-layers``, ``--hidden``) checked against the checkpoint."""

from __future__ import annotations

from ingest.config import IngestError
from kevo_store.layerspec import parse_layers


def parse_layer_spec(spec: str, n: int | None = None, option: str = "--skip-layers") -> list[int]:
    """'0,8,16-32' -> sorted unique ints, each checked against 0..n-1 (``option`` names the flag in errors)."""
    return parse_layers(spec, n=n, option=option, error=IngestError)


def hidden_layers(spec: str | None, n_layers: int) -> list[int]:
    """``--hidden``: 'all' (0..L), 'none' or a layer list, for a model with ``n_layers`` decoder layers."""
    s = (spec or "all").strip().lower()
    if s == "all":
        return list(range(n_layers + 1))
    if s == "none":
        return []
    return parse_layer_spec(spec, n_layers + 1, "--hidden")
