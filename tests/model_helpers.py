"""Tiny random models of every supported family, built offline from configs and saved as local
model directories (safetensors weights + processor/tokenizer files), as a user would have them.

    from tests.model_helpers import tiny_model_dir, tiny_image, FAMILIES
    path = tiny_model_dir("llava")          # built once per process, cached under a temp dir
    ad = load_adapter(str(path), dtype="float32")

Each model has 3 decoder layers, hidden size 32 and a ~400-piece byte-level BPE tokenizer trained on
a few sentences (with the family's special tokens), and a real image processor (``*ImageProcessorPil``)
configured for tiny images, so the processor -> model path is the real one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm", "paligemma", "gemma3",
            "instructblip", "causal_lm")

CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions.",
    "USER: ASSISTANT: Describe this image. There is a cat and a dog on the table next to a guitar.",
    "What is in the picture? A red car, a tree, the sky and people walking in the street.",
    "user assistant system model Answer the question. Is there a horse in this image? yes no",
]

N_LAYERS = 3
HIDDEN = 32
_ROOT: Path | None = None
_BUILT: dict[str, Path] = {}


def _root() -> Path:
    """KEVO_TINY_MODELS (kept, reused across runs) or a temporary directory removed at exit."""
    global _ROOT
    if _ROOT is None:
        if os.environ.get("KEVO_TINY_MODELS"):
            _ROOT = Path(os.environ["KEVO_TINY_MODELS"])
            _ROOT.mkdir(parents=True, exist_ok=True)
        else:
            import atexit
            import shutil

            _ROOT = Path(tempfile.mkdtemp(prefix="kevo-tiny-models-"))
            atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


def build_tokenizer(special: list[str], bos: str | None = "<s>", eos: str = "</s>", pad: str = "<pad>",
                    unk: str = "<unk>", add_bos: bool = True, vocab_size: int = 400, extra: dict | None = None,
                    chat_template: str | None = None):
    """A byte-level BPE fast tokenizer with the given special tokens (ids 0.. in order)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    base = [t for t in (unk, bos, eos, pad) if t]
    specials = base + [s for s in special if s not in base]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3, trainer)
    if add_bos and bos:
        bid = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, bid)])
    kw = dict(tokenizer_object=tok, eos_token=eos, pad_token=pad, unk_token=unk)
    if bos:
        kw["bos_token"] = bos
    if extra:
        kw.update(extra)
    t = PreTrainedTokenizerFast(**kw)
    if chat_template:
        t.chat_template = chat_template
    return t


def _llama_text(vocab: int, **kw):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=N_LAYERS,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=False, **kw)


def _clip_vision(image_size=28, patch=14):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            image_size=image_size, patch_size=patch, projection_dim=32)


def _ids(tok) -> dict:
    """The config's special-token ids from the tokenizer (1, 2, 3 for the trained ones)."""
    return dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def _save(model, processor, path: Path, seed: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    processor.save_pretrained(str(path))
    return path


def _init(model, seed: int):
    """Random init with larger weights than the default 0.02 so layers' distributions differ."""
    import torch

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / p.shape[-1] ** 0.5) * 3)
    return model.eval()


def build_llava(path: Path, tok=None, vocab_size: int | None = None) -> Path:
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = tok or build_tokenizer(["<image>"])
    cfg = LlavaConfig(vision_config=_clip_vision(), text_config=_llama_text(vocab_size or len(tok), **_ids(tok)),
                      image_token_index=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu")
    ip = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1)
    return _save(_init(LlavaForConditionalGeneration(cfg), 0), proc, path, 0)


def build_causal_lm(path: Path) -> Path:
    from transformers import LlamaForCausalLM

    tok = build_tokenizer([])
    cfg = _llama_text(len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=3)
    model = _init(LlamaForCausalLM(cfg), 1)
    return _save(model, tok, path, 1)


def build_llava_next(path: Path, tok=None, vocab_size: int | None = None) -> Path:
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    tok = tok or build_tokenizer(["<image>"])
    pins = [[28, 28], [28, 56], [56, 28], [56, 56]]
    cfg = LlavaNextConfig(vision_config=_clip_vision(), text_config=_llama_text(vocab_size or len(tok), **_ids(tok)),
                          image_token_index=tok.convert_tokens_to_ids("<image>"),
                          image_grid_pinpoints=pins, vision_feature_layer=-2,
                          vision_feature_select_strategy="default")
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                    image_grid_pinpoints=pins)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return _save(_init(LlavaNextForConditionalGeneration(cfg), 2), proc, path, 2)


