"""The logit lens: every layer's hidden state read out through the model's own unembedding.

``Unembedding(adapter)`` is a frozen fp32 copy of the three pieces that turn a hidden state into
next-token logits: the final norm, the output head (``lm_head``) and, where the config has it, the
final logit soft-capping ``cap * tanh(logits / cap)`` (Gemma 2/3). It lives on the model's device.

``compute_lens(unembedding, hidden, out_ids, mode=...)`` takes the hidden states of N tokens at all
layers, ``hidden`` of shape (N, L+1, D) (layer 0 = embeddings, layer L = transformers' last
``hidden_states`` entry, which is ALREADY normed), and returns per (token, layer) arrays:

- mode ``final_norm`` (the standard lens): ``logits_l = head(norm(h_l))`` for l < L, ``head(h_L)``.
- mode ``raw`` (the paper's released code): ``logits_l = head(h_l)`` for l < L, ``head(h_L)``.
  In both modes layer L is never normed twice, so layer L's logits are the model's own logits.

Everything runs on the device in float32, over chunks of whole tokens (all L+1 layers of a chunk
in one matmul, so the head is read once per chunk), sized so a chunk's (tokens, L+1, V) logits and
scratch stay under ``chunk_bytes``; only the per-(token, layer) statistics and the top-k leave the
device. On a CPU the statistics then walk the chunk a few tokens at a time (``_CPU_SUB_BYTES``)
through five preallocated scratch buffers, so their ~25 elementwise passes over the vocabulary run
in cache instead of streaming fresh multi-MB temporaries from memory, and subnormals are flushed
(``_flush_denormals``). Same operations in the same order as the straightforward version, hence the
same values; on bench/'s mid-size random LLaVA (L = 8, D = 512, V = 32000, 128 tokens, 1 thread)
the lens alone went from 1.52 s to 0.58-0.77 s (lm_head matmul: 0.25 s of it).

Statistics (natural log; P_l = softmax(logits_l); "out" = the token the model emitted):

- ``p_out`` = P_l[out], ``logit_out`` = logits_l[out] (after soft-capping),
  ``rank_out`` = 1 + #{v : logits_l[v] > logits_l[out]} (1-based; ties share the better rank),
- ``top1_id``, ``top1_prob``: argmax of P_l and its probability,
- ``entropy`` = -sum_v P_l log P_l,
- ``js_prev`` = JS(P_l, P_{l-1}) and ``js_final`` = JS(P_l, P_L), where
  JS(P, Q) = 1/2 KL(P || M) + 1/2 KL(Q || M), M = (P + Q)/2, bounded by ln 2; js_prev is NaN
  (stored as null) at layer 0,
- ``kl_final`` = KL(P_L || P_l) = sum_v P_L (log P_L - log P_l),
- ``js_dola`` (only when asked): the variant in the DoLa code that the paper's code reuses, between
  layer l and layer l-1: with M = (P_l + P_{l-1})/2,
  ``js_dola = 1/2 * ( mean_v M (log M - log P_l) + mean_v M (log M - log P_{l-1}) )``,
  i.e. ``0.5 * (F.kl_div(logP_l, M, reduction='none').mean(-1) + F.kl_div(logP_{l-1}, M, ...).mean(-1))``:
  the KL divergences go from the mixture to each distribution (reverse KL) and are averaged over the
  vocabulary instead of summed, so js_dola = (true JS) / V only to first order, and it is not
  bounded by ln 2 / V. NaN at layer 0.
- ``topk_ids`` / ``topk_probs``: (N, L+1, k), ranks 1..k in order.

Precision: the JS and KL terms are summed directly (``sum p (log p - log m)``, with torch's pairwise
reductions), which at V = 32000 in fp32 stays within ~1e-6 nats of a float64 computation; the
cheaper ``H(M) - (H(P) + H(Q)) / 2`` form or einsum/bmm reductions were measured ~100x worse
(1e-4) on CPU, too coarse for small late-layer divergences.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from kevo_store.schema import LENS_MODES

LN2 = math.log(2.0)
_NEG = -1e30  # finite stand-in for -inf logits, so that 0 * log 0 terms are 0, never NaN
# floor for a mixture probability before its log: the smallest NORMAL fp32 (a subnormal floor would
# read as 0 under flush-to-zero, see _flush_denormals)
_TINY = float(np.finfo(np.float32).tiny)


class Unembedding(nn.Module):
    """Frozen fp32 final norm + output head (+ soft-capping) of one model, on its device.

    The fp32 copy of the head costs V x D x 4 bytes of device memory (0.5 GiB for LLaVA-1.5-7B,
    2.2 GiB for Qwen2.5-VL-7B); build it once per model and pass it to every ``capture`` call."""

    def __init__(self, adapter):
        super().__init__()
        self.model_id = adapter.model_id
        self.device = adapter.device
        self.norm = copy.deepcopy(adapter.final_norm).to(device=self.device, dtype=torch.float32)
        head = adapter.lm_head
        self.weight = nn.Parameter(head.weight.detach().to(self.device, torch.float32).clone(), requires_grad=False)
        b = getattr(head, "bias", None)
        self.bias = None if b is None else nn.Parameter(b.detach().to(self.device, torch.float32).clone(),
                                                         requires_grad=False)
        self.softcap = adapter.final_logit_softcapping
        self.n_layers = adapter.n_layers
        self.vocab_size = self.weight.shape[0]
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def logits(self, h: torch.Tensor, mode: str = "final_norm") -> torch.Tensor:
        """(n, L+1, D) hidden states -> (n, L+1, V) fp32 logits in lens ``mode``."""
        h = h.to(self.device, torch.float32)
        if mode == "final_norm":
            # layers 0..L-1 through the norm; layer L is already normed by the model
            h = torch.cat([self.norm(h[:, :-1]), h[:, -1:]], dim=1)
        elif mode != "raw":
            raise ValueError(f"unknown lens mode {mode!r}; choose from {LENS_MODES}")
        out = torch.nn.functional.linear(h, self.weight, self.bias)
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out

    def __repr__(self) -> str:
        return f"Unembedding({self.model_id!r}, V={self.vocab_size}, softcap={self.softcap})"


@dataclass
class LensResult:
    """Per (token, layer) lens statistics for one mode, numpy on the host. Shapes (N, L+1) / (N, L+1, k)."""

    mode: str
    p_out: np.ndarray
    logit_out: np.ndarray
    rank_out: np.ndarray
    top1_id: np.ndarray
    top1_prob: np.ndarray
    entropy: np.ndarray
    js_prev: np.ndarray  # NaN at layer 0
    js_final: np.ndarray
    kl_final: np.ndarray
    js_dola: np.ndarray | None  # NaN at layer 0; None unless asked
    topk_ids: np.ndarray
    topk_probs: np.ndarray

    def select(self, rows) -> LensResult:
        """The rows (tokens) ``rows`` of every array."""
        kw = {k: (None if v is None else v[rows]) for k, v in self.__dict__.items() if k != "mode"}
        return LensResult(mode=self.mode, **kw)

    @staticmethod
    def concat(parts: list[LensResult]) -> LensResult:
        kw = {}
        for k in parts[0].__dict__:
            if k == "mode":
                continue
            vals = [getattr(p, k) for p in parts]
            kw[k] = None if vals[0] is None else np.concatenate(vals, 0)
        return LensResult(mode=parts[0].mode, **kw)


def _js_into(lp, lq, p, q, m, t1, t2, m_keep=None) -> torch.Tensor:
    """JS(P, Q) summed directly, ``1/2 sum_v [p (log p - log m) + q (log q - log m)]``, written
    through the caller's buffers (``m``, ``t1``, ``t2``: same shape as ``lp``); ``m`` ends up
    holding log M. log M comes from the probabilities (as precise as logaddexp of the logs here,
    and cheaper); an underflowed M (both 0) is clamped so its 0 * log M terms stay 0. If ``m_keep``
    is given it receives M itself (for js_dola)."""
    torch.add(p, q, out=m).mul_(0.5)
    if m_keep is not None:
        m_keep.copy_(m)
    m.clamp_min_(_TINY).log_()
    torch.sub(lp, m, out=t1).mul_(p)
    torch.sub(lq, m, out=t2)
    return t1.addcmul_(t2, q).sum(-1).mul_(0.5)


_BLOCK = 128


def _topk_ids(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest of x (..., V) along V, largest first: the same values as
    ``x.topk(k)`` (ids can differ only between exactly equal logits), ~3x faster on a CPU at V=32000 (~5x at 152k).

    The k blocks of 128 with the largest maxima hold all k largest values: those k block maxima
    are >= t (the k-th largest block maximum) and every element outside them is <= t. One topk over
    those k blocks plus the ragged tail then replaces a topk over the whole vocabulary."""
    V = x.shape[-1]
    nb = V // _BLOCK
    if x.device.type != "cpu" or nb < 4 * k:
        return x.topk(k, dim=-1)[1]
    blocks = x[..., : nb * _BLOCK].unflatten(-1, (nb, _BLOCK))
    bi = blocks.amax(-1).topk(k, dim=-1)[1]  # (..., k) block numbers
    cand = blocks.gather(-2, bi.unsqueeze(-1).expand(*bi.shape, _BLOCK))  # (..., k, 128)
    cid = (bi.unsqueeze(-1) * _BLOCK + torch.arange(_BLOCK)).flatten(-2)
    cand = cand.flatten(-2)
    if nb * _BLOCK < V:  # the tail that does not fill a block
        cand = torch.cat([cand, x[..., nb * _BLOCK :]], -1)
        tail = torch.arange(nb * _BLOCK, V).expand(*cid.shape[:-1], -1)
        cid = torch.cat([cid, tail], -1)
    return cid.gather(-1, cand.topk(k, dim=-1)[1])


