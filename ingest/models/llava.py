"""LLaVA-1.5 (``LlavaForConditionalGeneration``), the paper's primary model.

Matches the original LLaVA code (haotian-liu/LLaVA, ``image_aspect_ratio='pad'``): the image is
padded to a square with the CLIP mean colour (``expand2square``) before the CLIP processor, and the
prompt is the llava_v1 conversation template
``"<system> USER: <image>\\n{prompt} ASSISTANT:"``, tokenized the way the original
``llava.mm_utils.tokenizer_image_token`` does: each text chunk around ``<image>`` is tokenized on
its own (so a SentencePiece tokenizer puts its dummy-prefix ``▁`` before the ``\\n`` that follows
the image, as in the paper's runs; tokenizing the whole string, as transformers' processor does,
drops it) and the chunks are joined by the image tokens. Image tokens are the vision grid
(24 x 24 for LLaVA-1.5-7B), row-major.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .base import Adapter, Batch, ModelError, llava_v1_prompt, square_grid


def expand2square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad to a square, image centred, like llava.mm_utils.expand2square."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    out = Image.new(image.mode, (side, side), background)
    out.paste(image, ((side - w) // 2, 0) if w < h else (0, (side - h) // 2))
    return out


class LlavaAdapter(Adapter):
    family = "llava"
    model_types = ("llava",)
    model_class = "LlavaForConditionalGeneration"
    prompt_template = ("llava_v1: '<system> USER: <image>\\n{prompt} ASSISTANT:' (image padded to square with the "
                       "CLIP mean colour; text chunks around <image> tokenized separately, as "
                       "llava.mm_utils.tokenizer_image_token)")

    @property
    def image_token(self) -> str:
        return getattr(self.processor, "image_token", "<image>")

    def build_prompt(self, user_prompt: str, has_image: bool) -> str:
        return llava_v1_prompt(user_prompt, has_image, self.image_token)

    def prepare_image(self, image):
        image = image.convert("RGB")
        mean = getattr(self.processor.image_processor, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        return expand2square(image, tuple(int(x * 255) for x in mean))

    def _process(self, prompt_texts, real_images, images):
        tok = self.tokenizer
        out: dict = {}
        n_img = []
        if real_images:
            out.update(self.processor.image_processor(real_images, return_tensors="pt"))
            n_img = [self.processor.replace_image_token(out, k).count(self.image_token)
                     for k in range(len(real_images))]
        image_id = self.processor.image_token_id
        seqs, k = [], 0
        for text, im in zip(prompt_texts, images):
            chunks = text.split(self.image_token)
            if len(chunks) - 1 != (im is not None):
                raise ModelError(f"prompt has {len(chunks) - 1} {self.image_token} tokens but "
                                 f"{int(im is not None)} image: {text[:80]!r}")
            # llava.mm_utils.tokenizer_image_token: tokenize each chunk (with BOS), keep the first
            # BOS only, join the chunks with the image tokens
            ids_chunks = [tok(c).input_ids for c in chunks]
            offset = 1 if ids_chunks[0] and ids_chunks[0][0] == tok.bos_token_id else 0
            ids = ids_chunks[0][:1] if offset else []
            for j, c in enumerate(ids_chunks):
                if j:
                    ids.extend([image_id] * n_img[k])
                    k += 1
                ids.extend(c[offset:])
            seqs.append(ids)
        T = max(len(s) for s in seqs)
        pad = tok.pad_token_id
        out["input_ids"] = torch.tensor([[pad] * (T - len(s)) + s for s in seqs], dtype=torch.long)
        out["attention_mask"] = torch.tensor([[0] * (T - len(s)) + [1] * len(s) for s in seqs], dtype=torch.long)
        return out

    def patch_grid(self, batch: Batch, i: int) -> np.ndarray | None:
        n = self.n_image_tokens(batch, i)
        return square_grid(n) if n else None
