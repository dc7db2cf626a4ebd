"""MultEdit's three steps: the key, the target value, the closed-form update (docs/editing.md).

Blocks are numbered as in the traces table: block ``l`` (1..L) is decoder layer ``l - 1``, whose
output is the hidden state ``l``; the module edited is that block's MLP output projection.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ingest.models import ModelError
from ingest.models.base import Adapter

from .locate import continue_text, edit_text, key_position
from .requests import EditRequest


@dataclass
class EditSettings:
    """The edit's parameters (recorded in ``edit.json``); defaults are the released ones."""

    layer: int = 3
    """MLP block to edit, 1..L (block l is decoder layer l-1; the released default, layers.2, is block 3)."""
    lam: float = 0.01
    """Ridge weight: how strongly the new weight is held to the old one."""
    lr: float = 0.1
    """Adam learning rate of the target-value optimisation."""
    steps: int = 10
    """Adam steps of the target-value optimisation."""
    decay: float = 1e-3
    """Weight of the decay term ``||delta|| / ||v0||^2``."""
    clamp: float = 4.0
    """``||delta||`` is clipped to ``clamp * ||v0||`` after every step."""

    def as_json(self) -> dict:
        return asdict(self)


@dataclass
class EditTarget:
    """One request's key and value, and what the model gave before."""

    request: EditRequest
    prompt_text: str
    position: int  # the last constraint token, in the input sequence
    target_id: int  # the first token of the target answer
    key: torch.Tensor  # (d_ff,) float64: the input of down_proj at `position`
    v0: torch.Tensor  # (d_model,) float64: down_proj's output there
    value: torch.Tensor  # (d_model,) float64: v0 + delta
    p_before: float  # p(target_id) at the last position, unedited
    p_value: float  # p(target_id) with `value` written at `position` (what the update aims for)
    losses: list[float] = field(default_factory=list)


def output_projection(ad: Adapter, block: int) -> nn.Linear:
    """The MLP output projection of decoder block ``block`` (1..L)."""
    if not 1 <= block <= ad.n_layers:
        raise ModelError(f"--layer {block}: the model has MLP blocks 1..{ad.n_layers}")
    layer = ad.layers[block - 1]
    for path in ("mlp.down_proj", "mlp.fc2", "fc2", "mlp.c_proj"):
        mod = layer
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if isinstance(mod, nn.Linear):
            return mod
    raise ModelError(f"{ad.family}: decoder block {block} has no MLP output projection kevo knows "
                     "(mlp.down_proj, mlp.fc2, fc2, mlp.c_proj)")


def module_name(ad: Adapter, mod: nn.Module) -> str:
    return next(n for n, m in ad.model.named_modules() if m is mod)


def target_token(ad: Adapter, prompt_text: str, target: str) -> int:
    """The first token of ``target`` as the model would emit it right after the prompt."""
    tok = ad.tokenizer
    base = tok(prompt_text, add_special_tokens=False)["input_ids"]
    full = tok(continue_text(prompt_text, target), add_special_tokens=False)["input_ids"]
    if len(full) <= len(base) or full[: len(base)] != base:
        raise ModelError(f"target {target!r} tokenizes to nothing after the prompt")
    return int(full[len(base)])


def _inputs(ad: Adapter, prompt_text: str, image) -> dict:
    return ad.generate_inputs(ad.encode([prompt_text], None if image is None else [image]))


@contextmanager
def _hook(mod: nn.Module, fn):
    h = mod.register_forward_hook(fn)
    try:
        yield
    finally:
        h.remove()


def last_logprobs(ad: Adapter, inputs: dict) -> torch.Tensor:
    """log-softmax of the last position's logits (float64), one forward, no cache."""
    out = ad.model(**inputs, use_cache=False, logits_to_keep=1) if _takes_logits_to_keep(ad) \
        else ad.model(**inputs, use_cache=False)
    return torch.log_softmax(out.logits[0, -1].double(), -1)


def _takes_logits_to_keep(ad: Adapter) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(ad.model.forward).parameters


