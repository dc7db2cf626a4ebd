"""Random-weight LLaVA-1.5 models for the benchmarks, built offline from configs and saved as a model
directory (safetensors + processor), exactly what `kevo ingest --model DIR` loads.

``build_llava(path, MID)`` is the "mid-size LLaVA architecture": the real LLaVA-1.5 classes
(CLIP vision tower, GELU projector, Llama decoder) at 8 decoder layers, hidden 512, vocabulary
32,000 (LLaVA-1.5-7B's vocabulary size, so the lens matmul has its real width). The tokenizer is a
word-level one with 32,000 entries (the template's words plus filler words), so every vocabulary id
decodes to a piece. The end-of-sequence row of lm_head is zeroed: a random model would otherwise
stop at a random step, and both sides of a ratio must generate the same number of tokens (they do
anyway, greedy on the same model, but a fixed length makes the per-token numbers comparable).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SPECIAL = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
PROMPT = "Describe this image in detail."


@dataclass(frozen=True)
class LlavaSize:
    """Sizes of a random LLaVA-1.5-architecture model."""

    layers: int = 8
    """Decoder layers (L); hidden states are numbered 0..L."""
    hidden: int = 512
    """Decoder width D (the residual stream the lens reads)."""
    intermediate: int = 1376
    """Decoder MLP width (LLaVA-1.5-7B's ratio 11008/4096)."""
    heads: int = 8
    """Attention heads."""
    vocab: int = 32000
    """Vocabulary size V (LLaVA-1.5-7B: 32,000)."""
    image_size: int = 224
    """Vision input side; (image_size / patch)^2 image tokens reach the decoder."""
    patch: int = 14
    """ViT patch side (LLaVA-1.5: 14)."""
    vision_hidden: int = 256
    """CLIP tower width."""
    vision_layers: int = 4
    """CLIP tower depth (features from the penultimate layer, as in LLaVA-1.5)."""


MID = LlavaSize()
TINY = LlavaSize(layers=3, hidden=64, intermediate=128, heads=4, vocab=2000, image_size=56, patch=14,
                 vision_hidden=32, vision_layers=2)
# a long prompt (bench/capture_memory.py): (630 / 14)^2 = 2,025 image tokens, a wider decoder, a small vocabulary
# (the lens over every prompt position stays cheap on a CPU)
LONG = LlavaSize(layers=12, hidden=768, intermediate=2048, heads=12, vocab=2000, image_size=630, patch=14,
                 vision_hidden=128, vision_layers=2)
# LLaVA-1.5-7B (for bench/gpu_bench.py): Vicuna-7B decoder + CLIP ViT-L/14-336
LLAVA_7B = LlavaSize(layers=32, hidden=4096, intermediate=11008, heads=32, vocab=32000, image_size=336, patch=14,
                     vision_hidden=1024, vision_layers=24)


def build_tokenizer(vocab_size: int):
    """A word-level fast tokenizer with ``vocab_size`` entries ('▁word' pieces, like LLaMA's)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from ingest.models.base import LLAVA_V1_SYSTEM

    norm = normalizers.Sequence([normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(left=True, right=False),
                                 normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    pre = pre_tokenizers.Split(Regex(r"▁?[A-Za-z0-9]+|[^A-Za-z0-9▁]|▁"), behavior="isolated")
    tmp = Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>"))
    tmp.normalizer, tmp.pre_tokenizer = norm, pre
    pieces: set[str] = {"▁"}
    for text in (LLAVA_V1_SYSTEM, "USER: ASSISTANT:", PROMPT, "\n"):
        pieces.update(p for p, _ in tmp.pre_tokenizer.pre_tokenize_str(tmp.normalizer.normalize_str(text)))
    vocab = {t: i for i, t in enumerate(SPECIAL)}
    for p in sorted(pieces):
        vocab.setdefault(p, len(vocab))
    i = 0
    while len(vocab) < vocab_size:
        vocab.setdefault(f"▁w{i}", len(vocab))
        i += 1
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer, tok.pre_tokenizer = norm, pre
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.add_special_tokens(list(SPECIAL))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", padding_side="left", clean_up_tokenization_spaces=False,
                                   model_max_length=4096, extra_special_tokens={"image_token": "<image>"})


def llava_config(size: LlavaSize):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    ids = {t: i for i, t in enumerate(SPECIAL)}
    vision = CLIPVisionConfig(hidden_size=size.vision_hidden, intermediate_size=size.vision_hidden * 4,
                              num_hidden_layers=size.vision_layers,
                              num_attention_heads=max(1, size.vision_hidden // 64),
                              image_size=size.image_size, patch_size=size.patch, projection_dim=size.vision_hidden)
    text = LlamaConfig(vocab_size=size.vocab, hidden_size=size.hidden, intermediate_size=size.intermediate,
                       num_hidden_layers=size.layers, num_attention_heads=size.heads,
                       num_key_value_heads=size.heads, max_position_embeddings=4096, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                       pad_token_id=ids["<pad>"])
    n_img = (size.image_size // size.patch) ** 2
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=ids["<image>"],
                      projector_hidden_act="gelu", vision_feature_select_strategy="default",
                      vision_feature_layer=-2, image_seq_length=n_img, tie_word_embeddings=False)
    cfg.bench_size = asdict(size)
    return cfg


def init_weights_(model, seed: int, gain: float = 1.5) -> None:
    """Gaussian weights of std gain/sqrt(fan_in) (layer-wise distributions differ, unlike the 0.02 default),
    and a zero lm_head row for the end-of-sequence token (see the module docstring)."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                w = torch.randn(p.shape, generator=g) * (gain / p.shape[-1] ** 0.5)
                p.copy_(w.to(p.device, p.dtype))
        model.lm_head.weight[SPECIAL.index("</s>")].zero_()


def build_llava(path: Path, size: LlavaSize = MID, seed: int = 0) -> Path:
    """Save a random LLaVA-1.5 of ``size`` at ``path`` (skipped if it is already there with the same size)."""
    import json

    import torch
    from transformers import CLIPImageProcessorPil, LlavaForConditionalGeneration, LlavaProcessor

    path = Path(path)
    cfg_file = path / "config.json"
    if cfg_file.is_file() and json.loads(cfg_file.read_text()).get("bench_size") == asdict(size):
        return path
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(llava_config(size)).eval()
    init_weights_(model, seed)
    tok = build_tokenizer(size.vocab)
    ip = CLIPImageProcessorPil(size={"shortest_edge": size.image_size},
                               crop_size={"height": size.image_size, "width": size.image_size})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=size.patch,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    proc.save_pretrained(str(path))
    return path


def make_images(d: Path, n: int, seed: int = 0, size: tuple[int, int] = (320, 240)) -> list[Path]:
    """n random RGB PNGs (non-square, so LLaVA's pad-to-square runs)."""
    from PIL import Image

    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = d / f"img{i:03d}.png"
        if not p.is_file():
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(p)
        out.append(p)
    return out
