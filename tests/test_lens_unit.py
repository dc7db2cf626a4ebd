"""Lens and capture settings: chunking, storage dtypes, hidden-layer selection, hand-checked values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ingest.capture import CaptureSettings, capture
from ingest.lens import Unembedding, compute_lens
from ingest.models import load_adapter
from tests.model_helpers import tiny_image, tiny_model_dir


@pytest.fixture(scope="module")
def llava():
    return load_adapter(str(tiny_model_dir("llava")), dtype="float32")


def test_chunking_does_not_change_results(llava):
    u = Unembedding(llava)
    h = torch.randn(37, llava.n_layers + 1, llava.hidden_size, generator=torch.Generator().manual_seed(0))
    out = torch.randint(0, llava.vocab_size, (37,))
    big = compute_lens(u, h, out, mode="raw", top_k=4, dola=True)
    small = compute_lens(u, h, out, mode="raw", top_k=4, dola=True, chunk_bytes=1)  # one token per chunk
    for k, v in big.__dict__.items():
        if k != "mode":
            np.testing.assert_allclose(v, getattr(small, k), rtol=1e-6, atol=1e-7, err_msg=k)


def test_identical_layers_give_zero_divergence_and_hand_values(llava):
    u = Unembedding(llava)
    h = torch.randn(1, 1, llava.hidden_size).repeat(1, llava.n_layers + 1, 1)
    r = compute_lens(u, h, torch.tensor([5]), mode="raw", top_k=2, dola=True)
    assert np.isnan(r.js_prev[0, 0]) and np.isnan(r.js_dola[0, 0])
    np.testing.assert_allclose(r.js_prev[0, 1:], 0, atol=1e-6)
    np.testing.assert_allclose(r.js_final[0], 0, atol=1e-6)
    np.testing.assert_allclose(r.kl_final[0], 0, atol=1e-6)
    # a hand-made head: 2 tokens with logits (0, ln 3) -> p = (1/4, 3/4)
    u.weight.data.zero_()
    u.weight.data[1, 0] = math.log(3.0)
    u.weight.data[2:, 1] = -1e4  # with h[1] = 1, all other tokens get ~0 probability
    h = torch.zeros(1, 2, llava.hidden_size)
    h[0, :, 0] = 1.0
    h[0, :, 1] = 1.0
    h[0, 0, 0] = 0.0  # layer 0: logits (0, 0) -> p = (1/2, 1/2)
    r = compute_lens(u, h, torch.tensor([0]), mode="raw", top_k=2)
    np.testing.assert_allclose(r.p_out[0], [0.5, 0.25], atol=1e-6)
    np.testing.assert_array_equal(r.rank_out[0], [1, 2])  # tie at layer 0: both rank 1
    np.testing.assert_allclose(r.entropy[0, 1], -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), atol=1e-6)
    m = np.array([0.375, 0.625])
    js = 0.5 * (0.5 * np.log(0.5 / m)).sum() + 0.5 * (np.array([0.25, 0.75]) * np.log([0.25 / m[0], 0.75 / m[1]])).sum()
    np.testing.assert_allclose(r.js_prev[0, 1], js, atol=1e-6)
    np.testing.assert_allclose(r.kl_final[0, 0], 0.25 * math.log(0.5) + 0.75 * math.log(1.5), atol=1e-6)


def test_bf16_and_hidden_layer_subset(llava):
    texts = [llava.build_prompt("Describe this image.", True)]
    imgs = [tiny_image()]
    a = capture(llava, texts, imgs, CaptureSettings(max_new_tokens=3, hidden_layers=(0, 3), hidden_dtype="bfloat16",
                                                    top_k=0))[0]
    b = capture(llava, texts, imgs, CaptureSettings(max_new_tokens=3))[0]
    assert a.hidden.dtype == np.uint16 and a.hidden.shape == (a.n_tokens, 2, llava.hidden_size)
    assert a.hidden_layers == [0, 3]
    as_f32 = (a.hidden.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_allclose(as_f32, b.hidden[:, [0, 3]].astype(np.float32), rtol=1e-2, atol=1e-2)
    assert a.lens["final_norm"].topk_ids.shape == (a.n_tokens, llava.n_layers + 1, 0)
    none = capture(llava, texts, imgs, CaptureSettings(max_new_tokens=2, hidden_layers="none"))[0]
    assert none.hidden is None and none.hidden_layers == []
    cols = b.table_columns(uid_offset=10)
    n, nl, k = b.n_tokens, llava.n_layers + 1, 10
    assert cols["tokens"]["token_uid"].tolist() == list(range(10, 10 + n))
    assert len(cols["layers"]["p_out"]) == n * nl and len(cols["topk"]["rank"]) == n * nl * k
    assert cols["topk"]["rank"][:k].tolist() == list(range(1, k + 1))


def test_settings_validation():
    with pytest.raises(ValueError, match="lens modes"):
        CaptureSettings(lens_modes=("logit",))
    with pytest.raises(ValueError, match="max_new_tokens"):
        CaptureSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="hidden_layers"):
        CaptureSettings(hidden_layers="some")
    with pytest.raises(ValueError, match=r"out of range.*0\.\.3"):
        CaptureSettings(hidden_layers=(5,)).resolve_hidden_layers(3)


def test_bfloat16_model():
    """A bf16 model: the fp32 lens of its bf16 hidden states reproduces its own logits to bf16 precision."""
    ad = load_adapter(str(tiny_model_dir("llava")), dtype="bfloat16")
    assert ad.model_info["dtype"] == "bfloat16"
    texts = [ad.build_prompt("Describe this image.", True)]
    b = ad.encode(texts, [tiny_image()])
    cap = capture(ad, texts, [tiny_image()], CaptureSettings(max_new_tokens=4, hidden_dtype="bfloat16"))[0]
    with torch.no_grad():
        ref = ad.model.generate(**ad.generate_inputs(b), max_new_tokens=4, do_sample=False,
                                eos_token_id=ad.eos_token_ids, output_logits=True, return_dict_in_generate=True)
    T = b.input_ids.shape[1]
    assert cap.generated_ids.tolist() == ref.sequences[0, T:].tolist()[: cap.n_generated]
    own = torch.stack(ref.logits)[: cap.n_generated, 0].float().numpy()
    got = cap.lens["final_norm"].logit_out[:, -1]
    np.testing.assert_allclose(got, own[np.arange(cap.n_generated), cap.generated_ids], rtol=2e-2, atol=2e-2)
