"""Causal tracing of one sample, exactly and fast.

Three kinds of run share one text decoder call (:func:`ingest.trace.hooks.decoder_inputs` takes over
the decoder's inputs, so the vision tower runs once): the clean run (every site recorded), the
corrupted run(s) (one per noise draw; one for a swap) and the restored runs, where the clean value of
a site is written back at some positions and layers of a corrupted run. The score is the softmax
probability of the answer (the clean run's greedy first token) at the last position.

Exact shortcuts (no number changes; docs/tracing.md explains why):

1. Positions before the first corrupted position: when every site there is bitwise equal in the
   clean and the corrupted run (a causal mask), restoring them restores identical values, so
   p_restored = p_corrupt exactly; such rows are recorded with ``computed = False`` and no forward.
   The equality is checked on the sample's own runs, so a bidirectional prefix (a prefix-LM mask)
   is detected from the model itself and every position is computed.
2. When, in addition, the decoder is handed a plain padding mask (it builds its causal mask itself),
   a restoration at positions starting at q re-uses the corrupted run's key/value cache for
   positions < q (identical there) and runs only positions q..T-1.
3. Restored variants run as rows of one batch; only the last position's logits are computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .corrupt import Corruption, TraceError, corrupted_embeddings, embedding_std
from .hooks import KIND_NAMES, add_site_hook, decoder_inputs


@dataclass
class TraceSettings:
    """What ``kevo trace`` restores and how (every field is recorded in ``trace_runs.params``)."""

    corruption: Corruption
    """The corruption (see :mod:`ingest.trace.corrupt`)."""
    kinds: tuple[str, ...] = KIND_NAMES
    """Restored kinds: 'hidden' (residual stream after layer l, 0 = embeddings), 'mlp', 'attn' (block outputs)."""
    window: int = 1
    """W consecutive layers restored together, centred on the row's layer (ROME's rule: l - W//2 ..
    l - W//2 + W - 1), clipped at the ends; the restored layers are recorded per row."""
    noise_samples: int = 1
    """Noise corruptions: seeded draws, restored probabilities averaged over them (ROME uses 10)."""
    seed: int = 0
    """Seed of the noise draws (per sample: seeded by (seed, sample_id))."""
    patch_group: int = 1
    """Image positions are restored in groups of R x R patches of the vision grid (R = patch_group)."""
    batch_rows: int = 32
    """Restored runs per decoder batch (memory: batch_rows x sequence x hidden per layer)."""
    shortcuts: bool = True
    """The exact shortcuts (skip the unaffected prefix, re-use its cache). Off: every row computed in full."""

    def __post_init__(self):
        self.kinds = tuple(self.kinds)
        bad = [k for k in self.kinds if k not in KIND_NAMES]
        if bad or not self.kinds:
            raise TraceError(f"--kinds {','.join(self.kinds)}: unknown kind {bad[0] if bad else ''!r}; choose from "
                             f"{', '.join(KIND_NAMES)}")
        if self.window < 1:
            raise TraceError(f"--window {self.window}: must be >= 1")
        if self.noise_samples < 1 or (not self.corruption.is_noise and self.noise_samples != 1):
            raise TraceError(f"--noise-samples {self.noise_samples}: must be >= 1, and 1 for a swap")
        if self.patch_group < 1:
            raise TraceError(f"--patch-group {self.patch_group}: must be >= 1")

    def check_model(self, n_layers: int) -> None:
        if self.window > n_layers:
            raise TraceError(f"--window {self.window} is larger than the model ({n_layers} decoder layers)")


def window_layers(kind: str, layer: int, window: int, n_layers: int) -> list[int]:
    """The layers restored for a row at ``layer``: ROME's window, clipped to the kind's range."""
    lo = 0 if kind == "hidden" else 1
    a = layer - window // 2
    return list(range(max(lo, a), min(n_layers, a + window - 1) + 1))


@dataclass
class TraceRow:
    kind: str
    layer: int
    window_layers: list[int]
    positions: list[int]
    computed: bool
    p_restored: float


@dataclass
class SampleTrace:
    """One sample's trace: the run-level numbers and one row per (kind, layer, restored unit)."""

    answer_id: int
    p_clean: float
    p_corrupt: float
    p_corrupt_draws: list[float]
    corrupted_positions: list[int]
    n_positions: int
    causal_prefix: bool
    kv_cache: bool
    rows: list[TraceRow] = field(default_factory=list)
    n_forward_rows: int = 0
    n_forward_tokens: int = 0


