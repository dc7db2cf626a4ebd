"""Plain causal language models (Llama/Vicuna, Mistral, Qwen2/3, Gemma 1/2/3-text) for text-only runs.

The prompt is the tokenizer's chat template when it has one, else Vicuna v1.1's template (the same
as LLaVA's llava_v1 without the image line), so that LLaVA-1.5 and its base LLM Vicuna-7B-v1.5
see the same text in the LVLM-vs-LLM comparison.
"""

from __future__ import annotations

from .base import Adapter, llava_v1_prompt


class CausalLMAdapter(Adapter):
    family = "causal_lm"
    model_types = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3")
    model_class = "AutoModelForCausalLM"
    multimodal = False

    @property
    def prompt_template(self) -> str:  # type: ignore[override]
        if getattr(self.tokenizer, "chat_template", None):
            return "tokenizer chat template (user turn, add_generation_prompt=True)"
        return "vicuna_v1: '<system> USER: {prompt} ASSISTANT:'"

    @property
    def decoder(self):
        return self.model.model

    def build_prompt(self, user_prompt: str, has_image: bool) -> str:
        if has_image:
            raise ValueError(f"{self.model_id!r} is a text-only model: it takes no images")
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": user_prompt}], tokenize=False, add_generation_prompt=True
            )
        return llava_v1_prompt(user_prompt, False)

    def _process(self, prompt_texts, real_images, images):
        # a chat template already carries the BOS token: do not add a second one
        add_special = not getattr(self.tokenizer, "chat_template", None)
        return dict(self.tokenizer(prompt_texts, return_tensors="pt", padding=True, add_special_tokens=add_special))
