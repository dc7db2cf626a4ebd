"""Capture + lens against independent references, for a tiny random model of every family (and again
with the real tokenizer of each family that has one fetched: tests/real_tokenizer_helpers.py).

For each family: one batched, left-padded capture (both lens modes, dola, prompt positions), then
per sample
- the generated tokens equal ``model.generate`` greedy output (a separate, unbatched call),
- a plain forward over the final sequence (prompt + generated, no cache, no padding) with
  ``output_hidden_states`` gives the reference: captured hidden states equal its hidden states; the
  lens at the last layer equals its logits; every layer equals a float64 recomputation
  (norm + head + softcap in float64 from its hidden states) with scipy's JS/KL/entropy.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import log_softmax, softmax
from scipy.stats import entropy

from ingest.capture import CaptureSettings, capture
from ingest.models import load_adapter
from tests.model_helpers import FAMILIES, TEXT_ONLY, tiny_image, tiny_model_dir
from tests.real_tokenizer_helpers import REAL_FAMILIES

PROMPTS = ["Describe this image.", "What is in the picture? Is there a cat on the table next to a guitar?"]


def _reference_forward(ad, text, image, gen_ids):
    """Plain forward over prompt + generated tokens, one sample, no cache."""
    b = ad.encode([text], None if image is None else [image])
    gen = torch.as_tensor(gen_ids, device=ad.device).view(1, -1)
    n_new = gen.shape[1]
    inputs = ad.extend_inputs(ad.generate_inputs(b), gen)
    with torch.no_grad():
        out = ad.model(**inputs, output_hidden_states=True, use_cache=False)
    hs = getattr(out, "hidden_states", None) or out.language_model_outputs.hidden_states
    return b, torch.stack(hs, 0)[:, 0].transpose(0, 1).double(), out.logits[0].double(), n_new


def _lens64(ad, h64, mode):
    """float64 logits for (n, L+1, D) hidden states."""
    norm = copy.deepcopy(ad.final_norm).double()
    W = ad.lm_head.weight.double()
    x = h64.clone()
    if mode == "final_norm":
        x[:, :-1] = norm(x[:, :-1])
    logits = x @ W.T
    if ad.final_logit_softcapping:
        c = ad.final_logit_softcapping
        logits = torch.tanh(logits / c) * c
    return logits.detach().cpu().numpy()


def _check_stats(res, rows, logits, out_ids, top_k, tol, rtol=0.0):
    """Compare LensResult rows with scipy float64 statistics from logits (n, L+1, V)."""
    n, nl, _ = logits.shape
    P = softmax(logits, -1)
    logP = log_softmax(logits, -1)
    for j in range(n):
        r = rows[j]
        o = out_ids[j]
        np.testing.assert_allclose(res.p_out[r], P[j, :, o], atol=tol)
        # relative too: with a real vocabulary (150k-260k pieces) probabilities are far below tol
        np.testing.assert_allclose(res.p_out[r], P[j, :, o], rtol=1e-3, atol=1e-30)
        np.testing.assert_allclose(res.logit_out[r], logits[j, :, o], rtol=1e-4, atol=tol)
        lo = logits[j, :, o : o + 1]
        if rtol:  # a real vocabulary has near-ties: float32 may order a logit within rounding either way
            d = 1e-4 * np.abs(lo) + tol
            assert ((1 + (logits[j] > lo + d).sum(-1) <= res.rank_out[r])
                    & (res.rank_out[r] <= 1 + (logits[j] > lo - d).sum(-1))).all()
        else:
            np.testing.assert_array_equal(res.rank_out[r], 1 + (logits[j] > lo).sum(-1))
        np.testing.assert_array_equal(res.top1_id[r], logits[j].argmax(-1))
        np.testing.assert_allclose(res.top1_prob[r], P[j].max(-1), atol=tol)
        # rtol: float32 sums over a real vocabulary's V terms err relative to the value (entropy ~ log V)
        np.testing.assert_allclose(res.entropy[r], [entropy(P[j, k]) for k in range(nl)], rtol=rtol, atol=tol)
        js_prev = [jensenshannon(P[j, k], P[j, k - 1]) ** 2 for k in range(1, nl)]
        assert np.isnan(res.js_prev[r, 0])
        np.testing.assert_allclose(res.js_prev[r, 1:], js_prev, rtol=rtol, atol=tol)
        assert (res.js_prev[r, 1:] <= np.log(2) + 1e-6).all()
        np.testing.assert_allclose(res.js_final[r], [jensenshannon(P[j, k], P[j, -1]) ** 2 for k in range(nl)],
                                   rtol=rtol, atol=tol)
        np.testing.assert_allclose(res.kl_final[r], [entropy(P[j, -1], P[j, k]) for k in range(nl)], rtol=rtol,
                                   atol=tol)
        # the paper code's variant: 0.5 * (mean_v M (log M - log P_l) + mean_v M (log M - log P_{l-1}))
        M = 0.5 * (P[j, 1:] + P[j, :-1])
        logM = np.log(M)
        dola = 0.5 * ((M * (logM - logP[j, 1:])).mean(-1) + (M * (logM - logP[j, :-1])).mean(-1))
        assert np.isnan(res.js_dola[r, 0])
        np.testing.assert_allclose(res.js_dola[r, 1:], dola, rtol=1e-4, atol=1e-8)
        order = np.argsort(-logits[j], -1, kind="stable")[:, :top_k]
        np.testing.assert_array_equal(res.topk_ids[r], order)
        np.testing.assert_allclose(res.topk_probs[r], np.take_along_axis(P[j], order, -1), atol=tol)


# every family with its trained tokenizer, and those whose real vocabulary is fetched
# (tests/tokenizers_fetch.py) with it, as their hub checkpoints have it
CASES = [(f, "trained") for f in FAMILIES] + [(f, "real") for f in REAL_FAMILIES]


@pytest.mark.parametrize("family,tokenizer", CASES, ids=[f if t == "trained" else f"{f}-real" for f, t in CASES])
def test_capture_matches_references(family, tokenizer):
    ad = load_adapter(str(tiny_model_dir(family, tokenizer=tokenizer)), dtype="float32")
    has_image = family not in TEXT_ONLY
    texts = [ad.build_prompt(p, has_image) for p in PROMPTS]
    images = [tiny_image(40, 30, 0), tiny_image(30, 52, 1)] if has_image else None
    settings = CaptureSettings(max_new_tokens=6, lens_modes=("final_norm", "raw"), top_k=5, dola=True,
                               capture_prompt=True)
    caps = capture(ad, texts, images, settings)
    assert len(caps) == 2
    L = ad.n_layers
    for i, cap in enumerate(caps):
        img = images[i] if images else None
        # 1. generated tokens == model.generate greedy (unbatched, separate call)
        b = ad.encode([texts[i]], None if img is None else [img])
        with torch.no_grad():
            ref = ad.model.generate(**ad.generate_inputs(b), max_new_tokens=6, do_sample=False,
                                    eos_token_id=ad.eos_token_ids, pad_token_id=ad.tokenizer.pad_token_id)
        T = b.input_ids.shape[1]
        ref_new = ref[0, T:].tolist() if ref.shape[1] > T else ref[0].tolist()
        assert cap.generated_ids.tolist() == ref_new[: cap.n_generated]
        assert cap.stop_reason == ("eos" if cap.n_generated < 6 else "max_new_tokens")
        assert cap.n_prompt_tokens == T
        np.testing.assert_array_equal(cap.input_ids, b.input_ids[0].cpu().numpy())

        # 2. the reference forward over the final sequence
        _, H, logits, _ = _reference_forward(ad, texts[i], img, cap.generated_ids)
        assert H.shape[1] == L + 1
        gen_rows = np.nonzero(cap.role == "generated")[0]
        prm_rows = np.nonzero(cap.role != "generated")[0]
        assert len(prm_rows) == T and len(gen_rows) == cap.n_generated
        pos_gen = T - 1 + np.arange(cap.n_generated)
        np.testing.assert_array_equal(cap.position[gen_rows], pos_gen)
        np.testing.assert_array_equal(cap.step[gen_rows], np.arange(cap.n_generated))
        np.testing.assert_array_equal(cap.position[prm_rows], np.arange(T))
        np.testing.assert_array_equal(cap.token_id[prm_rows], cap.input_ids)
        np.testing.assert_array_equal(cap.token_id[gen_rows], cap.generated_ids)

        # 3. hidden states == the forward's hidden states (stored as float16)
        assert cap.hidden.dtype == np.float16 and cap.hidden.shape == (cap.n_tokens, L + 1, ad.hidden_size)
        ref_h = H.cpu().numpy()
        np.testing.assert_allclose(cap.hidden[gen_rows].astype(np.float64), ref_h[pos_gen], rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(cap.hidden[prm_rows].astype(np.float64), ref_h[:T], rtol=2e-3, atol=2e-3)

        # 4. lens at the last layer == the model's own logits, both modes
        own = logits.cpu().numpy()[pos_gen]
        for mode in settings.lens_modes:
            r = cap.lens[mode]
            np.testing.assert_allclose(r.logit_out[gen_rows, L], own[np.arange(len(pos_gen)), cap.generated_ids],
                                       rtol=1e-4, atol=1e-4)
            np.testing.assert_array_equal(r.top1_id[gen_rows, L], own.argmax(-1))
            np.testing.assert_array_equal(r.top1_id[gen_rows, L], cap.generated_ids)  # greedy
            assert (r.rank_out[gen_rows, L] == 1).all()

        # 5. every layer == float64 recomputation from the forward's hidden states + scipy
        for mode in settings.lens_modes:
            lg = _lens64(ad, H[pos_gen], mode)
            rtol = 0.0 if tokenizer == "trained" else 5e-5
            _check_stats(cap.lens[mode], gen_rows, lg, cap.generated_ids, 5, tol=2e-5, rtol=rtol)
            # with a real vocabulary (V up to 262k) the float64 reference is costly: the first and last
            # prompt positions (BOS, template, the text just before generation) stand for the rest
            sel = np.arange(T) if tokenizer == "trained" else np.unique(np.r_[0:3, T - 3:T])
            lgp = _lens64(ad, H[sel], mode)
            _check_stats(cap.lens[mode], prm_rows[sel], lgp, lgp[:, -1].argmax(-1), 5, tol=2e-5, rtol=rtol)
        # 6. raw and final_norm agree at the last layer and differ below it
        a, b_ = cap.lens["raw"], cap.lens["final_norm"]
        np.testing.assert_allclose(a.p_out[:, L], b_.p_out[:, L], atol=1e-6)
        assert not np.allclose(a.p_out[:, :L], b_.p_out[:, :L])
