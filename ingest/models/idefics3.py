"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration`` / ``SmolVLMForConditionalGeneration``).

The decoder is ``model.model.text_model``. Prompt: the processor's chat template when it has one,
else ``User:<image>{prompt}<end_of_utterance>\\nAssistant:`` (the Idefics3/SmolVLM chat format).
The processor may split an image into tiles followed by a downscaled global image, each
``image_seq_len`` tokens (a pixel-shuffled s x s grid). Patch positions are given for the global
image (always the last ``image_seq_len`` image tokens) on its s x s grid; tile tokens get -1.
"""

from __future__ import annotations

import numpy as np

from .base import Adapter, Batch, square_grid


class Idefics3Adapter(Adapter):
    family = "idefics3"
    model_types = ("idefics3", "smolvlm")
    model_class = "AutoModelForImageTextToText"

    def __init__(self, model, processor, **kw):
        super().__init__(model, processor, **kw)
        self.family = model.config.model_type  # record which of the two this is

    @property
    def prompt_template(self) -> str:  # type: ignore[override]
        return "processor chat template" if getattr(self.processor, "chat_template", None) else \
            "idefics3: 'User:<image>{prompt}<end_of_utterance>\\nAssistant:'"

    @property
    def decoder(self):
        return self.model.model.text_model

    def build_prompt(self, user_prompt: str, has_image: bool) -> str:
        return self.chat_prompt(user_prompt, has_image) or (
            f"User:{'<image>' if has_image else ''}{user_prompt}<end_of_utterance>\nAssistant:")

    def patch_grid(self, batch: Batch, i: int) -> np.ndarray | None:
        n = self.n_image_tokens(batch, i)
        seq = getattr(self.processor, "image_seq_len", None)
        if not n or not seq or n % seq:
            return None
        g = square_grid(seq)
        if g is None:
            return None
        grid = np.full((n, 2), -1, np.int16)
        grid[n - seq :] = g
        return grid
