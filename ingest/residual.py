"""The hidden states capture stores, recorded by forward hooks at only the positions that are kept.

``output_hidden_states=True`` makes transformers keep, for every forward pass of generation, the
hidden states of every layer at every position of that pass: for the prefill, all prompt and image
positions of all layers (L+1 tensors of (batch, prompt length, D)), held until ``generate``
returns, although capture needs only the last position unless prompt positions are captured. So
device memory for hidden states grew with the prompt: (L+1) x prompt length x D values per sample
(33 x 2,000 x 4096 in fp16 is 0.54 GB for a 7B model and 2,000 image tokens).

:func:`generate_recorded` instead runs ``generate`` without ``output_hidden_states`` and records,
with forward hooks on the text decoder, exactly the tensors transformers would have reported,
sliced to the last ``keep_last`` positions of each forward pass and moved to the lens's device
at once:

- index 0: the input of the first decoder layer (the embeddings, as the decoder scales them);
- index l (1..L-1): the output of decoder layer l (the residual stream after it);
- index L: the decoder's ``last_hidden_state``, i.e. after the final norm where the model has one
  (transformers reports that, not the last layer's raw output, as the last hidden state).

That is transformers' own rule (``utils/output_capturing.py``: a forward hook per decoder layer, the
first layer's input prepended, the last entry replaced by ``last_hidden_state``), applied by hooks
that slice before keeping. The values are the same tensors, so the stored bytes do not change:
``tests/test_capture_hooks.py`` ingests every family both ways and compares the stores.

``_OUTPUT_HIDDEN_STATES = True`` switches back to the former path (``output_hidden_states``,
sliced after ``generate`` returns); only that test and ``bench/capture_memory.py`` set it.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .models.base import Adapter

_OUTPUT_HIDDEN_STATES = False
"""True: the former path (transformers' output_hidden_states, all positions kept until generate returns)."""


def generation_config(adapter: Adapter, max_new_tokens: int, hidden_states: bool):
    """A fresh greedy config (nothing from the checkpoint's sampling/penalty defaults)."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=adapter.eos_token_ids,
        pad_token_id=adapter.tokenizer.pad_token_id, output_hidden_states=hidden_states,
        return_dict_in_generate=True, use_cache=True,
    )


def _keep(h: torch.Tensor, keep_last: int | None, device) -> torch.Tensor:
    """The last ``keep_last`` positions of ``h`` (B, T, D) (all if None), on ``device``, as a tensor of
    their own: a slice would keep the whole pass's tensor alive."""
    if keep_last is None or keep_last >= h.shape[1]:
        return h.to(device)
    return h[:, h.shape[1] - keep_last:].to(device, copy=True)


@contextmanager
def record_hidden(adapter: Adapter, keep_last: int | None, device):
    """Hooks on the adapter's text decoder for the duration of the block; yields the list that
    receives, per decoder forward pass, its L+1 hidden states (B, kept positions, D) on ``device``."""
    calls: list[list[torch.Tensor]] = []
    layers = adapter.layers

    def start(mod, args, kwargs):
        calls.append([])

    def first(mod, args, kwargs, out):
        calls[-1].append(_keep(args[0] if args else kwargs["hidden_states"], keep_last, device))
        calls[-1].append(_keep(out[0] if isinstance(out, tuple) else out, keep_last, device))

    def layer(mod, args, out):
        calls[-1].append(_keep(out[0] if isinstance(out, tuple) else out, keep_last, device))

    def last(mod, args, out):
        lhs = getattr(out, "last_hidden_state", None)
        if lhs is None or len(calls[-1]) != len(layers) + 1:
            raise RuntimeError(f"model {adapter.model_id!r}: its decoder's forward pass ran {len(calls[-1]) - 1} of "
                               f"{len(layers)} layers or returned no last_hidden_state; hidden states cannot be "
                               "recorded")
        calls[-1][-1] = _keep(lhs, keep_last, device)

    handles = [adapter.decoder.register_forward_pre_hook(start, with_kwargs=True),
               layers[0].register_forward_hook(first, with_kwargs=True),
               *(m.register_forward_hook(layer) for m in layers[1:]),
               adapter.decoder.register_forward_hook(last)]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def generate_recorded(adapter: Adapter, inputs: dict, max_new_tokens: int, keep_last: int | None, device
                      ) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    """Greedy ``model.generate(**inputs)`` -> (sequences, per forward pass its hidden states 0..L as
    transformers' ``output_hidden_states`` reports them, each (B, last ``keep_last`` positions, D) on
    ``device``). The prefill is pass 0; pass s > 0 is the one that predicted generated token s."""
    model = adapter.model
    if _OUTPUT_HIDDEN_STATES:
        out = model.generate(**inputs, generation_config=generation_config(adapter, max_new_tokens, True))
        return out.sequences, [[_keep(h, keep_last, device) for h in step] for step in out.hidden_states]
    with record_hidden(adapter, keep_last, device) as calls:
        out = model.generate(**inputs, generation_config=generation_config(adapter, max_new_tokens, False))
    return out.sequences, calls
