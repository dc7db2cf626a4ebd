"""Attention contributions: how much each source token's value moves a target token through one
layer's self-attention, the "transfer" half of the multimodal causal-tracing study.

For layer l, target t and source s (Yuksekgonul et al. 2023):

    contribution_l(t <- s) = || sum_h A^{l,h}_{t,s} x_s W_V^h W_O^h ||

with A the attention probabilities, x_s the attention block's input at s (after its input norm),
W_V^h / W_O^h head h's value and output projections. The sum over sources of these vectors is the
attention block's output at t (minus the output projection's bias, which no source owns); the tests
check exactly that. Grouped-query attention shares one value head among several query heads.
"""

from __future__ import annotations

import torch

from .hooks import decoder_inputs


def _expand_kv(v: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(T, n_kv, d) -> (T, n_heads, d): each value head serves n_heads // n_kv query heads."""
    rep = n_heads // v.shape[1]
    return v.repeat_interleave(rep, dim=1) if rep > 1 else v


@torch.no_grad()
def contribution_vectors(attn_module, x: torch.Tensor, probs: torch.Tensor, target: int,
                         sources: torch.Tensor) -> torch.Tensor:
    """(n_sources, D) vectors sum_h A_{t,s} x_s W_V^h W_O^h for one layer (x: (T, D) block input,
    probs: (H, T, T) attention probabilities)."""
    v_proj, o_proj = attn_module.v_proj, attn_module.o_proj
    H = probs.shape[0]
    d = o_proj.weight.shape[1] // H
    xs = x[sources]
    v = v_proj(xs).float().reshape(len(sources), -1, d)  # (S, n_kv, d), the value bias included
    v = _expand_kv(v, H)  # (S, H, d)
    a = probs[:, target, sources].float().T  # (S, H)
    weighted = (a[:, :, None] * v).reshape(len(sources), H * d)
    return weighted @ o_proj.weight.float().T  # (S, D), no output bias


def attention_contributions(ad, inputs: dict, targets: dict[str, tuple[int, list[int]]],
                            groups: dict[str, tuple[int, list[int]]] | None = None) -> dict:
    """{name: (n_layers, n_sources) norms} for one unpadded sample.

    ``targets``: name -> (target position, source positions), one norm per source; ``groups``: name ->
    (target position, source positions), the norm of the group's summed contribution (n_layers, 1).
    One clean forward with eager attention (the probabilities are its output), the block inputs
    recorded by pre-hooks."""
    kw = decoder_inputs(ad, inputs)
    L = ad.n_layers
    xs: dict[int, torch.Tensor] = {}
    probs: dict[int, torch.Tensor] = {}
    hs = []
    for i in range(L):
        mod = ad.layers[i].self_attn

        def pre(m, a, k, i=i):
            xs[i] = (a[0] if a else k["hidden_states"])[0].detach()

        def post(m, a, out, i=i):
            probs[i] = out[1][0].detach()
        hs.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
        hs.append(mod.register_forward_hook(post))
    # the probabilities are the eager attention's output; only the text decoder is switched (a vision
    # tower may not support every implementation) and switched back
    previous = ad.decoder.config._attn_implementation
    ad.decoder.set_attn_implementation("eager")
    try:
        call = {k: v for k, v in kw.items() if k not in ("past_key_values", "use_cache", "return_dict")}
        with torch.no_grad():
            ad.decoder(**call, use_cache=False, output_attentions=True, return_dict=True)
            out = {}
            for grouped, spec in ((False, targets), (True, groups or {})):
                for name, (t, src) in spec.items():
                    src_t = torch.as_tensor(src, dtype=torch.long, device=kw["inputs_embeds"].device)
                    rows = []
                    for i in range(L):
                        vec = contribution_vectors(ad.layers[i].self_attn, xs[i], probs[i], t, src_t)
                        rows.append((vec.sum(0, keepdim=True) if grouped else vec).norm(dim=-1).cpu())
                    out[name] = torch.stack(rows).numpy()
    finally:
        ad.decoder.set_attn_implementation(previous)
        for h in hs:
            h.remove()
    return out
