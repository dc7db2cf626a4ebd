"""Greedy generation with hidden-state and logit-lens capture, one :class:`SampleCapture` per sample.

    from ingest.models import load_adapter
    from ingest.capture import CaptureSettings, capture
    ad = load_adapter("llava-hf/llava-1.5-7b-hf", dtype="float16", device="cuda")
    texts = [ad.build_prompt(p, has_image=True) for p in prompts]
    caps = capture(ad, texts, images, CaptureSettings(max_new_tokens=256))

How: one call to ``model.generate`` (greedy, KV cache, left-padded batch, all processor inputs such
as ``mm_token_type_ids``/``token_type_ids`` passed through). Forward hooks on the text decoder
(:mod:`ingest.residual`) record the hidden states of all layers 0..L exactly as
``output_hidden_states`` reports them, but only at the positions that are stored: every step's new
position, which is exactly the position that predicted the next token, and, from the prefill, every
prompt position only when ``capture_prompt`` (otherwise only its last one). Device memory for hidden
states therefore does not grow with the prompt. Nothing is re-run. The lens is then computed on the
device for all captured tokens of the batch at once (:func:`ingest.lens.compute_lens`).

Rows of a SampleCapture: the prompt/image positions first (only with ``capture_prompt``), in
sequence order, then the generated tokens in step order. For a generated token at step s the row
holds the hidden state at position ``n_prompt + s - 1`` (the position that predicted it). For a
prompt/image row, ``token_id`` is the input token at that position and the lens's "out" token is
the last layer's top-1 there (what the model would emit after that position).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from kevo_store.schema import LENS_MODES, ROLES

from .lens import LensResult, Unembedding, compute_lens
from .models.base import Adapter
from .residual import generate_recorded

ROLE_IMAGE, ROLE_PROMPT, ROLE_GENERATED = ROLES


@dataclass
class CaptureSettings:
    """What to capture. Recorded in the store's manifest (``generation``/``lens``/``capture``)."""

    max_new_tokens: int = 256
    """Greedy decoding stops at the end-of-sequence token or after this many tokens (the paper's 256)."""
    lens_modes: tuple[str, ...] = ("final_norm",)
    """Logit-lens modes, any of 'final_norm' (standard: norm then head) and 'raw' (the paper code's)."""
    top_k: int = 10
    """Top-k (ids, probabilities) kept per token, layer and lens mode; 0 keeps none."""
    hidden_layers: Literal["all", "none"] | tuple[int, ...] = "all"
    """Layers whose hidden states are kept: 'all' (0..L), 'none', or explicit layer numbers in 0..L."""
    hidden_dtype: Literal["float16", "bfloat16"] = "float16"
    """Storage dtype of hidden states: float16, or bfloat16 (returned as uint16 bit patterns)."""
    dola: bool = False
    """Also compute js_dola, the paper code's JS variant between consecutive layers (see ingest.lens)."""
    capture_prompt: bool = False
    """Also capture prompt and image positions (role 'prompt'/'image', image tokens with their patch grid)."""
    lens_chunk_bytes: int | None = None
    """Upper bound on the lens's device temporaries per chunk of tokens (bytes); None: a quarter of the
    free GPU memory (at most 4 GiB), or 256 MiB on CPU."""

    def __post_init__(self):
        self.lens_modes = tuple(self.lens_modes)
        bad = [m for m in self.lens_modes if m not in LENS_MODES]
        if bad or not self.lens_modes:
            raise ValueError(f"lens modes {list(self.lens_modes)}: choose one or more of {', '.join(LENS_MODES)}")
        if len(set(self.lens_modes)) != len(self.lens_modes):
            raise ValueError(f"lens modes {list(self.lens_modes)} repeat a mode")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.hidden_dtype not in ("float16", "bfloat16"):
            raise ValueError(f"hidden_dtype {self.hidden_dtype!r}: choose float16 or bfloat16")
        if not isinstance(self.hidden_layers, str):
            self.hidden_layers = tuple(int(x) for x in self.hidden_layers)
        elif self.hidden_layers not in ("all", "none"):
            raise ValueError(f"hidden_layers {self.hidden_layers!r}: 'all', 'none' or a list of layers")

    def resolve_hidden_layers(self, n_layers: int) -> list[int]:
        """The layer numbers (0..n_layers) whose hidden states are kept, sorted."""
        if self.hidden_layers == "all":
            return list(range(n_layers + 1))
        if self.hidden_layers == "none":
            return []
        bad = [x for x in self.hidden_layers if x < 0 or x > n_layers]
        if bad:
            raise ValueError(f"hidden layers {bad} out of range: the model has layers 0..{n_layers}")
        return sorted(set(self.hidden_layers))

    def manifest(self) -> dict:
        return {
            "max_new_tokens": self.max_new_tokens, "decoding": "greedy", "lens_modes": list(self.lens_modes),
            "top_k": self.top_k, "hidden_layers": self.hidden_layers if isinstance(self.hidden_layers, str)
            else list(self.hidden_layers), "hidden_dtype": self.hidden_dtype, "dola": self.dola,
            "capture_prompt": self.capture_prompt,
        }


