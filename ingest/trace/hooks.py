"""Forward hooks at the sites causal tracing reads and restores, and the decoder's own inputs.

Sites, numbered like the store's ``layers`` table (L decoder layers):

- ``("hidden", 0)``: the decoder's input (the embeddings), i.e. the input of decoder layer 1;
- ``("hidden", l)``, l = 1..L: the residual stream after decoder layer l;
- ``("mlp", l)`` / ``("attn", l)``, l = 1..L: the output of layer l's MLP / self-attention block
  (before any post-block norm, which is per position and so restored with it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .corrupt import TraceError

KIND_NAMES = ("hidden", "mlp", "attn")


class _Stop(Exception):
    pass


def site_module(ad, kind: str, layer: int) -> tuple[torch.nn.Module, bool]:
    """(module, is_pre_hook) of a site."""
    L = ad.n_layers
    lo = 0 if kind == "hidden" else 1
    if kind not in KIND_NAMES:
        raise TraceError(f"unknown kind {kind!r}: choose from {', '.join(KIND_NAMES)}")
    if not lo <= layer <= L:
        raise TraceError(f"{kind} layer {layer} out of range {lo}..{L}")
    if kind == "hidden":
        return (ad.layers[0], True) if layer == 0 else (ad.layers[layer - 1], False)
    block = ad.layers[layer - 1]
    name = "mlp" if kind == "mlp" else "self_attn"
    mod = getattr(block, name, None)
    if mod is None:
        raise TraceError(f"model {ad.model_id!r}: decoder layer {layer} has no {name!r} block to restore")
    return mod, False


def _get(out):
    return out[0] if isinstance(out, tuple) else out


def _set(out, t):
    return (t, *out[1:]) if isinstance(out, tuple) else t


def add_site_hook(ad, kind: str, layer: int, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """Call ``fn(tensor (B, S, D))`` at a site; a returned tensor replaces the site's value. -> handle."""
    mod, pre = site_module(ad, kind, layer)
    if pre:
        def hook(m, args, kwargs):
            if args:
                t = fn(args[0])
                return ((t, *args[1:]), kwargs) if t is not None else None
            t = fn(kwargs["hidden_states"])
            if t is not None:
                kwargs = dict(kwargs, hidden_states=t)
                return args, kwargs
            return None
        return mod.register_forward_pre_hook(hook, with_kwargs=True)

    def hook(m, args, out):
        t = fn(_get(out))
        return _set(out, t) if t is not None else None
    return mod.register_forward_hook(hook)


def decoder_inputs(ad, inputs: dict) -> dict:
    """Run the model up to its text decoder (the vision tower and the merge of image features) and
    return the keyword arguments it hands the decoder (``inputs_embeds`` included)."""
    captured: dict = {}

    def pre(m, args, kwargs):
        if args:
            raise TraceError(f"model {ad.model_id!r}: its decoder is called with positional arguments; "
                             "kevo trace cannot take over its inputs")
        captured.update(kwargs)
        raise _Stop

    h = ad.decoder.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad():
            ad.model(**inputs, use_cache=False)
    except _Stop:
        pass
    finally:
        h.remove()
    if captured.get("inputs_embeds") is None and captured.get("input_ids") is not None:
        # a plain causal LM hands its decoder token ids: their embeddings are the decoder's input
        with torch.no_grad():
            captured["inputs_embeds"] = ad.model.get_input_embeddings()(captured.pop("input_ids"))
    captured.pop("input_ids", None)
    if captured.get("inputs_embeds") is None:
        raise TraceError(f"model {ad.model_id!r}: its decoder was not handed inputs_embeds")
    return captured