def load_image(path):
    if path is None:
        return None
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def compute_target(ad: Adapter, req: EditRequest, settings: EditSettings, question: str | None = None
                   ) -> EditTarget:
    """Key, v0 and the optimised value of one request."""
    question = req.question if question is None else question
    image = load_image(req.image)
    prompt_text = edit_text(ad, question, req.prefix, image is not None)
    tid = target_token(ad, prompt_text, req.target)
    proj = output_projection(ad, settings.layer)
    inputs = _inputs(ad, prompt_text, image)
    pos = key_position(ad, inputs["input_ids"][0].tolist(), question, req.prefix, req.constraint, req.constraint_in)
    seen = {}

    def grab(mod, args, out):
        seen["k"] = args[0][0, pos].detach().double()
        seen["v0"] = out[0, pos].detach().double()

    with torch.no_grad(), _hook(proj, grab):
        p_before = float(last_logprobs(ad, inputs)[tid].exp())
    k, v0 = seen["k"], seen["v0"]

    delta = torch.zeros_like(v0, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=settings.lr)
    max_norm = settings.clamp * float(v0.norm())

    def write(mod, args, out):
        out = out.clone()
        out[0, pos] = out[0, pos] + delta.to(out.dtype)
        return out

    losses = []
    frozen = [p for p in ad.model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with _hook(proj, write):
            for _ in range(settings.steps):
                opt.zero_grad()
                nll = -last_logprobs(ad, inputs)[tid]
                loss = nll + settings.decay * delta.double().norm() / v0.norm() ** 2
                loss.backward()
                opt.step()
                with torch.no_grad():
                    n = float(delta.norm())
                    if n > max_norm:
                        delta.mul_(max_norm / n)
                losses.append(float(nll.detach()))
            with torch.no_grad():
                p_value = float(last_logprobs(ad, inputs)[tid].exp())
    finally:
        for p in frozen:
            p.requires_grad_(True)
    value = v0 + delta.detach().double()
    return EditTarget(req, prompt_text, pos, tid, k, v0, value, p_before, p_value, losses)


def ridge_update(W: torch.Tensor, K: torch.Tensor, V: torch.Tensor, lam: float) -> torch.Tensor:
    """argmin_W' ||K W'^T - V||^2 + lam ||W' - W||^2, in float64.

    The normal equations give ``W'^T = (K^T K + lam I)^-1 (K^T V + lam W^T)``; solved here through the
    equivalent n x n system (n = number of keys), ``W'^T = W^T + K^T (K K^T + lam I)^-1 (V - K W^T)``,
    so the cost does not grow with the MLP's width squared.
    """
    W, K, V = W.double(), K.double(), V.double()
    if lam <= 0:
        raise ValueError(f"lambda must be > 0, got {lam}")
    gram = K @ K.T + lam * torch.eye(K.shape[0], dtype=torch.float64, device=K.device)
    resid = V - K @ W.T
    return W + (K.T @ torch.linalg.solve(gram, resid)).T


@dataclass
class EditResult:
    settings: EditSettings
    module: str
    targets: list[EditTarget]
    delta_norm: float  # ||W' - W||_F
    weight_norm: float  # ||W||_F


def multedit(ad: Adapter, requests: list[EditRequest], settings: EditSettings) -> EditResult:
    """Edit ``ad.model`` in place for all requests at once (batched keys)."""
    proj = output_projection(ad, settings.layer)
    targets = [compute_target(ad, r, settings) for r in requests]
    K = torch.stack([t.key for t in targets])
    V = torch.stack([t.value for t in targets])
    W = proj.weight.detach().clone()  # a copy: the weight is overwritten below
    new = ridge_update(W, K, V, settings.lam)
    with torch.no_grad():
        proj.weight.copy_(new.to(W.dtype))
    return EditResult(settings, module_name(ad, proj), targets, float((new - W.double()).norm()),
                      float(W.double().norm()))


def answer_probability(ad: Adapter, prompt_text: str, image, target_id: int) -> tuple[float, int]:
    """p(target_id) at the last position and its rank (1 = the model's greedy choice)."""
    with torch.no_grad():
        lp = last_logprobs(ad, _inputs(ad, prompt_text, image))
    return float(lp[target_id].exp()), int((lp > lp[target_id]).sum()) + 1


def as_record(t: EditTarget) -> dict:
    return {**t.request.as_json(), "prompt_text": t.prompt_text, "position": t.position, "target_id": t.target_id,
            "p_target_before": t.p_before, "p_target_with_value": t.p_value,
            "key_norm": float(t.key.norm()), "v0_norm": float(t.v0.norm()),
            "delta_norm": float((t.value - t.v0).norm()), "losses": t.losses}


def describe(result: EditResult) -> dict:
    return {"method": "multedit", "module": result.module, **result.settings.as_json(),
            "weight_delta_norm": result.delta_norm, "weight_norm": result.weight_norm,
            "requests": [as_record(t) for t in result.targets]}


__all__ = ["EditResult", "EditSettings", "EditTarget", "answer_probability", "describe", "multedit",
           "output_projection", "ridge_update", "target_token"]
