"""The naive causal-tracing reference: plain forward hooks, one full forward of the whole model per
restored run (vision tower included), no cache, no batching, no shortcut. Used by the tests and by
bench/trace_bench.py to check `kevo trace` number for number.

Deliberately independent of ingest.trace: a swap changes the input ids themselves (not an embedding
row), noise is added to the decoder's inputs_embeds through a pre-hook of the decoder, and the score
is the model's own logits at the last position.
"""

from __future__ import annotations

import torch


def _site(ad, kind, layer):
    if kind == "hidden":
        return (ad.layers[0], True) if layer == 0 else (ad.layers[layer - 1], False)
    blk = ad.layers[layer - 1]
    return (blk.mlp if kind == "mlp" else blk.self_attn), False


def _hook(ad, kind, layer, fn):
    mod, pre = _site(ad, kind, layer)
    if pre:
        return mod.register_forward_pre_hook(lambda m, a, k: ((fn(a[0]), *a[1:]), k), with_kwargs=True)

    def post(m, a, out):
        if isinstance(out, tuple):
            return (fn(out[0]), *out[1:])
        return fn(out)
    return mod.register_forward_hook(post)


def _sites(ad):
    L = ad.n_layers
    return [("hidden", ly) for ly in range(L + 1)] + [(k, ly) for k in ("mlp", "attn") for ly in range(1, L + 1)]


class NaiveTracer:
    """corruption: ('swap', replacement_id) | ('noise', K, sigma, noise (n_draws, n_pos, D)) applied at
    ``positions``; ``inputs``: the unpadded model inputs of one sample."""

    def __init__(self, ad, inputs, corrupted_positions, corruption):
        self.ad, self.inputs, self.positions, self.corruption = ad, dict(inputs), list(corrupted_positions), corruption
        self.clean = {}
        hs = [_hook(ad, k, ly, self._rec(k, ly)) for k, ly in _sites(ad)]
        try:
            p = self._probs(self.inputs)
        finally:
            for h in hs:
                h.remove()
        self.answer = int(p.argmax())
        self.p_clean = float(p[self.answer])
        self.p_corrupt = self.restored([])

    def _rec(self, k, ly):
        def fn(t):
            self.clean[(k, ly)] = t[0].detach().clone()
            return t
        return fn

    def _probs(self, inputs, extra_hooks=()):
        with torch.no_grad():
            logits = self.ad.model(**inputs, use_cache=False).logits[0, -1].float()
        return torch.softmax(logits, -1)

    def _corrupted_runs(self):
        """[(inputs, hooks)] per draw."""
        c = self.corruption
        if c[0] == "swap":
            ids = self.inputs["input_ids"].clone()
            ids[0, self.positions] = c[1]
            return [(dict(self.inputs, input_ids=ids), [])]
        _, k, sigma, noise = c
        runs = []
        for d in range(noise.shape[0]):
            def pre(m, a, kw, d=d):
                e = kw["inputs_embeds"].clone()
                e[0, self.positions] = (e[0, self.positions].float() + k * sigma * noise[d]).to(e.dtype)
                return a, dict(kw, inputs_embeds=e)
            runs.append((self.inputs, [("decoder", pre)]))
        return runs

    def restored(self, restorations):
        """restorations: [(kind, layers, positions)]: p(answer) averaged over draws."""
        ps = []
        for inputs, pre_hooks in self._corrupted_runs():
            hs = [self.ad.decoder.register_forward_pre_hook(fn, with_kwargs=True) for _, fn in pre_hooks]
            for kind, layers, pos in restorations:
                for ly in layers:
                    clean = self.clean[(kind, ly)]

                    def fn(t, clean=clean, pos=tuple(pos)):
                        t = t.clone()
                        t[0, list(pos)] = clean[list(pos)].to(t.dtype)
                        return t
                    hs.append(_hook(self.ad, kind, ly, fn))
            try:
                ps.append(float(self._probs(inputs)[self.answer]))
            finally:
                for h in hs:
                    h.remove()
        return sum(ps) / len(ps)
