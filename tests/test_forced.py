"""Teacher-forced scoring (ingest/forced.py) against greedy generation and a float64 reference.

- For every family: forcing the model's own greedy tokens gives the rows generation gave: every
  discrete column identical, and the floats equal up to the rounding that separates a KV-cache
  decode step from one forward over the whole sequence (over 99% of the float16 hidden-state bytes
  identical, the rest a few units in the last place apart; lens floats within 1e-4).
- Forcing other tokens gives the lens of the forced tokens: a plain forward over prompt + response
  (no cache, no padding) recomputed in float64, and greedy_match = (the forward's argmax == token).
"""

from __future__ import annotations

import numpy as np
import pytest

from ingest.capture import CaptureSettings, capture
from ingest.forced import capture_forced
from ingest.models import load_adapter
from tests.model_helpers import FAMILIES, TEXT_ONLY, tiny_image, tiny_model_dir
from tests.test_capture_families import PROMPTS, _check_stats, _lens64, _reference_forward

SETTINGS = CaptureSettings(max_new_tokens=6, lens_modes=("final_norm", "raw"), top_k=5, dola=True,
                           capture_prompt=True)
LENS_FLOATS = ("p_out", "logit_out", "top1_prob", "entropy", "js_prev", "js_final", "kl_final", "topk_probs")
LENS_EXACT = ("rank_out", "top1_id", "topk_ids")


def _inputs(family):
    ad = load_adapter(str(tiny_model_dir(family)), dtype="float32")
    has_image = family not in TEXT_ONLY
    texts = [ad.build_prompt(p, has_image) for p in PROMPTS]
    images = [tiny_image(40, 30, 0), tiny_image(30, 52, 1)] if has_image else None
    return ad, texts, images


@pytest.mark.parametrize("family", FAMILIES)
def test_forced_greedy_output_equals_generated_rows(family):
    ad, texts, images = _inputs(family)
    gen = capture(ad, texts, images, SETTINGS)
    forced = capture_forced(ad, texts, images, [c.generated_ids.tolist() for c in gen], SETTINGS)
    for g, f in zip(gen, forced):
        assert f.mode == "forced" and g.mode == "generated"
        for name in ("prompt_text", "response", "stop_reason", "n_prompt_tokens", "hidden_layers"):
            assert getattr(f, name) == getattr(g, name), name
        for name in ("input_ids", "generated_ids", "step", "position", "role", "token_id", "patch_row", "patch_col"):
            np.testing.assert_array_equal(getattr(f, name), getattr(g, name), err_msg=name)
        is_gen = g.role == "generated"
        assert f.greedy_match[is_gen].all()  # the forced tokens are the greedy ones
        assert f.hidden.dtype == g.hidden.dtype and f.hidden.shape == g.hidden.shape
        # float16 bytes: nearly all identical; the rest a rounding step apart (fp32 cache vs full forward)
        assert (f.hidden.view(np.uint16) == g.hidden.view(np.uint16)).mean() > 0.99
        np.testing.assert_allclose(f.hidden.astype(np.float32), g.hidden.astype(np.float32), rtol=2e-3, atol=1e-4)
        for mode in SETTINGS.lens_modes:
            a, b = g.lens[mode], f.lens[mode]
            for k in LENS_EXACT:
                np.testing.assert_array_equal(getattr(b, k), getattr(a, k), err_msg=f"{mode}.{k}")
            for k in LENS_FLOATS + ("js_dola",):
                np.testing.assert_allclose(getattr(b, k), getattr(a, k), rtol=1e-4, atol=5e-5, err_msg=f"{mode}.{k}")
        # the rows the store gets: same columns, same discrete values
        tg, tf = g.table_columns(0), f.table_columns(0)
        for table in ("tokens", "layers", "topk"):
            assert tg[table].keys() == tf[table].keys()
            for k, v in tg[table].items():
                if np.asarray(v).dtype.kind == "f":
                    np.testing.assert_allclose(tf[table][k], v, rtol=1e-4, atol=5e-5, err_msg=f"{table}.{k}")
                else:
                    np.testing.assert_array_equal(tf[table][k], v, err_msg=f"{table}.{k}")


