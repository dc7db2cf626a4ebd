"""A text-only sample inside an image batch behaves as when run alone; families that need an image
for every sample say so clearly."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.capture import CaptureSettings, capture
from ingest.models import ModelError, load_adapter
from tests.model_helpers import tiny_image, tiny_model_dir


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_vl", "idefics3", "gemma3"])
def test_text_only_sample_in_image_batch(family):
    ad = load_adapter(str(tiny_model_dir(family)), dtype="float32")
    texts = [ad.build_prompt("Describe the scene.", False), ad.build_prompt("What is it? the cat", True)]
    s = CaptureSettings(max_new_tokens=4)
    mixed = capture(ad, texts, [None, tiny_image()], s)
    alone = capture(ad, texts[:1], [None], s)[0]
    img_alone = capture(ad, texts[1:], [tiny_image()], s)[0]
    for a, b in ((mixed[0], alone), (mixed[1], img_alone)):
        assert a.generated_ids.tolist() == b.generated_ids.tolist()
        np.testing.assert_allclose(a.hidden.astype(np.float32), b.hidden.astype(np.float32), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("family", ["paligemma", "instructblip"])
def test_image_required(family):
    ad = load_adapter(str(tiny_model_dir(family)), dtype="float32")
    texts = [ad.build_prompt("Describe the scene.", False), ad.build_prompt("What is it?", True)]
    with pytest.raises(ModelError, match="needs an image for every sample"):
        capture(ad, texts, [None, tiny_image()], CaptureSettings(max_new_tokens=2))
