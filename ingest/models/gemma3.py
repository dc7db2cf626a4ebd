"""Gemma 3 (``Gemma3ForConditionalGeneration``). Text-only Gemma 3 (``gemma3_text``) is a causal LM.

Prompt: the processor's chat template when it has one, else the Gemma turn format
``<bos><start_of_turn>user\\n<start_of_image>{prompt}<end_of_turn>\\n<start_of_turn>model\\n``
(the processor expands ``<start_of_image>`` into the image's soft tokens). Image tokens are the
pooled SigLIP grid (16 x 16 for the released models), row-major. ``token_type_ids`` (image tokens
attend bidirectionally) are passed to the model.
"""

from __future__ import annotations

import numpy as np

from .base import Adapter, Batch, square_grid


class Gemma3Adapter(Adapter):
    family = "gemma3"
    model_types = ("gemma3",)
    model_class = "Gemma3ForConditionalGeneration"

    @property
    def prompt_template(self) -> str:  # type: ignore[override]
        return "processor chat template" if getattr(self.processor, "chat_template", None) else \
            "gemma: '<bos><start_of_turn>user\\n<start_of_image>{prompt}<end_of_turn>\\n<start_of_turn>model\\n'"

    @property
    def final_logit_softcapping(self) -> float | None:
        # Gemma3ForConditionalGeneration's head applies no soft-capping, whatever the text config says
        # (only Gemma3ForCausalLM does; the released configs have none): mirror the model exactly
        return None

    @property
    def image_token_ids(self) -> set[int]:
        return {int(self.model.config.image_token_index)}

    def build_prompt(self, user_prompt: str, has_image: bool) -> str:
        boi = getattr(self.processor, "boi_token", "<start_of_image>")
        return self.chat_prompt(user_prompt, has_image) or (
            f"{self.tokenizer.bos_token}<start_of_turn>user\n{boi if has_image else ''}{user_prompt}<end_of_turn>\n"
            "<start_of_turn>model\n")

    def _process(self, prompt_texts, real_images, images):
        kwargs = {"text": prompt_texts, "return_tensors": "pt", "padding": True, "add_special_tokens": False}
        if real_images:
            # nested per sample ([] for a text-only sample in a mixed batch)
            kwargs["images"] = [[self.prepare_image(im)] if im is not None else [] for im in images]
        return dict(self.processor(**kwargs))

    def patch_grid(self, batch: Batch, i: int) -> np.ndarray | None:
        n = self.n_image_tokens(batch, i)
        return square_grid(n) if n else None
