"""PaliGemma and PaliGemma 2 (``PaliGemmaForConditionalGeneration``; Gemma / Gemma 2 decoder).

PaliGemma is not a chat model: the prompt is ``<image>`` + the task text (e.g. ``caption en`` or a
question); the processor expands the image token, adds BOS and appends the newline separator.
Gemma 2's final-logit soft-capping is applied by the lens. Image tokens are the SigLIP grid,
row-major. Generated tokens have ``token_type_ids`` 1 (the suffix of the prefix-LM).
"""

from __future__ import annotations

import numpy as np

from .base import Adapter, Batch, square_grid


class PaliGemmaAdapter(Adapter):
    family = "paligemma"
    model_types = ("paligemma",)
    model_class = "PaliGemmaForConditionalGeneration"
    image_required = True
    prompt_template = "paligemma: '<image>{prompt}' (the processor expands the image tokens, adds BOS and '\\n')"
    generated_token_type = 1

    def build_prompt(self, user_prompt: str, has_image: bool) -> str:
        # one image token per image at the start; the processor expands it to the full image sequence
        return f"{getattr(self.processor, 'image_token', '<image>')}{user_prompt}" if has_image else user_prompt

    def _process(self, prompt_texts, real_images, images):
        out = super()._process(prompt_texts, real_images, images)
        out.pop("labels", None)  # the processor derives training labels; generation must not see them
        return out

    def patch_grid(self, batch: Batch, i: int) -> np.ndarray | None:
        n = self.n_image_tokens(batch, i)
        return square_grid(n) if n else None
