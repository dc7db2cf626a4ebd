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

FAMILIES = ("llava", "causal_lm")

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
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(os.environ.get("KEVO_TINY_MODELS") or tempfile.mkdtemp(prefix="kevo-tiny-models-"))
        _ROOT.mkdir(parents=True, exist_ok=True)
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


def _save(model, processor, path: Path, seed: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    processor.save_pretrained(str(path))
    return path


def _init(model, seed: int):
    """Random init with larger weights than the default 0.02 so layers' distributions differ."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / p.shape[-1] ** 0.5) * 3)
    return model.eval()


def build_llava(path: Path) -> Path:
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = build_tokenizer(["<image>"])
    cfg = LlavaConfig(vision_config=_clip_vision(), text_config=_llama_text(len(tok), bos_token_id=1,
                      eos_token_id=2, pad_token_id=3), image_token_index=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu")
    ip = CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1)
    import torch

    torch.manual_seed(0)
    model = _init(LlavaForConditionalGeneration(cfg), 0)
    return _save(model, proc, path, 0)


def build_causal_lm(path: Path) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    tok = build_tokenizer([])
    cfg = _llama_text(len(tok), bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(0)
    model = _init(LlamaForCausalLM(cfg), 1)
    return _save(model, tok, path, 1)


BUILDERS = {
    "llava": build_llava,
    "causal_lm": build_causal_lm,
}


def tiny_model_dir(family: str) -> Path:
    """The directory of the tiny model of ``family`` (built on first use in this process)."""
    if family not in _BUILT:
        path = _root() / family
        if not (path / "config.json").is_file():
            BUILDERS[family](path)
        _BUILT[family] = path
    return _BUILT[family]


def tiny_image(w: int = 40, h: int = 30, seed: int = 0):
    """A random RGB PIL image (non-square by default, to exercise padding/resizing)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")

TEXT_ONLY = ("causal_lm",)
