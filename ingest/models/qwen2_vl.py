"""Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration``).

The inputs always carry ``mm_token_type_ids`` (1 on image tokens): without them the model's
M-RoPE positions silently fall back to 1-D text positions. The prompt is the processor's chat
template when it has one, else the official Qwen chat format with its default system message:
``<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n
<|vision_start|><|image_pad|><|vision_end|>{prompt}<|im_end|>\\n<|im_start|>assistant\\n``.

Where transformers' Qwen processor cannot be built (it needs torchvision for its video half), the
adapter composes the same steps itself from the image processor and tokenizer: one
``<|image_pad|>`` becomes ``prod(image_grid_thw) / merge_size**2`` pads, then tokenization, then
``mm_token_type_ids``. Image tokens' patch grid: the merged (h/merge, w/merge) grid, row-major.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from .base import Adapter, Batch, rect_grid

QWEN_SYSTEM = "You are a helpful assistant."


class Qwen2VLAdapter(Adapter):
    family = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")
    model_class = "AutoModelForImageTextToText"

    def __init__(self, model, processor, **kw):
        super().__init__(model, processor, **kw)
        self.family = model.config.model_type  # record which of the two this is

    image_token = "<|image_pad|>"

    @property
    def prompt_template(self) -> str:  # type: ignore[override]
        return "processor chat template" if getattr(self.processor, "chat_template", None) else \
            ("qwen chat: system 'You are a helpful assistant.', user turn with "
             "<|vision_start|><|image_pad|><|vision_end|>")

    @classmethod
    def load_processor(cls, path: str):
        from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

        try:
            return AutoProcessor.from_pretrained(path)
        except Exception:  # noqa: BLE001 - e.g. no torchvision for the video processor
            tok = AutoTokenizer.from_pretrained(path)
            return SimpleNamespace(tokenizer=tok, image_processor=AutoImageProcessor.from_pretrained(path),
                                   chat_template=getattr(tok, "chat_template", None), composed=True)

    def build_prompt(self, user_prompt: str, has_image: bool) -> str:
        if getattr(self.processor, "chat_template", None) and not getattr(self.processor, "composed", False):
            return self.chat_prompt(user_prompt, has_image)
        img = "<|vision_start|><|image_pad|><|vision_end|>" if has_image else ""
        return (f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n{img}{user_prompt}<|im_end|>\n"
                "<|im_start|>assistant\n")

    def _process(self, prompt_texts, real_images, images):
        if not getattr(self.processor, "composed", False):
            out = dict(self.processor(text=prompt_texts, images=real_images or None, return_tensors="pt",
                                      padding=True))
        else:
            ip = self.processor.image_processor
            out = {}
            texts = list(prompt_texts)
            if real_images:
                im = ip(images=real_images, return_tensors="pt")
                out.update(im)
                k = 0
                for j, t in enumerate(texts):
                    parts = t.split(self.image_token)
                    rebuilt = parts[0]
                    for part in parts[1:]:
                        n = int(im["image_grid_thw"][k].prod()) // ip.merge_size**2
                        rebuilt += "<|placeholder|>" * n + part
                        k += 1
                    texts[j] = rebuilt.replace("<|placeholder|>", self.image_token)
                if k != len(real_images):
                    raise ValueError(f"{k} {self.image_token} tokens in the prompts but {len(real_images)} images")
            out.update(self.tokenizer(texts, return_tensors="pt", padding=True))
            out["mm_token_type_ids"] = torch.zeros_like(out["input_ids"])
        if "mm_token_type_ids" not in out:
            out["mm_token_type_ids"] = torch.zeros_like(out["input_ids"])
        # M-RoPE needs to know which positions are image tokens (1); never leave it to the model
        out["mm_token_type_ids"][out["input_ids"] == self.model.config.image_token_id] = 1
        return out

    def patch_grid(self, batch: Batch, i: int) -> np.ndarray | None:
        n = self.n_image_tokens(batch, i)
        if not n or "image_grid_thw" not in batch.inputs:
            return None
        # the k-th image belongs to the k-th sample that has image tokens
        k = sum(1 for j in range(i) if self.n_image_tokens(batch, j))
        t, h, w = (int(x) for x in batch.inputs["image_grid_thw"][k])
        m = self.model.config.vision_config.spatial_merge_size
        g = rect_grid(h // m, w // m)
        return np.tile(g, (t, 1)) if t * len(g) == n else None