def _other_tokens(ad, seed):
    """Five random ordinary (non-special) tokens: not what the model would generate."""
    special = set(ad.tokenizer.all_special_ids) | ad.image_token_ids
    pool = [i for i in range(min(ad.vocab_size, len(ad.tokenizer))) if i not in special]
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.choice(pool, size=5)]


@pytest.mark.parametrize("family", FAMILIES)
def test_forced_other_response_gives_the_lens_of_the_forced_tokens(family):
    ad, texts, images = _inputs(family)
    responses = [_other_tokens(ad, i) for i in range(len(texts))]
    caps = capture_forced(ad, texts, images, responses, SETTINGS)
    L = ad.n_layers
    for i, cap in enumerate(caps):
        forced = np.asarray(responses[i])
        np.testing.assert_array_equal(cap.generated_ids, forced)
        assert cap.stop_reason == "max_new_tokens" or forced[-1] in ad.eos_token_ids
        img = images[i] if images else None
        _, H, logits, _ = _reference_forward(ad, texts[i], img, forced)
        T = cap.n_prompt_tokens
        pos = T - 1 + np.arange(len(forced))
        rows = np.nonzero(cap.role == "generated")[0]
        np.testing.assert_array_equal(cap.token_id[rows], forced)
        np.testing.assert_allclose(cap.hidden[rows].astype(np.float64), H.cpu().numpy()[pos], rtol=2e-3, atol=2e-3)
        own = logits.cpu().numpy()[pos]
        np.testing.assert_array_equal(cap.greedy_match[rows], own.argmax(-1) == forced)
        assert not cap.greedy_match[rows].all()  # random tokens are not all the greedy ones
        for mode in SETTINGS.lens_modes:
            lg = _lens64(ad, H[pos], mode)
            _check_stats(cap.lens[mode], rows, lg, forced, 5, tol=2e-5)
            # the last layer is the model's own distribution over the forced token
            np.testing.assert_allclose(cap.lens[mode].logit_out[rows, L], own[np.arange(len(pos)), forced],
                                       rtol=1e-4, atol=1e-4)


def test_forced_batch_of_unequal_lengths_equals_one_by_one():
    """Left padding added for the shorter response changes nothing (ids, positions; floats to rounding)."""
    ad, texts, images = _inputs("llava")
    responses = [[5, 6, 7, 8, 9], [10, 11]]
    together = capture_forced(ad, texts, images, responses, SETTINGS)
    for i, r in enumerate(responses):
        alone = capture_forced(ad, [texts[i]], [images[i]], [r], SETTINGS)[0]
        np.testing.assert_array_equal(together[i].token_id, alone.token_id)
        np.testing.assert_array_equal(together[i].position, alone.position)
        np.testing.assert_array_equal(together[i].lens["final_norm"].top1_id, alone.lens["final_norm"].top1_id)
        np.testing.assert_allclose(together[i].lens["final_norm"].p_out, alone.lens["final_norm"].p_out, atol=1e-5)
        np.testing.assert_allclose(together[i].hidden.astype(np.float32), alone.hidden.astype(np.float32),
                                   rtol=2e-3, atol=1e-4)


def test_forced_cut_at_eos_and_max_new_tokens():
    ad, texts, images = _inputs("llava")
    eos = ad.eos_token_ids[0]
    caps = capture_forced(ad, texts, images, [[5, 6, eos, 7, 8], list(range(5, 15))], SETTINGS)
    assert caps[0].generated_ids.tolist() == [5, 6, eos] and caps[0].stop_reason == "eos"
    assert caps[1].n_generated == SETTINGS.max_new_tokens and caps[1].stop_reason == "max_new_tokens"
