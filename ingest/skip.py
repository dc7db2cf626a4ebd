"""Layer skipping for the paper's skip experiments (docs/analyses.md, "Skip experiments").

``skip_layers(adapter, [20, 21, 30])`` removes those decoder layers from the decoder's
``nn.ModuleList``, renumbers every remaining module's ``layer_idx`` (the KV cache is indexed by
it), and shrinks the text config's ``num_hidden_layers`` and ``layer_types`` (per-layer attention
kinds, e.g. Gemma's sliding/full pattern), so the model is simply a shallower model: the KV cache,
masks and ``output_hidden_states`` all see L' = L - len(skipped) layers. Replacing a layer's
forward with the identity instead would break left-padded batches when layer 0 is skipped, and
leave cache slots misnumbered.

Layer indices are 0-based indices of the ORIGINAL model's decoder layers. After skipping, hidden
state l of the new model is the output of the l-th KEPT layer; ``adapter.model_info`` records
``skipped_layers`` and ``n_layers_original`` so the store's manifest says what was run.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from .models.base import Adapter, ModelError


def skip_layers(adapter: Adapter, layers: Iterable[int]) -> list[int]:
    """Remove ``layers`` (0-based, original numbering) from the adapter's decoder, in place."""
    layers = sorted(set(int(i) for i in layers))
    if adapter.skipped_layers:
        raise ModelError("layers were already skipped on this model; load it again to skip a different set")
    n = adapter.n_layers
    bad = [i for i in layers if i < 0 or i >= n]
    if bad:
        raise ModelError(f"--skip-layers {bad} out of range: {adapter.model_id!r} has decoder layers 0..{n - 1}")
    if len(layers) >= n:
        raise ModelError(f"--skip-layers would remove all {n} decoder layers of {adapter.model_id!r}")
    if not layers:
        return []
    keep = [i for i in range(n) if i not in set(layers)]
    decoder = adapter.decoder
    decoder.layers = nn.ModuleList([decoder.layers[i] for i in keep])
    for new_idx, layer in enumerate(decoder.layers):
        for mod in layer.modules():  # attention modules (and some decoder layers) index the KV cache by this
            if isinstance(getattr(mod, "layer_idx", None), int):
                mod.layer_idx = new_idx
    configs = {id(c): c for c in (adapter.text_config, getattr(decoder, "config", None)) if c is not None}
    for cfg in configs.values():
        cfg.num_hidden_layers = len(keep)
        lt = getattr(cfg, "layer_types", None)
        if lt is not None and len(lt) == n:
            cfg.layer_types = [lt[i] for i in keep]
    adapter.skipped_layers = layers
    adapter._unembedding = None  # rebuilt on next use for the new depth
    return layers
