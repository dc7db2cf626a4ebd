"""The paper's released analysis method, reimplemented from its description (the baseline of benchmark 2).

What the released scripts (heatmap / token-probability scripts of Wang et al., CVPR 2025) do, per
their description: generate with ``output_hidden_states``; then for every generation step and for
every layer, call ``lm_head`` on that layer's hidden state (no final norm: the "raw" lens; the last
layer's state is already normed by the model) and keep the last position. As released, the JS
script applies ``lm_head`` to the whole hidden-state tensor of the step, which at step 0 (the
prefill) is every prompt position, image tokens included (``as_released=True``); the tightened
variant unembeds the last position only (``as_released=False``). Then it keeps the whole vocabulary
distribution of every layer, and compute the layer-to-layer divergence in a Python loop over
consecutive layer pairs, in float64, with DoLa's JS variant
``0.5 * (kl_div(log P_l, M).mean(-1) + kl_div(log P_{l+1}, M).mean(-1))``, M = (P_l + P_{l+1}) / 2.
Candidate probabilities are read one ``.item()`` at a time.

Here the same loops also produce what kevo stores for the same lens (p_out, top-1, top-k and the
true JS) so that the two can be compared value by value: this is both the speed baseline and the
correctness check (tests/test_bench_smoke.py runs it on a tiny model).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def paper_lens(lm_head, hidden_states, new_ids: torch.Tensor, n_generated: list[int], top_k: int = 10,
               as_released: bool = False) -> dict:
    """Per-token, per-layer lens values computed the paper's way.

    hidden_states: ``generate(...).hidden_states`` (per step: a tuple of L+1 tensors (B, T_step, D));
    new_ids (B, S): the generated ids; n_generated[b]: tokens of sample b to analyse.
    Returns numpy arrays over the tokens in (sample, step) order: p_out, top1_id (n, L+1),
    topk_ids/topk_probs (n, L+1, k), js_dola and js_true (n, L+1; NaN at layer 0).
    """
    rows = {k: [] for k in ("p_out", "top1_id", "topk_ids", "topk_probs", "js_dola", "js_true")}
    B = new_ids.shape[0]
    for b in range(B):
        for j in range(n_generated[b]):
            layers = hidden_states[j]
            # one lm_head call per layer; the full distributions are kept
            if as_released:  # the whole step tensor (every prompt position at step 0), then the last position
                logits = [lm_head(h[b : b + 1])[:, -1, :] for h in layers]
            else:
                logits = [lm_head(h[b : b + 1, -1, :]) for h in layers]
            probs = [F.softmax(x.float(), dim=-1) for x in logits]
            out = int(new_ids[b, j])
            p_out, top1, tk_i, tk_p = [], [], [], []
            for p in probs:
                p_out.append(p[0, out].item())
                v, i = torch.topk(p[0], top_k)
                top1.append(int(i[0]))
                tk_i.append(i.tolist())
                tk_p.append(v.tolist())
            js_dola, js_true = [math.nan], [math.nan]
            for li in range(len(logits) - 1):
                a = logits[li].to(torch.float64)
                c = logits[li + 1].to(torch.float64)
                pa, pc = F.softmax(a, dim=-1), F.softmax(c, dim=-1)
                m = 0.5 * (pa + pc)
                la, lc = F.log_softmax(a, dim=-1), F.log_softmax(c, dim=-1)
                kl1 = F.kl_div(la, m, reduction="none").mean(-1)
                kl2 = F.kl_div(lc, m, reduction="none").mean(-1)
                js_dola.append((0.5 * (kl1 + kl2)).mean().item())
                # the true JS (sum over the vocabulary, KL from each distribution to the mixture)
                lm = torch.log(m)
                js_true.append((0.5 * (pa * (la - lm)).sum(-1) + 0.5 * (pc * (lc - lm)).sum(-1)).item())
            rows["p_out"].append(p_out)
            rows["top1_id"].append(top1)
            rows["topk_ids"].append(tk_i)
            rows["topk_probs"].append(tk_p)
            rows["js_dola"].append(js_dola)
            rows["js_true"].append(js_true)
    return {k: np.asarray(v) for k, v in rows.items()}


def compare(paper: dict, kevo_lens, atol_js: float = 2e-5, logit_error: float = 0.0) -> dict:
    """How far kevo's lens (an ingest.lens.LensResult, raw mode, dola on) is from the paper's loops.

    Returns the largest differences and ``agree`` (every check within tolerance). JS values are
    compared with an absolute tolerance (kevo computes in float32, the paper's code in float64);
    top-k ids must match where the probabilities are not tied. Probabilities agree within
    max(1e-5, ``logit_error``): both sides softmax float32 logits, a softmax moves no probability by
    more than half the largest change of its logits, so two float32 computations of the same logits,
    each off by at most ``logit_error`` (float32 against float64, measured on these hidden states),
    differ by at most that. The raw lens (no final norm) of a model whose residual stream grows
    large has logits in the hundreds, where float32 alone is off by ~1e-4.
    """
    p_out_diff = float(np.max(np.abs(paper["p_out"] - kevo_lens.p_out)))
    js_true_diff = float(np.nanmax(np.abs(paper["js_true"] - kevo_lens.js_prev)))
    js_dola_diff = float(np.nanmax(np.abs(paper["js_dola"] - kevo_lens.js_dola)))
    js_dola_scale = float(np.nanmax(np.abs(paper["js_dola"])))
    prob_diff = float(np.max(np.abs(paper["topk_probs"] - kevo_lens.topk_probs)))
    # an id mismatch is only a disagreement if the two candidates' probabilities differ beyond float32
    ids_differ = paper["topk_ids"] != kevo_lens.topk_ids
    tie = np.abs(paper["topk_probs"] - kevo_lens.topk_probs) < 1e-6
    id_mismatch = int(np.sum(ids_differ & ~tie))
    n_values = int(np.isfinite(paper["js_true"]).sum())
    # js_dola is (true JS) / V in size: compare it relative to its own scale
    p_tol = max(1e-5, logit_error)
    agree = (p_out_diff < p_tol and prob_diff < p_tol and js_true_diff < atol_js
             and js_dola_diff <= 1e-4 * js_dola_scale + 1e-12 and id_mismatch == 0)
    return {"agree": bool(agree), "tokens": int(paper["p_out"].shape[0]), "js_values": n_values,
            "max_abs_diff_p_out": p_out_diff, "max_abs_diff_topk_prob": prob_diff,
            "max_abs_diff_js_true_vs_js_prev": js_true_diff, "max_abs_diff_js_dola": js_dola_diff,
            "max_js_dola": js_dola_scale, "topk_id_mismatches": id_mismatch, "p_tolerance": p_tol,
            "logit_fp32_error": logit_error}


@torch.no_grad()
def logit_fp32_error(unembedding_weight: torch.Tensor, hidden: torch.Tensor) -> float:
    """The largest |float32 - float64| of the raw-lens logits W h over ``hidden`` (n, L+1, D): how far
    float32 alone puts a logit, the scale against which two float32 lens computations are compared."""
    w32 = unembedding_weight.float()
    w64 = w32.double()
    err = 0.0
    for layer in range(hidden.shape[1]):
        h = hidden[:, layer].float()
        err = max(err, float(((h @ w32.T).double() - h.double() @ w64.T).abs().max()))
    return err