@dataclass
class SampleCapture:
    """One sample's generation and captured activations, as numpy arrays ready for the store.

    Token rows (n_tok): prompt/image rows (only with capture_prompt) then generated rows.
    """

    prompt_text: str
    input_ids: np.ndarray  # (n_prompt_tokens,) int64, unpadded model input
    generated_ids: np.ndarray  # (n_generated,) int64, eos included if emitted
    response: str  # decoded generated text, special tokens skipped
    stop_reason: str  # 'eos' | 'max_new_tokens'
    n_prompt_tokens: int
    step: np.ndarray  # (n_tok,) int32, -1 for prompt/image rows
    position: np.ndarray  # (n_tok,) int32, position of the hidden state in the unpadded sequence
    role: np.ndarray  # (n_tok,) object: 'image' | 'prompt' | 'generated'
    token_id: np.ndarray  # (n_tok,) int32
    patch_row: np.ndarray  # (n_tok,) int16, -1 where null (not an image token / no grid)
    patch_col: np.ndarray  # (n_tok,) int16, -1 where null
    lens: dict[str, LensResult]  # per lens mode, arrays (n_tok, L+1) and top-k (n_tok, L+1, k)
    hidden: np.ndarray | None  # (n_tok, len(hidden_layers), D) float16, or uint16 bfloat16 bits; None if none
    hidden_layers: list[int] = field(default_factory=list)
    fp16_overflow: np.ndarray | None = None
    """(len(hidden_layers),) int64: finite values stored as inf because they exceed float16's range
    (|x| >= 65520 rounds to inf); None unless hidden states are stored as float16."""
    mode: str = "generated"  # samples.mode: 'generated' (greedy decoding) or 'forced' (ingest.forced)
    greedy_match: np.ndarray | None = None  # (n_tok,) bool: the model's greedy choice is this token; None = all

    @property
    def n_generated(self) -> int:
        return int(len(self.generated_ids))

    @property
    def n_tokens(self) -> int:
        return int(len(self.step))

    def table_columns(self, uid_offset: int = 0) -> dict[str, dict[str, np.ndarray]]:
        """Columns for the store's ``tokens``, ``layers`` and ``topk`` tables (schema names), with
        batch-local token_uid = uid_offset + row. ``tokens`` lacks sample_key/labels (the runner's);
        NaN in js_prev/js_dola means null; patch_row/col -1 means null."""
        n, nl = self.n_tokens, (next(iter(self.lens.values())).p_out.shape[1] if self.lens else 0)
        uid = np.arange(uid_offset, uid_offset + n, dtype=np.int64)
        tokens = {"token_uid": uid, "step": self.step, "position": self.position, "role": self.role,
                  "token_id": self.token_id, "patch_row": self.patch_row, "patch_col": self.patch_col}
        layers: dict[str, list] = {}
        topk: dict[str, list] = {}
        for mode, r in self.lens.items():
            cols = {
                "token_uid": np.repeat(uid, nl), "lens": np.full(n * nl, mode, dtype=object),
                "layer": np.tile(np.arange(nl, dtype=np.int16), n),
            }
            for k in ("p_out", "logit_out", "rank_out", "top1_id", "top1_prob", "entropy", "js_prev", "js_final",
                      "kl_final"):
                cols[k] = getattr(r, k).reshape(-1)
            cols["js_dola"] = (r.js_dola.reshape(-1) if r.js_dola is not None
                               else np.full(n * nl, np.nan, np.float32))
            for k, v in cols.items():
                layers.setdefault(k, []).append(v)
            k_ = r.topk_ids.shape[-1]
            if k_:
                tc = {
                    "token_uid": np.repeat(uid, nl * k_), "lens": np.full(n * nl * k_, mode, dtype=object),
                    "layer": np.tile(np.repeat(np.arange(nl, dtype=np.int16), k_), n),
                    "rank": np.tile(np.arange(1, k_ + 1, dtype=np.int32), n * nl),
                    "vocab_id": r.topk_ids.reshape(-1), "prob": r.topk_probs.reshape(-1),
                }
                for k, v in tc.items():
                    topk.setdefault(k, []).append(v)
        cat = lambda d: {k: np.concatenate(v) for k, v in d.items()}  # noqa: E731
        return {"tokens": tokens, "layers": cat(layers), "topk": cat(topk)}


