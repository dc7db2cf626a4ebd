"""LLaVA-1.5 (``LlavaForConditionalGeneration``), the paper's primary model.

Matches the original LLaVA code (haotian-liu/LLaVA, ``image_aspect_ratio='pad'``): the image is
padded to a square with the CLIP mean colour (``expand2square``) before the CLIP processor, and the
prompt is the llava_v1 conversation template
``"<system> USER: <image>\\n{prompt} ASSISTANT:"``. Image tokens are the vision grid
(24 x 24 for LLaVA-1.5-7B), row-major.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .base import Adapter, Batch, llava_v1_prompt, square_grid


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
    prompt_template = "llava_v1: '<system> USER: <image>\\n{prompt} ASSISTANT:' (image padded to square, CLIP mean colour)"

    @property
    def image_token(self) -> str:
        return getattr(self.processor, "image_token", "<image>")

    def build_prompt(self, user_prompt: str, has_image: bool) -> str:
        return llava_v1_prompt(user_prompt, has_image, self.image_token)

    def prepare_image(self, image):
        image = image.convert("RGB")
        mean = getattr(self.processor.image_processor, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        return expand2square(image, tuple(int(x * 255) for x in mean))

    def patch_grid(self, batch: Batch, i: int) -> np.ndarray | None:
        n = self.n_image_tokens(batch, i)
        return square_grid(n) if n else None
