"""LLaVA-NeXT / LLaVA-1.6 (``LlavaNextForConditionalGeneration``), any-resolution tiling.

Prompt: the processor's chat template when it ships one (the hub checkpoints do; it depends on the
base LLM, e.g. Mistral's [INST] or Vicuna's USER/ASSISTANT), else llava_v1. Image tokens: the base
(global) image's grid comes first (s x s, row-major, with patch positions); the any-resolution tile
features that follow (with one image-newline token per row) get no grid position (-1).
"""

from __future__ import annotations

import numpy as np

from .base import Adapter, Batch, llava_v1_prompt


class LlavaNextAdapter(Adapter):
    family = "llava_next"
    model_types = ("llava_next",)
    model_class = "LlavaNextForConditionalGeneration"

    @property
    def prompt_template(self) -> str:  # type: ignore[override]
        return "processor chat template" if getattr(self.processor, "chat_template", None) else \
            "llava_v1: '<system> USER: <image>\\n{prompt} ASSISTANT:'"

    def build_prompt(self, user_prompt: str, has_image: bool) -> str:
        return self.chat_prompt(user_prompt, has_image) or llava_v1_prompt(
            user_prompt, has_image, getattr(self.processor, "image_token", "<image>"))

    def patch_grid(self, batch: Batch, i: int) -> np.ndarray | None:
        n = self.n_image_tokens(batch, i)
        if not n:
            return None
        vc = self.model.config.vision_config
        s = vc.image_size // vc.patch_size
        grid = np.full((n, 2), -1, np.int16)
        r, c = np.divmod(np.arange(min(s * s, n)), s)
        grid[: len(r), 0], grid[: len(r), 1] = r, c
        return grid