def _sub_stats(x, ids, top_k: int, dola: bool, buf: dict[str, torch.Tensor], res: dict[str, torch.Tensor]) -> None:
    """All statistics of a few tokens' logits ``x`` (s, L+1, V) fp32 (overwritten: scratch once read),
    written into the rows of ``res`` (tensors (s, L+1) / (s, L+1, k)). ``buf``: scratch of x's shape.

    One call makes about 25 passes over x; the caller keeps x small enough that these stay in the
    CPU cache, and every temporary is a preallocated buffer (fresh multi-MB tensors cost page faults)."""
    s, nl, _ = x.shape
    LP, P, M, T2 = (buf[k][:s] for k in ("lp", "p", "m", "t2"))
    x.clamp_min_(_NEG)
    top_id = _topk_ids(x, max(top_k, 1))
    # a negative id (prompt position): the token's own last-layer argmax
    ids = torch.where(ids < 0, top_id[:, -1, 0], ids)
    idx = ids.view(-1, 1, 1).expand(-1, nl, 1)
    x_out = x.gather(-1, idx)
    res["logit_out"].copy_(x_out.squeeze(-1))
    # rank from the logits themselves; a float 0/1 mask sums exactly (V < 2^24), ~5x faster than bool
    res["rank_out"].copy_(torch.gt(x, x_out, out=T2).sum(-1).add_(1))
    torch.log_softmax(x, -1, out=LP)
    lp_out = LP.gather(-1, idx)
    T1 = x  # the logits are no longer needed: their memory is scratch from here on
    torch.exp(LP, out=P)
    res["p_out"].copy_(lp_out.squeeze(-1).exp())
    top_p = LP.gather(-1, top_id).exp_()
    res["top1_id"].copy_(top_id[..., 0])
    res["top1_prob"].copy_(top_p[..., 0])
    if top_k:
        res["topk_ids"].copy_(top_id[..., :top_k])
        res["topk_probs"].copy_(top_p[..., :top_k])
    res["entropy"].copy_(torch.mul(P, LP, out=T1).sum(-1).neg_())
    L = nl - 1
    mk = buf["mk"][:s, :L] if dola else None
    res["js_prev"][:, 1:] = _js_into(LP[:, 1:], LP[:, :-1], P[:, 1:], P[:, :-1],
                                     M[:, :L], T1[:, :L], T2[:, :L], m_keep=mk)
    if dola:
        # M (s, L, V) and log M (in M) of the consecutive pairs, before M's buffer is reused below
        logm = M[:, :L]
        torch.sub(logm, LP[:, 1:], out=T1[:, :L])
        torch.sub(logm, LP[:, :-1], out=T2[:, :L])
        res["js_dola"][:, 1:] = T1[:, :L].mul_(mk).addcmul_(T2[:, :L], mk).sum(-1).mul_(0.5 / x.shape[-1])
    lpL, pL = LP[:, -1:], P[:, -1:]
    res["kl_final"].copy_(torch.sub(lpL, LP, out=T1).mul_(pL).sum(-1))
    res["js_final"].copy_(_js_into(LP, lpL.expand_as(LP), P, pL.expand_as(P), M, T1, T2))


