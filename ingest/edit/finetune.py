"""The fine-tuning baselines MultEdit is compared with: the same block's output projection trained
on the requests directly, with and without a constraint on how far each weight may move.

- ``ft``: Adam on ``-sum log p(first token of the target)`` over the requests;
- ``ft-constrained``: the same, with every entry of ``W' - W`` clipped to ``[-eps, eps]`` after each
  step (an L-infinity ball around the original weight).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ingest.models.base import Adapter

from .locate import continue_text
from .multedit import _inputs, last_logprobs, load_image, output_projection, target_token
from .requests import EditRequest


@dataclass
class FinetuneSettings:
    layer: int = 3
    """MLP block whose output projection is trained (1..L)."""
    lr: float = 5e-4
    """Adam learning rate."""
    steps: int = 25
    """Adam steps over all requests."""
    eps: float | None = None
    """L-infinity bound on each weight's change (None: unconstrained)."""

    @property
    def method(self) -> str:
        return "ft" if self.eps is None else "ft-constrained"

    def as_json(self) -> dict:
        return {"method": self.method, **asdict(self)}


def finetune(ad: Adapter, requests: list[EditRequest], settings: FinetuneSettings) -> dict:
    """Train ``ad.model``'s block in place; returns the record for edit.json."""
    proj = output_projection(ad, settings.layer)
    batch = []
    for r in requests:
        image = load_image(r.image)
        text = ad.build_prompt(r.question, image is not None)
        text = continue_text(text, r.prefix) if r.prefix else text
        batch.append((_inputs(ad, text, image), target_token(ad, text, r.target), r))
    W0 = proj.weight.detach().clone()
    others = [p for p in ad.model.parameters() if p.requires_grad and p is not proj.weight]
    for p in others:
        p.requires_grad_(False)
    proj.weight.requires_grad_(True)
    opt = torch.optim.Adam([proj.weight], lr=settings.lr)
    losses = []
    try:
        for _ in range(settings.steps):
            opt.zero_grad()
            loss = sum(-last_logprobs(ad, inputs)[tid] for inputs, tid, _ in batch)
            loss.backward()
            opt.step()
            if settings.eps is not None:
                with torch.no_grad():
                    proj.weight.copy_(W0 + (proj.weight - W0).clamp(-settings.eps, settings.eps))
            losses.append(float(loss.detach()))
    finally:
        for p in others:
            p.requires_grad_(True)
    delta = (proj.weight.detach().double() - W0.double()).norm()
    return {**settings.as_json(), "module": next(n for n, m in ad.model.named_modules() if m is proj),
            "weight_delta_norm": float(delta), "weight_norm": float(W0.double().norm()), "losses": losses,
            "requests": [r.as_json() for _, _, r in batch]}
