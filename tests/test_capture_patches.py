"""Image tokens with --capture-prompt: role 'image' and their position in the vision grid."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.capture import CaptureSettings, capture
from ingest.models import load_adapter
from tests.model_helpers import tiny_image, tiny_model_dir


def _grid(h, w):
    return [(r, c) for r in range(h) for c in range(w)]


# family -> (number of image tokens, grid of the tokens that have one, where they sit: 'first'|'last'|'all')
EXPECTED = {
    "llava": (4, _grid(2, 2), "all"),          # CLIP 28px / 14px patches, CLS dropped
    "paligemma": (9, _grid(3, 3), "all"),      # SigLIP 42px / 14px
    "gemma3": (4, _grid(2, 2), "all"),         # 4x4 patches pooled to 2x2
    "smolvlm": (4, _grid(2, 2), "all"),        # 4x4 patches, pixel shuffle by 2
    "instructblip": (4, [], "all"),            # Q-Former queries: no grid
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_image_token_grid(family):
    ad = load_adapter(str(tiny_model_dir(family)), dtype="float32")
    cap = capture(ad, [ad.build_prompt("Describe this image.", True)], [tiny_image(40, 30)],
                  CaptureSettings(max_new_tokens=1, capture_prompt=True))[0]
    n, grid, _ = EXPECTED[family]
    img = cap.role == "image"
    assert img.sum() == n
    assert set(np.unique(cap.token_id[img]).tolist()) <= ad.image_token_ids
    got = [(int(r), int(c)) for r, c in zip(cap.patch_row[img], cap.patch_col[img]) if r >= 0]
    assert got == grid
    assert (cap.patch_row[~img] == -1).all() and (cap.patch_col[~img] == -1).all()
    assert (cap.step[cap.role != "generated"] == -1).all()


def test_qwen_grid_follows_image_grid_thw():
    ad = load_adapter(str(tiny_model_dir("qwen2_vl")), dtype="float32")
    text = ad.build_prompt("Describe this image.", True)
    img = tiny_image(90, 60)
    batch = ad.encode([text], [img])
    t, h, w = (int(x) for x in batch.inputs["image_grid_thw"][0])
    cap = capture(ad, [text], [img], CaptureSettings(max_new_tokens=1, capture_prompt=True))[0]
    m = cap.role == "image"
    assert m.sum() == t * h * w // 4 and (h, w) != (4, 4)
    assert list(zip(cap.patch_row[m].tolist(), cap.patch_col[m].tolist())) == _grid(h // 2, w // 2) * t
    is_image = (batch.input_ids[0] == ad.model.config.image_token_id).cpu().numpy()
    assert (batch.inputs["mm_token_type_ids"][0].bool().cpu().numpy() == is_image).all()


def test_tiled_images_grid_only_on_global_image():
    # idefics3 splits into tiles + a global image (4 tokens each); llava_next: base grid then tiles
    for family, base_first in (("idefics3", False), ("llava_next", True)):
        ad = load_adapter(str(tiny_model_dir(family)), dtype="float32")
        cap = capture(ad, [ad.build_prompt("Describe this image.", True)], [tiny_image(100, 50)],
                      CaptureSettings(max_new_tokens=1, capture_prompt=True))[0]
        m = cap.role == "image"
        rows, cols = cap.patch_row[m], cap.patch_col[m]
        assert m.sum() > 4, family  # tiles exist
        sel = slice(0, 4) if base_first else slice(-4, None)
        assert list(zip(rows[sel].tolist(), cols[sel].tolist())) == _grid(2, 2), family
        rest = np.ones(m.sum(), bool)
        rest[sel] = False
        assert (rows[rest] == -1).all(), family


def test_qwen_mm_token_type_ids_drive_mrope():
    """The adapter always passes mm_token_type_ids (older transformers silently fell back to 1-D
    positions without them; this one refuses), and capture's logits are the M-RoPE ones."""
    import torch

    ad = load_adapter(str(tiny_model_dir("qwen2_vl")), dtype="float32")
    text = ad.build_prompt("Describe this image.", True)
    img = tiny_image(90, 60)
    inputs = ad.generate_inputs(ad.encode([text], [img]))
    assert int(inputs["mm_token_type_ids"].sum()) > 0
    with torch.no_grad():
        with_ids = ad.model(**inputs).logits[0, -1]
        with pytest.raises(ValueError, match="mm_token_type_ids"):
            ad.model(**{k: v for k, v in inputs.items() if k != "mm_token_type_ids"})
    cap = capture(ad, [text], [img], CaptureSettings(max_new_tokens=1))[0]
    np.testing.assert_allclose(cap.lens["final_norm"].logit_out[0, -1], with_ids[cap.generated_ids[0]].item(),
                               rtol=1e-4, atol=1e-4)
