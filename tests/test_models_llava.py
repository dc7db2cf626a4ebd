"""LLaVA-1.5 matches the original LLaVA code: llava_v1 prompt, pad-to-square with the CLIP mean
colour, and tokenizer_image_token's chunk-wise tokenization."""

from __future__ import annotations

import numpy as np
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlavaProcessor, PreTrainedTokenizerFast

from ingest.models import load_adapter
from ingest.models.llava import LlavaAdapter, expand2square
from tests.llava_reference import IMAGE_TOKEN_INDEX, tokenizer_image_token
from tests.model_helpers import CORPUS, tiny_image, tiny_model_dir


def _sentencepiece_like_tokenizer():
    """A Metaspace BPE tokenizer with BOS and a dummy prefix on the first segment only, like Llama's (legacy=False)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.train_from_iterator(CORPUS * 3 + ["\n"], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>", "<image>"], show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def test_prompt_is_llava_v1():
    ad = load_adapter(str(tiny_model_dir("llava")), dtype="float32")
    assert ad.build_prompt("What is this?", True) == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: <image>\nWhat is this? ASSISTANT:")
    assert ad.build_prompt("Hi", False).endswith("questions. USER: Hi ASSISTANT:")


def test_expand2square_with_clip_mean():
    img = Image.fromarray(np.full((30, 40, 3), 7, np.uint8))
    mean = (122, 116, 104)  # int(255 * CLIP mean)
    sq = np.asarray(expand2square(img, mean))
    assert sq.shape == (40, 40, 3)
    assert (sq[5:35] == 7).all() and (sq[:5] == mean).all() and (sq[35:] == mean).all()
    ad = load_adapter(str(tiny_model_dir("llava")), dtype="float32")
    assert ad.prepare_image(tiny_image(40, 30)).size == (40, 40)
    assert np.asarray(ad.prepare_image(tiny_image(40, 30)))[0, 0].tolist() == list(mean)


def test_tokenization_matches_original_llava():
    base = load_adapter(str(tiny_model_dir("llava")), dtype="float32")
    image_id = base.processor.image_token_id
    texts = [base.build_prompt("Describe this image.", True), base.build_prompt("What is it?", True)]
    imgs = [tiny_image(40, 30), tiny_image(30, 50, 1)]
    n_img = 4
    for tok in (base.tokenizer, _sentencepiece_like_tokenizer()):
        proc = LlavaProcessor(image_processor=base.processor.image_processor, tokenizer=tok, patch_size=14,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)
        ad = LlavaAdapter(base.model, proc, model_id="x", revision=None, dtype="float32", path="")
        b = ad.encode(texts, imgs)
        for i, t in enumerate(texts):
            ref = tokenizer_image_token(t, tok)
            ref = [x for y in ref for x in ([image_id] * n_img if y == IMAGE_TOKEN_INDEX else [y])]
            got = b.input_ids[i, b.inputs["attention_mask"][i].bool()].tolist()
            assert got == ref
        whole = proc(text=texts[:1], images=imgs[:1]).input_ids[0]
        if tok is base.tokenizer:  # byte-level BPE: no dummy prefix, same as whole-string tokenization
            assert b.input_ids[0, -len(whole):].tolist() == list(whole)
        else:  # SentencePiece-like: the original keeps a '▁' after the image that the processor drops
            assert b.input_ids[0, -len(whole):].tolist() != list(whole)