_QWEN_SPECIAL = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                 "<|video_pad|>"]


def _build_qwen(path: Path, v25: bool, tok=None, vocab_size: int | None = None) -> Path:
    import transformers as tf

    tok = tok or build_tokenizer(_QWEN_SPECIAL, bos=None, eos="<|endoftext|>", pad="<|pad|>", add_bos=False)
    ids = {t: tok.convert_tokens_to_ids(t) for t in _QWEN_SPECIAL}
    text = dict(vocab_size=vocab_size or len(tok), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=N_LAYERS,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0},
                bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if v25:
        vis = tf.Qwen2_5_VLVisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                                        out_hidden_size=HIDDEN, patch_size=14, spatial_merge_size=2,
                                        temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1])
        cfg_cls, model_cls, tcfg = tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLTextConfig
    else:
        vis = tf.Qwen2VLVisionConfig(depth=2, embed_dim=32, hidden_size=HIDDEN, num_heads=2, mlp_ratio=2,
                                     patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        cfg_cls, model_cls, tcfg = tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLTextConfig
    cfg = cfg_cls(text_config=tcfg(**text).to_dict(), vision_config=vis.to_dict(),
                  image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                  tie_word_embeddings=False)
    ip = tf.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=84 * 84, patch_size=14, merge_size=2,
                                     temporal_patch_size=2)
    # without torchvision the processor (its video half) cannot be saved whole: save its parts, as
    # the hub checkpoints also do (preprocessor_config.json + tokenizer files)
    model = _init(model_cls(cfg), 3)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    ip.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


def build_qwen2_vl(path: Path, tok=None, vocab_size: int | None = None) -> Path:
    return _build_qwen(path, False, tok, vocab_size)


def build_qwen2_5_vl(path: Path, tok=None, vocab_size: int | None = None) -> Path:
    return _build_qwen(path, True, tok, vocab_size)


def build_idefics3(path: Path) -> Path:
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        Idefics3VisionConfig,
    )

    tok = build_tokenizer(["<image>", "<fake_token_around_image>", "<end_of_utterance>", "<global-img>"])
    vis = Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=56, patch_size=14)
    cfg = Idefics3Config(vision_config=vis.to_dict(), text_config=_llama_text(len(tok), bos_token_id=1,
                         eos_token_id=2, pad_token_id=3).to_dict(), scale_factor=2,
                         image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    ip = Idefics3ImageProcessorPil(size={"longest_edge": 112}, max_image_size={"longest_edge": 56},
                                   do_image_splitting=True)
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4)
    return _save(_init(Idefics3ForConditionalGeneration(cfg), 4), proc, path, 4)


def build_smolvlm(path: Path) -> Path:
    """SmolVLM2's architecture (model_type 'smolvlm'). Its own processor needs num2words and a
    torchvision video processor, so the tiny model ships the Idefics3 processor, whose image-token
    layout SmolVLM shares (SmolVLM v1 checkpoints are model_type 'idefics3' anyway)."""
    from transformers import (
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMVisionConfig,
    )

    tok = build_tokenizer(["<image>", "<fake_token_around_image>", "<end_of_utterance>", "<global-img>"])
    vis = SmolVLMVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=56, patch_size=14)
    cfg = SmolVLMConfig(vision_config=vis.to_dict(), text_config=_llama_text(len(tok), bos_token_id=1,
                        eos_token_id=2, pad_token_id=3).to_dict(), scale_factor=2,
                        image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False)
    ip = Idefics3ImageProcessorPil(size={"longest_edge": 56}, max_image_size={"longest_edge": 56},
                                   do_image_splitting=False)
    proc = Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=4)
    return _save(_init(SmolVLMForConditionalGeneration(cfg), 8), proc, path, 8)


def build_paligemma(path: Path) -> Path:
    from transformers import (
        Gemma2Config,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
    )

    tok = build_tokenizer(["<image>"], bos="<bos>", eos="<eos>", add_bos=False, extra={"extra_special_tokens":
                          {"image_token": "<image>"}})
    # PaliGemma 2 (Gemma 2 decoder): exercises final-logit soft-capping
    text = Gemma2Config(vocab_size=len(tok), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=N_LAYERS,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=16,
                        final_logit_softcapping=3.0, attn_logit_softcapping=50.0, bos_token_id=1, eos_token_id=2,
                        pad_token_id=3)
    vis = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=42, patch_size=14, projection_dim=HIDDEN)
    cfg = PaliGemmaConfig(vision_config=vis.to_dict(), text_config=text.to_dict(),
                          image_token_index=tok.convert_tokens_to_ids("<image>"), projection_dim=HIDDEN)
    ip = SiglipImageProcessorPil(size={"height": 42, "width": 42})
    ip.image_seq_length = 9
    proc = PaliGemmaProcessor(image_processor=ip, tokenizer=tok)
    return _save(_init(PaliGemmaForConditionalGeneration(cfg), 5), proc, path, 5)


