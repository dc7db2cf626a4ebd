"""The organism's architecture: a tiny but complete LLaVA-1.5 (`LlavaForConditionalGeneration`).

CLIP vision tower -> 2-layer GELU projector -> Llama decoder, exactly the classes LLaVA-1.5 uses,
only small. Everything is built from configs (no download); the processor is the standard
`LlavaProcessor` (a PIL image processor that pads to square with the CLIP mean colour, and the
word-level tokenizer of :mod:`ingest.organism.tokenizer`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ingest.organism import tokenizer as tok_mod
from ingest.organism import world

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class OrganismConfig:
    """Sizes of the organism. The defaults are what ships in ``ingest/organism/weights``."""

    image_size: int = world.IMAGE_SIZE
    """Side of the (square) image the vision tower sees, in pixels."""
    patch_size: int = 16
    """ViT patch side: (image_size / patch_size)^2 image tokens reach the decoder."""
    vision_hidden: int = 64
    """Width of the CLIP vision tower."""
    vision_layers: int = 3
    """Depth of the vision tower; features come from the penultimate layer, as in LLaVA-1.5."""
    hidden: int = 128
    """Width of the Llama decoder (the residual stream the logit lens reads)."""
    layers: int = 8
    """Decoder depth: deep enough for layer-wise evolution to be visible."""
    heads: int = 4
    """Attention heads in the decoder."""
    intermediate: int = 352
    """Decoder MLP width."""
    max_positions: int = 256
    """Longest sequence (prompt + image tokens + answer)."""
    tie_embeddings: bool = False
    """Tie the decoder's LM head to its input embeddings (GPT-2's choice; LLaMA-2, and so the shipped
    organism, keeps them apart). Tried on the shipped recipe (D2 in README.md): the logit lens then
    reads the input token back at layer 0, which counts as a critical layer 0, and grounding is lost."""

    @property
    def n_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def build_config(cfg: OrganismConfig, vocab_size: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    ids = {t: i for i, t in enumerate(tok_mod.SPECIAL)}
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=cfg.vision_hidden * 2,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=4,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.max_positions,
        rms_norm_eps=1e-5,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=ids["<image>"],
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=cfg.n_image_tokens,
        tie_word_embeddings=cfg.tie_embeddings,
    )
    config.organism = asdict(cfg)  # recorded in config.json: how this model was built
    return config


def build_model(cfg: OrganismConfig, vocab_size: int, seed: int):
    """A freshly initialised organism (deterministic for a seed)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(build_config(cfg, vocab_size))
    return model


def build_image_processor(cfg: OrganismConfig):
    """LLaVA-1.5's image pipeline at the organism's size: pad to square (CLIP mean colour), resize, normalise."""
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    return LlavaImageProcessorPil(
        do_pad=True,
        size={"shortest_edge": cfg.image_size},
        crop_size={"height": cfg.image_size, "width": cfg.image_size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )


def build_processor(cfg: OrganismConfig, out: Path | str | None = None, extended_vocabulary: bool = False):
    """The LlavaProcessor (image processor + tokenizer); saved to ``out`` when given.
    ``extended_vocabulary``: the tokenizer also covers the relation and VQA questions."""
    import tempfile

    from transformers import AutoTokenizer, LlavaProcessor

    with tempfile.TemporaryDirectory() as tmp:
        tok_mod.save_hf_tokenizer(tmp, model_max_length=cfg.max_positions, extended=extended_vocabulary)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
    proc = LlavaProcessor(
        image_processor=build_image_processor(cfg),
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    if out is not None:
        proc.save_pretrained(str(out))
    return proc
