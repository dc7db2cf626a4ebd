"""Corruptions: what makes the corrupted run forget the answer.

- ``swap:WORD``: every constraint token replaced, one for one, by the first piece of WORD (lengths and
  positions unchanged; deterministic). This is the multimodal study's released default ("Paris").
- ``noise:K``: Gaussian noise N(0, (K sigma)^2) added to the constraint tokens' input embeddings,
  sigma = the standard deviation of the model's token embeddings (ROME's corruption, K = 3 there);
  ``noise_samples`` seeded draws, the restored probabilities averaged over them.
- ``image-noise:K``: the same noise on the image tokens' input embeddings.

The input embeddings are what the text decoder is handed (``inputs_embeds``: token embeddings with
the projected image features merged in), so a swap is the embedding row of the replacement token
written at the constraint positions: the vision tower runs once, for the clean run only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kevo_store.errors import KevoError

KINDS = ("swap", "noise", "image-noise")


class TraceError(KevoError):
    """A causal-tracing request that cannot run: the message names the culprit."""


@dataclass(frozen=True)
class Corruption:
    """A parsed ``--corrupt`` value."""

    kind: str
    """'swap', 'noise' or 'image-noise'."""
    word: str | None = None
    """swap: the replacement word."""
    scale: float | None = None
    """noise / image-noise: K, the noise's standard deviation in units of sigma."""

    @property
    def spec(self) -> str:
        return f"swap:{self.word}" if self.kind == "swap" else f"{self.kind}:{self.scale:g}"

    @property
    def on_image(self) -> bool:
        return self.kind == "image-noise"

    @property
    def is_noise(self) -> bool:
        return self.kind in ("noise", "image-noise")


def parse_corruption(value: str) -> Corruption:
    kind, sep, arg = value.partition(":")
    kind = kind.strip()
    if kind not in KINDS or not sep or not arg.strip():
        raise TraceError(f"--corrupt {value!r}: expected swap:WORD, noise:K or image-noise:K")
    if kind == "swap":
        return Corruption("swap", word=arg.strip())
    try:
        k = float(arg)
    except ValueError:
        raise TraceError(f"--corrupt {value!r}: the noise scale K must be a number") from None
    if not k > 0:
        raise TraceError(f"--corrupt {value!r}: the noise scale K must be > 0")
    return Corruption(kind, scale=k)


def embedding_std(embed: torch.nn.Module, chunk: int = 8192) -> float:
    """Standard deviation of every coordinate of every token embedding, as the decoder receives them
    (the embedding module's own output, so a scaled embedding such as Gemma 3's is included)."""
    w = embed.weight
    n = w.shape[0]
    s = torch.zeros((), dtype=torch.float64)
    s2 = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, n, chunk):
            e = embed(torch.arange(i, min(n, i + chunk), device=w.device)).double().cpu()
            s += e.sum()
            s2 += (e * e).sum()
    count = n * w.shape[1]
    mean = s / count
    return float(((s2 / count - mean * mean) * count / (count - 1)).clamp_min(0).sqrt())


def noise_draws(shape: tuple[int, ...], n: int, seed: int, sample_id: int) -> torch.Tensor:
    """(n, *shape) standard normal draws, float32 on the CPU, from a generator seeded by (seed,
    sample_id): a sample's noise does not depend on which other samples are traced with it."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(sample_id))
    return torch.randn((n, *shape), generator=g, dtype=torch.float32)


def corrupted_embeddings(clean: torch.Tensor, corruption: Corruption, positions: list[int], *,
                         replacement: torch.Tensor | None = None, sigma: float | None = None,
                         n_samples: int = 1, seed: int = 0, sample_id: int = 0) -> torch.Tensor:
    """(n_draws, T, D) corrupted input embeddings from the clean (T, D) ones.

    swap: one draw, ``replacement`` (D,) written at ``positions``. noise: ``n_samples`` draws of
    clean + K sigma eps at ``positions`` (eps seeded, see :func:`noise_draws`)."""
    pos = torch.as_tensor(positions, dtype=torch.long, device=clean.device)
    if corruption.kind == "swap":
        out = clean.clone()[None]
        out[0, pos] = replacement.to(clean.dtype)
        return out
    eps = noise_draws((len(positions), clean.shape[-1]), n_samples, seed, sample_id).to(clean.device)
    out = clean[None].repeat(n_samples, 1, 1)
    noise = (corruption.scale * sigma) * eps
    out[:, pos] = (out[:, pos].float() + noise).to(clean.dtype)
    return out
