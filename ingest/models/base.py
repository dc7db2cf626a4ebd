"""The model adapter: one object that knows where a family keeps what the lens and capture need.

An :class:`Adapter` wraps a loaded Hugging Face model and its processor (or tokenizer) and exposes

- ``layers``: the decoder's ``nn.ModuleList`` (what :mod:`ingest.skip` edits),
- ``final_norm``, ``lm_head`` and ``final_logit_softcapping``: the pieces of the unembedding
  (:class:`ingest.lens.Unembedding` is built from them),
- ``n_layers`` (L, so hidden states are numbered 0..L), ``hidden_size``, ``vocab_size``,
- ``build_prompt(user_prompt, has_image)``: the exact text handed to the processor,
- ``encode(prompt_texts, images)``: a left-padded batch of model inputs on the model's device,
- ``generate_inputs(batch)``: the keyword arguments for ``model.generate``,
- ``image_token_ids``: the ids of image placeholder tokens, and ``patch_grid(batch, i)``, the
  (row, col) of every image token of sample ``i`` in the vision grid (None where the family's image
  tokens have no spatial meaning, e.g. InstructBLIP's Q-Former queries),
- ``model_info``: the manifest's ``model`` section.

Subclasses (one file per family in this package) set the class attributes and override the
few methods whose behaviour differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from kevo_store.errors import KevoError

# LLaVA's llava_v1 conversation template (also Vicuna v1.1's). The system line is verbatim from
# llava/conversation.py (conv_vicuna_v1 / conv_llava_v1); roles are USER/ASSISTANT, sep " ".
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


class ModelError(KevoError):
    """A model that cannot be loaded or used: the message names the model and the reason."""


@dataclass
class Batch:
    """A left-padded batch of model inputs, plus what capture needs to map positions back."""

    inputs: dict[str, Any]  # processor outputs on the model's device (input_ids, attention_mask, ...)
    prompt_lengths: list[int]  # unpadded prompt length per sample (image tokens included)

    @property
    def input_ids(self) -> torch.Tensor:
        return self.inputs["input_ids"]


class Adapter:
    """Base adapter. Subclasses set ``family``, ``model_types`` and ``model_class``."""

    family: ClassVar[str] = ""
    #: config.model_type values this adapter handles
    model_types: ClassVar[tuple[str, ...]] = ()
    #: transformers class name used to load the model
    model_class: ClassVar[str] = "AutoModelForImageTextToText"
    #: whether the family takes images
    multimodal: ClassVar[bool] = True
    #: whether every sample must have an image (PaliGemma, InstructBLIP)
    image_required: ClassVar[bool] = False

    def __init__(self, model: nn.Module, processor: Any, *, model_id: str, revision: str | None,
                 dtype: str, path: str):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            # left padding needs some pad id; it is masked out, so eos is the usual stand-in
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model_id = model_id
        self.revision = revision
        self.dtype = dtype
        self.path = path
        self.skipped_layers: list[int] = []
        self._unembedding = None

    @property
    def unembedding(self):
        """The model's :class:`ingest.lens.Unembedding`, built once (an fp32 copy of the head)."""
        if self._unembedding is None:
            from ..lens import Unembedding

            self._unembedding = Unembedding(self)
        return self._unembedding

    # ---- where things live (override per family) -------------------------------------------
    @property
    def text_config(self):
        cfg = self.model.config
        return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg

    @property
    def decoder(self) -> nn.Module:
        """The text decoder (has ``.layers`` and ``.norm``)."""
        return self.model.model.language_model

    @property
    def layers(self) -> nn.ModuleList:
        return self.decoder.layers

    @property
    def final_norm(self) -> nn.Module:
        return self.decoder.norm

    @property
    def lm_head(self) -> nn.Module:
        return self.model.lm_head

    @property
    def final_logit_softcapping(self) -> float | None:
        return getattr(self.text_config, "final_logit_softcapping", None) or None

    @property
    def n_layers(self) -> int:
        """L: decoder layers (after skipping); hidden states are numbered 0..L."""
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.lm_head.weight.shape[0])

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def image_token_ids(self) -> set[int]:
        ids = set()
        for name in ("image_token_id", "image_token_index"):
            v = getattr(self.model.config, name, None)
            if v is not None:
                ids.add(int(v))
        return ids

    @property
    def eos_token_ids(self) -> list[int]:
        ids: list[int] = []
        for src in (getattr(self.model, "generation_config", None), self.text_config, self.tokenizer):
            v = getattr(src, "eos_token_id", None) if src is not None else None
            if v is None:
                continue
            for i in v if isinstance(v, (list, tuple)) else [v]:
                if int(i) not in ids:
                    ids.append(int(i))
        return ids

    @property
    def model_info(self) -> dict:
        arch = type(self.model).__name__
        return {
            "id": self.model_id,
            "revision": self.revision,
            "family": self.family,
            "architecture": arch,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "n_layers": self.n_layers,
            "n_layers_original": self.n_layers + len(self.skipped_layers),
            "skipped_layers": list(self.skipped_layers),
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "final_logit_softcapping": self.final_logit_softcapping,
            "path": self.path,
        }

    # ---- prompts and inputs -----------------------------------------------------------------
    #: a short description of the template, recorded in the manifest
    prompt_template: ClassVar[str] = ""

    def build_prompt(self, user_prompt: str, has_image: bool) -> str:
        """The exact text handed to the processor for one sample."""
        raise NotImplementedError

    def prepare_image(self, image):
        """Per-family image preprocessing before the processor (e.g. LLaVA's pad-to-square)."""
        return image.convert("RGB")

    def encode(self, prompt_texts: list[str], images: list | None = None) -> Batch:
        """Tokenize/process a batch, left padded, on the model's device."""
        images = list(images) if images is not None else [None] * len(prompt_texts)
        if len(images) != len(prompt_texts):
            raise ValueError(f"{len(prompt_texts)} prompts but {len(images)} images")
        real = [self.prepare_image(im) for im in images if im is not None]
        if real and not self.multimodal:
            raise ModelError(f"model {self.model_id!r} ({self.family}) is text-only: it takes no images")
        if self.image_required and len(real) != len(images):
            raise ModelError(f"model {self.model_id!r} ({self.family}) needs an image for every sample")
        inputs = self._process(prompt_texts, real, images)
        inputs = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in inputs.items()}
        mask = inputs["attention_mask"]
        return Batch(inputs=inputs, prompt_lengths=[int(x) for x in mask.sum(1).tolist()])

    def _process(self, prompt_texts: list[str], real_images: list, images: list) -> dict:
        kwargs: dict[str, Any] = {"text": prompt_texts, "return_tensors": "pt", "padding": True}
        if real_images:
            kwargs["images"] = real_images
        return dict(self.processor(**kwargs))

    def generate_inputs(self, batch: Batch) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` (and for a plain forward)."""
        return dict(batch.inputs)

    def patch_grid(self, batch: Batch, i: int) -> np.ndarray | None:
        """(n_image_tokens, 2) int16 array of (row, col) per image token of sample i, in sequence order;
        -1 for image tokens without a grid position. None where the family has no spatial grid."""
        return None

    def n_image_tokens(self, batch: Batch, i: int) -> int:
        ids = batch.input_ids[i]
        return int(sum((ids == t).sum().item() for t in self.image_token_ids))

    #: token_type_ids value of generated tokens (PaliGemma marks the suffix with 1)
    generated_token_type: ClassVar[int] = 0

    def extend_inputs(self, inputs: dict[str, Any], new_ids: torch.Tensor) -> dict[str, Any]:
        """``inputs`` (one unpadded sample) with ``new_ids`` (1, n) appended: the inputs of a plain,
        cache-free forward over prompt + generated tokens (what an independent re-run does)."""
        out = dict(inputs)
        new_ids = new_ids.to(inputs["input_ids"].device)
        out["input_ids"] = torch.cat([inputs["input_ids"], new_ids], 1)
        out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(new_ids)], 1)
        if "mm_token_type_ids" in out:
            out["mm_token_type_ids"] = torch.cat([out["mm_token_type_ids"], torch.zeros_like(new_ids)], 1)
        if "token_type_ids" in out:
            fill = torch.full_like(new_ids, self.generated_token_type)
            out["token_type_ids"] = torch.cat([out["token_type_ids"], fill], 1)
        return out

    def chat_prompt(self, user_prompt: str, has_image: bool) -> str | None:
        """The processor's chat template applied to one user turn, or None if it has none."""
        if not getattr(self.processor, "chat_template", None):
            return None
        content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": user_prompt}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                  add_generation_prompt=True, tokenize=False)

    @classmethod
    def load_processor(cls, path: str):
        from transformers import AutoProcessor, AutoTokenizer

        return AutoProcessor.from_pretrained(path) if cls.multimodal else AutoTokenizer.from_pretrained(path)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model_id!r} L={self.n_layers} D={self.hidden_size} V={self.vocab_size}>"


def llava_v1_prompt(user_prompt: str, has_image: bool, image_token: str = "<image>") -> str:
    """llava_v1: '<system> USER: <image>\\n<prompt> ASSISTANT:' (no image line for text-only)."""
    body = f"{image_token}\n{user_prompt}" if has_image else user_prompt
    return f"{LLAVA_V1_SYSTEM} USER: {body} ASSISTANT:"


def square_grid(n: int) -> np.ndarray | None:
    """Row-major (row, col) of an s x s grid with s*s == n (None if n is not a square)."""
    s = int(round(n**0.5))
    if s * s != n:
        return None
    return rect_grid(s, s)


def rect_grid(h: int, w: int) -> np.ndarray:
    """Row-major (row, col) of an h x w grid."""
    r, c = np.divmod(np.arange(h * w), w)
    return np.stack([r, c], 1).astype(np.int16)
