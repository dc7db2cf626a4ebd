"""LLaVA's own preprocessing, re-implemented from haotian-liu/LLaVA as published (llava/mm_utils.py,
llava/constants.py), independent of kevo: the reference the tests compare kevo's LLaVA-1.5 prompt
tokenization and image padding with."""

from __future__ import annotations

IMAGE_TOKEN_INDEX = -200  # llava.constants


def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX):
    """llava.mm_utils.tokenizer_image_token (return_tensors=None), verbatim."""
    prompt_chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]

    def insert_separator(X, sep):
        return [ele for sublist in zip(X, [sep] * len(X)) for ele in sublist][:-1]

    input_ids = []
    offset = 0
    if len(prompt_chunks) > 0 and len(prompt_chunks[0]) > 0 and prompt_chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(prompt_chunks[0][0])
    for x in insert_separator(prompt_chunks, [image_token_index] * (offset + 1)):
        input_ids.extend(x[offset:])
    return input_ids


def expand2square(pil_img, background_color):
    """llava.mm_utils.expand2square, verbatim."""
    from PIL import Image

    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result