def prompt_row_columns(adapter: Adapter, batch, i: int, input_ids: torch.Tensor, image_ids) -> tuple:
    """(step, position, role, token_id, patch_row, patch_col) of sample ``i``'s prompt/image rows, in
    sequence order (``input_ids``: its unpadded input tokens)."""
    in_np = input_ids.cpu().numpy().astype(np.int32)
    n_prompt = len(in_np)
    is_img = np.isin(in_np, list(image_ids)) if image_ids else np.zeros(n_prompt, bool)
    r = np.full(n_prompt, -1, np.int16)
    c = np.full(n_prompt, -1, np.int16)
    grid = adapter.patch_grid(batch, i) if is_img.any() else None
    if grid is not None and len(grid) == is_img.sum():
        r[is_img], c[is_img] = grid[:, 0], grid[:, 1]
    return (np.full(n_prompt, -1, np.int32), np.arange(n_prompt, dtype=np.int32),
            np.where(is_img, ROLE_IMAGE, ROLE_PROMPT).astype(object), in_np, r, c)


def stored_hidden(H: torch.Tensor, hidden_layers: list[int], dtype: str
                  ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The stored hidden states of rows ``H`` (n, L+1, D) and, for float16 storage, per row and stored
    layer the count of finite values float16 cannot hold (they would read back as inf)."""
    if not hidden_layers:
        return None, None
    sel = H[:, hidden_layers]
    overflow = None
    if dtype == "float16" and H.dtype != torch.float16:
        overflow = (torch.isinf(sel.to(torch.float16)) & torch.isfinite(sel)).sum(dim=2).cpu().numpy()
    return _to_storage(sel, dtype), overflow


def _to_storage(h: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "float16":
        return h.to(torch.float16).cpu().numpy()
    return h.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)


@torch.no_grad()
def generate(adapter: Adapter, batch, max_new_tokens: int, capture_prompt: bool, device):
    """model.generate, greedy -> (new token ids (B, S), per step the hidden states 0..L on ``device``:
    (B, 1, D) each, but (B, T, D) at step 0 with ``capture_prompt``)."""
    seq, hs = generate_recorded(adapter, adapter.generate_inputs(batch), max_new_tokens,
                                None if capture_prompt else 1, device)
    T = batch.input_ids.shape[1]
    new = seq[:, T:] if seq.shape[1] > T and torch.equal(seq[:, :T], batch.input_ids) else seq
    return new, hs


@torch.no_grad()
def capture(adapter: Adapter, prompt_texts: list[str], images: list | None, settings: CaptureSettings,
            unembedding: Unembedding | None = None) -> list[SampleCapture]:
    """Greedy-generate for a batch and capture hidden states and the lens for every generated token."""
    unembedding = unembedding or adapter.unembedding
    batch = adapter.encode(prompt_texts, images)
    dev = unembedding.device  # with a device_map, layers (and their hidden states) span devices
    new_ids, hs = generate(adapter, batch, settings.max_new_tokens, settings.capture_prompt, dev)
    B, T = batch.input_ids.shape
    L = adapter.n_layers
    if len(hs[0]) != L + 1:
        raise RuntimeError(f"expected {L + 1} hidden states per step, got {len(hs[0])}")
    eos = set(adapter.eos_token_ids)
    S = new_ids.shape[1]
    if len(hs) < S:
        raise RuntimeError(f"expected {S} forward passes with hidden states, got {len(hs)}")
    # (S, L+1, B, D): the last position of every step, all layers
    steps = torch.stack([torch.stack([h[:, -1] for h in step]) for step in hs[:S]])
    prefill = torch.stack(hs[0]) if settings.capture_prompt else None  # (L+1, B, T, D)
    del hs

    per_sample_h, meta = [], []
    image_ids = adapter.image_token_ids
    for i in range(B):
        ids = new_ids[i].tolist()
        n_gen = next((k + 1 for k, t in enumerate(ids) if t in eos), None)
        stop = "eos" if n_gen is not None else "max_new_tokens"
        n_gen = n_gen or len(ids)
        n_prompt = batch.prompt_lengths[i]
        gen_h = steps[:n_gen, :, i]  # (n_gen, L+1, D)
        rows_h = [gen_h]
        step = [np.arange(n_gen, dtype=np.int32)]
        position = [np.arange(n_prompt - 1, n_prompt - 1 + n_gen, dtype=np.int32)]
        role = [np.full(n_gen, ROLE_GENERATED, dtype=object)]
        tok = [np.asarray(ids[:n_gen], dtype=np.int32)]
        prow = [np.full(n_gen, -1, np.int16)]
        pcol = [np.full(n_gen, -1, np.int16)]
        out_ids = [torch.as_tensor(ids[:n_gen], device=steps.device)]
        # the sample's real positions (left padding; some processors, e.g. InstructBLIP's, put
        # the image tokens before the padding, so select by the mask rather than slicing)
        valid = torch.nonzero(batch.inputs["attention_mask"][i]).squeeze(1).to(dev)
        input_ids = batch.input_ids[i].to(dev)[valid]
        if settings.capture_prompt:
            ph = prefill[:, i, valid].transpose(0, 1)  # (n_prompt, L+1, D)
            rows_h.insert(0, ph)
            for col, val in zip((step, position, role, tok, prow, pcol),
                                prompt_row_columns(adapter, batch, i, input_ids, image_ids)):
                col.insert(0, val)
            out_ids.insert(0, None)
        per_sample_h.append(rows_h)
        meta.append(dict(n_gen=n_gen, stop=stop, n_prompt=n_prompt, step=step, position=position, role=role,
                         tok=tok, prow=prow, pcol=pcol, out_ids=out_ids, input_ids=input_ids,
                         gen=new_ids[i, :n_gen]))

    # one lens pass over all rows of the batch; prompt rows (-1) use their own last-layer argmax
    flat_h = [h for rows in per_sample_h for h in rows]
    flat_out = [o for m in meta for o in m["out_ids"]]
    sizes = [h.shape[0] for h in flat_h]
    H = torch.cat(flat_h, 0) if flat_h else steps.new_zeros((0, L + 1, adapter.hidden_size))
    known = torch.cat([o if o is not None else torch.full((s,), -1, device=H.device, dtype=torch.long)
                       for o, s in zip(flat_out, sizes)]).long()
    lens = {mode: compute_lens(unembedding, H, known, mode=mode, top_k=settings.top_k, dola=settings.dola,
                               chunk_bytes=settings.lens_chunk_bytes) for mode in settings.lens_modes}

    hidden_layers = settings.resolve_hidden_layers(L)
    hidden_np, overflow = stored_hidden(H, hidden_layers, settings.hidden_dtype)

    caps = []
    start = 0
    k = 0
    for i, m in enumerate(meta):
        n_rows = sum(sizes[k : k + len(m["out_ids"])])
        k += len(m["out_ids"])
        sl = slice(start, start + n_rows)
        start += n_rows
        gen = m["gen"].cpu().numpy().astype(np.int64)
        caps.append(sample_capture(adapter, prompt_texts[i], m, gen, m["stop"], sl, lens, hidden_np, overflow,
                                   hidden_layers))
    return caps


def sample_capture(adapter: Adapter, prompt_text: str, m: dict, gen: np.ndarray, stop: str, sl: slice,
                   lens: dict, hidden_np: np.ndarray | None, overflow: np.ndarray | None, hidden_layers: list[int],
                   **extra) -> SampleCapture:
    """One sample's capture from its rows ``sl`` of the batch's lens and hidden states and its per-row
    columns in ``m`` (lists of arrays, one per forward pass); ``extra``: further fields (teacher forcing)."""
    return SampleCapture(
        prompt_text=prompt_text, input_ids=m["input_ids"].cpu().numpy().astype(np.int64),
        generated_ids=gen, response=adapter.tokenizer.decode(gen, skip_special_tokens=True),
        stop_reason=stop, n_prompt_tokens=m["n_prompt"],
        step=np.concatenate(m["step"]), position=np.concatenate(m["position"]),
        role=np.concatenate(m["role"]), token_id=np.concatenate(m["tok"]),
        patch_row=np.concatenate(m["prow"]), patch_col=np.concatenate(m["pcol"]),
        lens={mode: r.select(sl) for mode, r in lens.items()},
        hidden=None if hidden_np is None else hidden_np[sl], hidden_layers=hidden_layers,
        fp16_overflow=None if overflow is None else overflow[sl].sum(axis=0).astype(np.int64),
        **extra,
    )