def build_gemma3(path: Path, tok=None, vocab_size: int | None = None) -> Path:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    sp = ["<start_of_image>", "<end_of_image>", "<image_soft_token>", "<start_of_turn>", "<end_of_turn>"]
    tok = tok or build_tokenizer(sp, bos="<bos>", eos="<eos>", add_bos=False, extra={"extra_special_tokens": {
        "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}})
    ids = {t: tok.convert_tokens_to_ids(t) for t in sp}
    text = Gemma3TextConfig(vocab_size=vocab_size or len(tok), hidden_size=HIDDEN, intermediate_size=64,
                            num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                            sliding_window=8, layer_types=["sliding_attention", "sliding_attention",
                                                           "full_attention"],
                            final_logit_softcapping=3.0, **_ids(tok))
    vis = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=56, patch_size=14)
    cfg = Gemma3Config(text_config=text.to_dict(), vision_config=vis.to_dict(), mm_tokens_per_image=4,
                       boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
                       image_token_index=ids["<image_soft_token>"], tie_word_embeddings=False)
    ip = Gemma3ImageProcessorPil(size={"height": 56, "width": 56})
    proc = Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=4)
    return _save(_init(Gemma3ForConditionalGeneration(cfg), 6), proc, path, 6)


def build_instructblip(path: Path) -> Path:
    from transformers import (
        BlipImageProcessorPil,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
        InstructBlipQFormerConfig,
        InstructBlipVisionConfig,
    )

    tok = build_tokenizer(["<image>"])
    qtok = build_tokenizer([], bos="[CLS]", eos="[SEP]", pad="[PAD]", unk="[UNK]", vocab_size=300)
    vis = InstructBlipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, image_size=28, patch_size=14)
    qf = InstructBlipQFormerConfig(vocab_size=len(qtok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, encoder_hidden_size=32, pad_token_id=qtok.pad_token_id)
    cfg = InstructBlipConfig(vision_config=vis.to_dict(), qformer_config=qf.to_dict(),
                             text_config=_llama_text(len(tok), bos_token_id=1, eos_token_id=2,
                                                     pad_token_id=3).to_dict(),
                             num_query_tokens=4, image_token_index=tok.convert_tokens_to_ids("<image>"))
    ip = BlipImageProcessorPil(size={"height": 28, "width": 28})
    proc = InstructBlipProcessor(image_processor=ip, tokenizer=tok, qformer_tokenizer=qtok, num_query_tokens=4)
    return _save(_init(InstructBlipForConditionalGeneration(cfg), 7), proc, path, 7)


BUILDERS = {
    "llava": build_llava,
    "llava_next": build_llava_next,
    "qwen2_vl": build_qwen2_vl,
    "qwen2_5_vl": build_qwen2_5_vl,
    "idefics3": build_idefics3,
    "smolvlm": build_smolvlm,
    "paligemma": build_paligemma,
    "gemma3": build_gemma3,
    "instructblip": build_instructblip,
    "causal_lm": build_causal_lm,
}


def tiny_model_dir(family: str, tokenizer: str = "trained") -> Path:
    """The directory of the tiny model of ``family`` (built on first use in this process).

    ``tokenizer="real"``: with the family's real vocabulary (tests/real_tokenizer_helpers.py; skips
    where it is not available), special tokens and padded vocabulary as the hub checkpoints have them.
    """
    key = family if tokenizer == "trained" else f"{family}@{tokenizer}"
    if key not in _BUILT:
        path = _root() / key
        if not (path / "config.json").is_file():
            if tokenizer == "trained":
                BUILDERS[family](path)
            else:
                from tests.real_tokenizer_helpers import real_tokenizer

                tok, vocab_size = real_tokenizer(family)
                BUILDERS[family](path, tok=tok, vocab_size=vocab_size)
        _BUILT[key] = path
    return _BUILT[key]


def tiny_image(w: int = 40, h: int = 30, seed: int = 0):
    """A random RGB PIL image (non-square by default, to exercise padding/resizing)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")

TEXT_ONLY = ("causal_lm",)
