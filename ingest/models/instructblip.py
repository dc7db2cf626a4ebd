"""InstructBLIP with a decoder-only LLM (Vicuna): ``InstructBlipForConditionalGeneration``.

The decoder is ``model.language_model.model`` and the head ``model.language_model.lm_head``. The
prompt is the instruction itself (LAVIS feeds it verbatim to both the Q-Former and the LLM); the
processor prepends the ``num_query_tokens`` image tokens. Those are Q-Former queries, not image
patches: they have no grid position. The Flan-T5 (encoder-decoder) variants are not supported.
"""

from __future__ import annotations

from .base import Adapter, ModelError


class InstructBlipAdapter(Adapter):
    family = "instructblip"
    model_types = ("instructblip",)
    model_class = "InstructBlipForConditionalGeneration"
    image_required = True
    prompt_template = "instructblip: the prompt verbatim (Q-Former query tokens prepended by the processor)"

    def __init__(self, model, processor, **kw):
        if not model.config.use_decoder_only_language_model:
            raise ModelError(f"model {kw.get('model_id')!r}: InstructBLIP with an encoder-decoder LLM (Flan-T5) is "
                             "not supported; use a Vicuna-based InstructBLIP")
        super().__init__(model, processor, **kw)

    @property
    def decoder(self):
        return self.model.language_model.model

    @property
    def lm_head(self):
        return self.model.language_model.lm_head

    def build_prompt(self, user_prompt: str, has_image: bool) -> str:
        return user_prompt
