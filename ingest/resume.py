"""Whether this run may continue a store: checked from fingerprints, before the model loads.

A store holds the samples of one computation. Resuming it with other weights (another model, or
the same path retrained), another prompt, task or template, an edited annotation file, or other
lens/generation/capture settings would mix two runs under a manifest that describes only the last.
:func:`check_resume` compares what this run will compute (``ingest.meta.planned_meta``: the weights'
fingerprint, the dataset's fingerprint and settings, the options) with the store and every rank
part of it, under the one policy of ``kevo_store.manifest.Manifest.identity_diff`` (paths, the
model's name, batch size and process count are provenance and may change). The writer applies
the same policy again once the model is loaded, for what only the loaded model can say (its
family, template and dimensions).
"""

from __future__ import annotations

from pathlib import Path

from ingest.config import IngestError
from ingest.distributed import parts_dir
from kevo_store.manifest import Manifest


def stores_of(out: str) -> list[str]:
    """The store and the rank parts of an interrupted multi-process run of it."""
    pdir = Path(parts_dir(out))
    parts = sorted(str(d) for d in pdir.iterdir() if d.is_dir()) if pdir.is_dir() else []
    return [out, *parts]


def check_resume(out: str, meta: dict) -> None:
    """Refuse (IngestError naming each difference) when ``out`` or a part of it was made by another run."""
    for path in stores_of(out):
        m = Manifest.peek(path)
        if m is None:
            continue
        if m.partial:
            raise IngestError(f"store {path} is a partial pull ({m.partial_summary()}); it is read-only: "
                              "write to a new --out")
        diff = m.identity_diff(meta, same_dataset=True)
        if diff:
            shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
            raise IngestError(f"store {path} was made by another run: {shown} (the store's value first); "
                              "write to a new --out (or use the same model, data and settings to resume)")
