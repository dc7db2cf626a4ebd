"""Layer skipping: a model with layers removed (ingest.skip) against an independent reference.

The reference loads the model afresh, turns the skipped layers into identities (a valid way to skip
for ONE unpadded sample without a cache) and greedy-decodes by re-running the whole sequence at
every step (no KV cache). The skipped model runs the real capture path: a left-padded batch with a
KV cache, including layer 0 skipped (where an identity-forward approach would go wrong).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ingest.capture import CaptureSettings, capture
from ingest.config import IngestError
from ingest.layers import parse_layer_spec
from ingest.models import ModelError, load_adapter
from tests.model_helpers import TEXT_ONLY, tiny_image, tiny_model_dir

PROMPTS = ["Describe this image.", "What is in the picture? Is there a cat on the table next to a guitar?"]
MAX_NEW = 5


def _reference(family, skip, text, image):
    ad = load_adapter(str(tiny_model_dir(family)), dtype="float32")
    for i in skip:
        ad.layers[i].forward = lambda hidden_states, *a, **k: hidden_states
    b = ad.encode([text], None if image is None else [image])
    base = ad.generate_inputs(b)
    gen: list[int] = []
    hidden, logits = [], []
    # hidden state l of the skipped model = output of its l-th kept layer; the last one is the
    # final-normed output (transformers' last hidden_states entry), whichever layers follow as identities
    kept = [0] + [i + 1 for i in range(len(ad.layers)) if i not in skip]
    kept[-1] = len(ad.layers)
    eos = set(ad.eos_token_ids)
    with torch.no_grad():
        for _ in range(MAX_NEW):
            inputs = ad.extend_inputs(base, torch.tensor([gen], dtype=torch.long)) if gen else base
            out = ad.model(**inputs, use_cache=False, output_hidden_states=True)
            hs = getattr(out, "hidden_states", None) or out.language_model_outputs.hidden_states
            hidden.append(torch.stack([hs[k][0, -1] for k in kept]))
            logits.append(out.logits[0, -1])
            nxt = int(out.logits[0, -1].argmax())
            gen.append(nxt)
            if nxt in eos:
                break
    return gen, torch.stack(hidden).numpy(), torch.stack(logits).numpy()


@pytest.mark.parametrize("family,skip", [("llava", [0]), ("llava", [1]), ("gemma3", [0, 2]), ("qwen2_vl", [0]),
                                         ("causal_lm", [0, 1])])
def test_skip_matches_identity_reference(family, skip):
    ad = load_adapter(str(tiny_model_dir(family)), dtype="float32", skip_layers=skip)
    n0 = ad.n_layers + len(skip)
    assert ad.n_layers == n0 - len(skip) == ad.text_config.num_hidden_layers
    assert ad.model_info["skipped_layers"] == skip and ad.model_info["n_layers_original"] == n0
    lt = getattr(ad.text_config, "layer_types", None)
    if lt is not None:
        assert len(lt) == ad.n_layers
    for new_idx, layer in enumerate(ad.layers):
        assert all(m.layer_idx == new_idx for m in layer.modules() if isinstance(getattr(m, "layer_idx", None), int))
    has_image = family not in TEXT_ONLY
    texts = [ad.build_prompt(p, has_image) for p in PROMPTS]
    images = [tiny_image(40, 30, 0), tiny_image(30, 52, 1)] if has_image else None
    caps = capture(ad, texts, images, CaptureSettings(max_new_tokens=MAX_NEW, lens_modes=("final_norm",), top_k=3))
    lengths = {c.n_prompt_tokens for c in caps}
    assert len(lengths) == 2, "the batch must be left padded"
    for i, cap in enumerate(caps):
        gen, ref_h, ref_logits = _reference(family, skip, texts[i], images[i] if images else None)
        assert cap.generated_ids.tolist() == gen
        assert cap.hidden.shape[1] == ad.n_layers + 1
        np.testing.assert_allclose(cap.hidden.astype(np.float32), ref_h, rtol=2e-3, atol=2e-3)
        r = cap.lens["final_norm"]
        np.testing.assert_allclose(r.logit_out[:, -1], ref_logits[np.arange(len(gen)), gen], rtol=1e-4, atol=1e-4)


def test_skip_errors_and_spec():
    assert parse_layer_spec("20-22,30, 5") == [5, 20, 21, 22, 30]
    with pytest.raises(IngestError, match="--skip-layers '3-1': range '3-1' is reversed"):
        parse_layer_spec("3-1")
    with pytest.raises(IngestError, match="'a' is not a layer number"):
        parse_layer_spec("a")
    path = str(tiny_model_dir("causal_lm"))
    with pytest.raises(ModelError, match=r"out of range.*0\.\.2"):
        load_adapter(path, dtype="float32", skip_layers=[3])
    with pytest.raises(ModelError, match="out of range"):
        load_adapter(path, dtype="float32", skip_layers=[-1])
    with pytest.raises(ModelError, match="remove all"):
        load_adapter(path, dtype="float32", skip_layers=[0, 1, 2])