@contextlib.contextmanager
def _flush_denormals(on: bool):
    """Flush subnormal floats to zero inside the block (CPU, this thread), then restore the caller's mode.

    Probabilities of widely spread logits (the raw lens of early layers) fall below 1.2e-38 in large
    numbers, and every op on subnormals takes a slow microcode path (up to 2-3x the lens's time).
    What flushing changes: probabilities under 1.2e-38 count as 0, i.e. terms of at most ~1e-36 per
    vocabulary entry in any sum, far under fp32 rounding of the stored statistics."""
    if not on:
        yield
        return
    before = bool((torch.tensor([1e-39]) * 1.0).item() == 0.0)  # torch has no getter for the mode
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


# Scratch per CPU sub-chunk: x and 5 buffers of (s, L+1, V) fp32 should stay in (a large) L2/L3 cache
_CPU_SUB_BYTES = 2 << 20


def default_chunk_bytes(device: torch.device) -> int:
    """Lens temporaries budget: a quarter of the free GPU memory (at most 4 GiB), 256 MiB on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(min(free // 4, 4 << 30))
    return 256 << 20


def _run_chunks(unembedding, hidden, out_ids, mode, top_k, dola, c, sub, res) -> None:
    """The chunk loop of compute_lens: logits of ``c`` tokens at a time, statistics ``sub`` at a time."""
    n, nl, _ = hidden.shape
    V = unembedding.vocab_size
    buf = None
    for s in range(0, n, c):
        logits = unembedding.logits(hidden[s : s + c], mode=mode)
        if buf is None:
            shape = (min(sub, logits.shape[0]), nl, V)
            buf = {k: logits.new_empty(shape) for k in ("lp", "p", "m", "t2") + (("mk",) if dola else ())}
        ids = (torch.full((logits.shape[0],), -1, device=logits.device) if out_ids is None
               else out_ids[s : s + c].to(logits.device).long())
        for a in range(0, logits.shape[0], sub):
            b = min(a + sub, logits.shape[0])
            rows = {k: v[s + a : s + b] for k, v in res.items()}
            _sub_stats(logits[a:b], ids[a:b], top_k, dola, buf, rows)
        del logits


@torch.no_grad()
def compute_lens(
    unembedding: Unembedding,
    hidden: torch.Tensor,
    out_ids: torch.Tensor | None,
    mode: str = "final_norm",
    top_k: int = 10,
    dola: bool = False,
    chunk_bytes: int | None = None,
) -> LensResult:
    """Lens statistics for ``hidden`` (N, L+1, D); ``out_ids`` (N,) the emitted tokens; where an id is
    negative (or out_ids is None) the token's own last-layer argmax is used (prompt positions)."""
    n, nl, _ = hidden.shape
    V = unembedding.vocab_size
    if top_k > V:
        raise ValueError(f"top_k={top_k} exceeds the vocabulary size {V}")
    if chunk_bytes is None:
        chunk_bytes = default_chunk_bytes(hidden.device if hidden.is_cuda else unembedding.device)
    # the logits of a chunk (one matmul, so the head streams from memory once per chunk) + the
    # statistics' 5 scratch buffers of a sub-chunk (the whole chunk on a GPU; a cache-sized slice on a CPU)
    per_token = nl * V * 4
    dev = unembedding.device if not hidden.is_cuda else hidden.device
    on_cpu = torch.device(dev).type == "cpu"
    c = max(1, int(chunk_bytes // (per_token * (2 if on_cpu else 6))))
    sub = max(1, min(c, _CPU_SUB_BYTES // per_token)) if on_cpu else c
    k_ = top_k
    res = {k: torch.empty((n, nl), dtype=torch.float32) for k in
           ("p_out", "logit_out", "top1_prob", "entropy", "js_prev", "js_final", "kl_final")}
    res.update({k: torch.empty((n, nl), dtype=torch.int64) for k in ("rank_out", "top1_id")})
    res["topk_ids"] = torch.empty((n, nl, k_), dtype=torch.int64)
    res["topk_probs"] = torch.empty((n, nl, k_), dtype=torch.float32)
    if dola:
        res["js_dola"] = torch.empty((n, nl), dtype=torch.float32)
    res = {k: v.to(dev) for k, v in res.items()}
    res["js_prev"][:, 0] = float("nan")
    if dola:
        res["js_dola"][:, 0] = float("nan")
    with _flush_denormals(on_cpu):
        _run_chunks(unembedding, hidden, out_ids, mode, top_k, dola, c, sub, res)
    if n == 0:
        z = np.zeros((0, nl), np.float32)
        zi = np.zeros((0, nl), np.int32)
        return LensResult(mode, z, z, zi, zi, z, z, z, z, z, z if dola else None,
                          np.zeros((0, nl, top_k), np.int32), np.zeros((0, nl, top_k), np.float32))
    cat = {k: v.cpu().numpy() for k, v in res.items()}
    f32 = lambda k: cat[k].astype(np.float32, copy=False)  # noqa: E731
    i32 = lambda k: cat[k].astype(np.int32, copy=False)  # noqa: E731
    return LensResult(
        mode=mode, p_out=f32("p_out"), logit_out=f32("logit_out"), rank_out=i32("rank_out"),
        top1_id=i32("top1_id"), top1_prob=f32("top1_prob"), entropy=f32("entropy"), js_prev=f32("js_prev"),
        js_final=f32("js_final"), kl_final=f32("kl_final"), js_dola=f32("js_dola") if dola else None,
        topk_ids=i32("topk_ids"), topk_probs=f32("topk_probs"),
    )