def _softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    return cap * torch.tanh(logits / cap) if cap else logits


def _expand_batch(v, B: int, key: str = ""):
    if torch.is_tensor(v):
        if key == "position_ids" and v.ndim == 3:  # (k, 1, T) multimodal rotary positions
            return v.expand(v.shape[0], B, v.shape[2])
        if v.ndim >= 1 and v.shape[0] == 1 and B != 1:
            return v.expand(B, *v.shape[1:])
        return v
    if isinstance(v, dict):
        return {k: _expand_batch(x, B, k) for k, x in v.items()}
    return v


class SampleState:
    """Everything the restored runs of one sample need (clean sites, corrupted caches)."""

    def __init__(self):
        self.kw: dict = {}
        self.clean_embeds: torch.Tensor | None = None
        self.corrupt_embeds: torch.Tensor | None = None  # (n_draws, T, D)
        self.clean_sites: dict[tuple[str, int], torch.Tensor] = {}
        self.caches: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer (n_draws, H, T, d)
        self.answer_id = -1
        self.p_clean = float("nan")
        self.p_corrupt_draws: list[float] = []
        self.first_corrupted = 0
        self.causal_prefix = False
        self.kv_cache = False
        self.T = 0
        self.n_forward_rows = 0
        self.n_forward_tokens = 0


class Tracer:
    """Causal tracing with one model adapter (:class:`ingest.models.base.Adapter`)."""

    def __init__(self, adapter, settings: TraceSettings):
        self.ad = adapter
        self.settings = settings
        settings.check_model(adapter.n_layers)
        self._sigma: float | None = None

    @property
    def sigma(self) -> float:
        """Standard deviation of the token embeddings (the noise unit)."""
        if self._sigma is None:
            self._sigma = embedding_std(self.ad.model.get_input_embeddings())
        return self._sigma

    def all_sites(self) -> list[tuple[str, int]]:
        L = self.ad.n_layers
        return [("hidden", ly) for ly in range(L + 1)] + [(k, ly) for k in ("mlp", "attn") for ly in range(1, L + 1)]

    # ---- decoder runs --------------------------------------------------------------------------
    def _decode(self, st: SampleState, embeds: torch.Tensor, *, start: int = 0, cache=None,
                use_cache: bool = False, hooks: list | None = None):
        """Run the decoder on rows ``embeds`` (B, S, D) covering positions start..T-1 (start > 0 only
        with a cache of positions < start) -> (probabilities of the answer (B,), output)."""
        ad = self.ad
        B, S, _ = embeds.shape
        kw = {k: v for k, v in st.kw.items() if k not in ("inputs_embeds", "past_key_values", "use_cache",
                                                          "cache_position", "return_dict")}
        if start > 0 or cache is not None:
            kw["attention_mask"] = torch.ones(B, st.T, dtype=torch.long, device=embeds.device)
            pid = kw.get("position_ids")
            if pid is not None:
                kw["position_ids"] = _expand_batch(pid[..., start:], B, "position_ids")
        else:
            kw = {k: _expand_batch(v, B, k) for k, v in kw.items()}
        handles = [add_site_hook(ad, kind, layer, fn) for kind, layer, fn in (hooks or [])]
        try:
            with torch.no_grad():
                out = ad.decoder(inputs_embeds=embeds, past_key_values=cache, use_cache=use_cache,
                                 return_dict=True, **kw)
                last = out.last_hidden_state[:, -1]
                logits = _softcap(ad.lm_head(last).float(), ad.final_logit_softcapping)
                probs = torch.softmax(logits, -1)
        finally:
            for h in handles:
                h.remove()
        self.ad_rows = B
        st.n_forward_rows += B
        st.n_forward_tokens += B * S
        return probs, out

    @staticmethod
    def _recorder(store: dict, key, sl: slice = slice(None)):
        def fn(t):
            store[key] = t[0, sl].detach().clone()
            return None
        return fn

    # ---- one sample -----------------------------------------------------------------------------
    def prepare(self, inputs: dict, corrupted_positions: list[int], *, sample_id: int = 0,
                replacement_id: int | None = None) -> SampleState:
        """The clean run, the corrupted run(s) and the prefix check for one unpadded sample's inputs
        (``adapter.generate_inputs(adapter.encode([text], [image]))``)."""
        s = self.settings
        st = SampleState()
        st.kw = decoder_inputs(self.ad, inputs)
        emb = st.kw["inputs_embeds"]
        if emb.shape[0] != 1:
            raise TraceError("trace one sample at a time (a batch of 1, unpadded)")
        st.T = emb.shape[1]
        st.clean_embeds = emb[0]
        if not corrupted_positions:
            raise TraceError("nothing to corrupt: no corrupted positions")
        st.first_corrupted = min(corrupted_positions)
        # clean run: every site recorded
        rec: dict = {}
        probs, _ = self._decode(st, emb, hooks=[(k, ly, self._recorder(rec, (k, ly))) for k, ly in self.all_sites()])
        st.clean_sites = rec
        st.answer_id = int(probs[0].argmax())
        st.p_clean = float(probs[0, st.answer_id])
        # corrupted run(s)
        repl = None
        if s.corruption.kind == "swap":
            if replacement_id is None:
                raise TraceError("swap corruption needs a replacement token id")
            repl = self.ad.model.get_input_embeddings()(torch.tensor([replacement_id], device=emb.device))[0]
        st.corrupt_embeds = corrupted_embeddings(
            st.clean_embeds, s.corruption, corrupted_positions, replacement=repl,
            sigma=self.sigma if s.corruption.is_noise else None, n_samples=s.noise_samples, seed=s.seed,
            sample_id=sample_id)
        p0 = st.first_corrupted
        plain_mask = st.kw.get("attention_mask") is None or (torch.is_tensor(st.kw["attention_mask"])
                                                             and st.kw["attention_mask"].ndim == 2)
        causal = s.shortcuts
        keys, values = [], []
        for d in range(st.corrupt_embeds.shape[0]):
            prefix: dict = {}
            hooks = [(k, ly, self._recorder(prefix, (k, ly), slice(0, p0))) for k, ly in self.all_sites()]
            probs, out = self._decode(st, st.corrupt_embeds[d:d + 1], use_cache=True, hooks=hooks)
            st.p_corrupt_draws.append(float(probs[0, st.answer_id]))
            causal = causal and all(torch.equal(prefix[key], rec[key][:p0]) for key in prefix)
            if s.shortcuts and plain_mask:
                kv = _cache_tensors(out.past_key_values, self.ad.n_layers)
                if kv is None:
                    plain_mask = False
                else:
                    keys.append([k for k, _ in kv])
                    values.append([v for _, v in kv])
        st.causal_prefix = bool(causal)
        st.kv_cache = bool(causal and plain_mask and s.shortcuts)
        if st.kv_cache:
            st.caches = [(torch.cat([keys[d][i] for d in range(len(keys))]),
                          torch.cat([values[d][i] for d in range(len(values))])) for i in range(self.ad.n_layers)]
        return st

    def restore(self, st: SampleState, specs: list[tuple[str, list[int], list[int]]]) -> np.ndarray:
        """p(answer) of restored runs, averaged over the noise draws: one value per spec
        (kind, layers, positions): the clean values of ``kind`` at ``layers`` x ``positions`` written
        into the corrupted run(s). Specs are batched in groups that share their first position."""
        n_draws = st.corrupt_embeds.shape[0]
        out = np.zeros(len(specs))
        by_start: dict[int, list[int]] = {}
        for i, (_, _, pos) in enumerate(specs):
            by_start.setdefault(min(pos), []).append(i)
        for q, idx in sorted(by_start.items()):
            rows = [(i, d) for i in idx for d in range(n_draws)]
            for c in range(0, len(rows), self.settings.batch_rows):
                chunk = rows[c:c + self.settings.batch_rows]
                p = self._restored_rows(st, specs, chunk, q)
                for (i, _), v in zip(chunk, p):
                    out[i] += v / n_draws
        return out

    def _restored_rows(self, st: SampleState, specs, chunk: list[tuple[int, int]], q: int) -> list[float]:
        draws = torch.tensor([d for _, d in chunk], device=st.corrupt_embeds.device)
        start = q if st.kv_cache else 0
        embeds = st.corrupt_embeds[draws, start:]
        cache = None
        if st.kv_cache and start > 0:
            from transformers import DynamicCache

            d0 = chunk[0][1]
            if all(d == d0 for _, d in chunk):  # one corrupted run for every row (swap, or one draw): views,
                B = len(chunk)                  # no per-row copy of the prefix (the cache copies it once)
                cache = DynamicCache([(k[d0:d0 + 1, :, :start].expand(B, -1, -1, -1),
                                       v[d0:d0 + 1, :, :start].expand(B, -1, -1, -1)) for k, v in st.caches])
            else:
                cache = DynamicCache([(k[draws, :, :start], v[draws, :, :start]) for k, v in st.caches])
        by_site: dict[tuple[str, int], list[tuple[int, list[int]]]] = {}
        for r, (i, _) in enumerate(chunk):
            kind, layers, pos = specs[i]
            for ly in layers:
                by_site.setdefault((kind, ly), []).append((r, pos))
        hooks = []
        for (kind, ly), items in by_site.items():
            hooks.append((kind, ly, self._patcher(st.clean_sites[(kind, ly)], items, start)))
        probs, _ = self._decode(st, embeds, start=start, cache=cache, hooks=hooks)
        return probs[:, st.answer_id].tolist()

    @staticmethod
    def _patcher(clean: torch.Tensor, items: list[tuple[int, list[int]]], start: int):
        dev = clean.device
        groups: dict[tuple[int, ...], list[int]] = {}
        for r, pos in items:
            groups.setdefault(tuple(pos), []).append(r)
        prepared = [(torch.tensor(rs, device=dev), torch.tensor(pos, device=dev)) for pos, rs in groups.items()]

        def fn(t):
            t = t.clone()
            for rs, pos in prepared:
                vals = clean[pos].to(t.dtype)
                t[rs[:, None], (pos - start)[None, :]] = vals[None].expand(len(rs), *vals.shape)
            return t
        return fn

    def units(self, st: SampleState, image_positions: list[int], grid: np.ndarray | None) -> list[list[int]]:
        """What a row restores: one text position, or a patch group (R x R) of image positions."""
        R = self.settings.patch_group
        img = set(image_positions)
        groups: dict[tuple[int, int], list[int]] = {}
        out: list[list[int]] = []
        for j, p in enumerate(image_positions):
            if grid is not None and j < len(grid) and grid[j][0] >= 0:
                key = (int(grid[j][0]) // R, int(grid[j][1]) // R)
            else:
                key = (-1, p)
            if key not in groups:
                groups[key] = []
                out.append(groups[key])
            groups[key].append(p)
        out += [[p] for p in range(st.T) if p not in img]
        return sorted(out, key=min)

    def trace(self, st: SampleState, image_positions: list[int] = (), grid: np.ndarray | None = None,
              progress: Callable[[int], None] | None = None) -> SampleTrace:
        """Every (kind, layer, unit) row of one prepared sample."""
        s = self.settings
        L = self.ad.n_layers
        p_corrupt = float(np.mean(st.p_corrupt_draws))
        res = SampleTrace(answer_id=st.answer_id, p_clean=st.p_clean, p_corrupt=p_corrupt,
                          p_corrupt_draws=list(st.p_corrupt_draws), corrupted_positions=[],
                          n_positions=st.T, causal_prefix=st.causal_prefix, kv_cache=st.kv_cache)
        cells = [(k, ly) for k in s.kinds for ly in (range(L + 1) if k == "hidden" else range(1, L + 1))]
        specs, meta = [], []
        for unit in self.units(st, list(image_positions), grid):
            skip = st.causal_prefix and max(unit) < st.first_corrupted
            for kind, ly in cells:
                wl = window_layers(kind, ly, s.window, L)
                meta.append((kind, ly, wl, unit, not skip))
                if not skip:
                    specs.append((kind, wl, unit))
        values = self.restore(st, specs) if specs else np.zeros(0)
        it = iter(values.tolist())
        for kind, ly, wl, unit, computed in meta:
            p = next(it) if computed else p_corrupt
            res.rows.append(TraceRow(kind, ly, wl, list(unit), computed, p))
        res.n_forward_rows = st.n_forward_rows
        res.n_forward_tokens = st.n_forward_tokens
        if progress:
            progress(1)
        return res


def _cache_tensors(cache, n_layers: int):
    """[(keys, values)] per layer of a transformers cache, or None when it is not a plain full cache."""
    try:
        layers = getattr(cache, "layers", None)
        if layers is None or len(layers) != n_layers:
            return None
        out = []
        for lay in layers:
            if type(lay).__name__ != "DynamicLayer":  # sliding-window layers drop old positions
                return None
            out.append((lay.keys, lay.values))
        return out
    except Exception:  # noqa: BLE001 - an unknown cache type: no cache re-use
        return None
