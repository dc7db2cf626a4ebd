"""Seeded, reproducible CPU training of the organism.

Recipe (documented in README.md next to this file), LLaVA's stages on the world's *train* split:
a vision tower pretrained on the images; (i) the decoder as a text-only language model of the
world's captions and of existence questions asked after a caption (it learns to read); (ii') a
word-aligned projector (each image token made to look like the word its patch shows); yes/no
questions on images; (iii) captions ("Describe this image.") and questions, in LLaVA-1.5's llava_v1
conversation. Cross-entropy on the answer tokens (and the closing </s>) only; AdamW with linear
warm-up and cosine decay. Everything (world, initialisation, batch order) derives from one seed;
with the same seed and thread count the weights come out bit-identical.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ingest.organism import model as model_mod
from ingest.organism import tokenizer as tok_mod
from ingest.organism import world

WEIGHTS_DIR = Path(__file__).parent / "weights"
"""Where the shipped organism lives (a standard Hugging Face model directory)."""
LLM_DIR = Path(__file__).parent / "weights-llm"
"""Its language model: the text-only decoder of stage (i), before it saw an image (a causal-LM directory)."""


@dataclass
class TrainConfig:
    """Training hyper-parameters. The defaults produced the shipped weights."""

    seed: int = 0
    """Seeds the world, the initialisation and the batch order."""
    steps: int = 750
    """Optimizer steps of stage 2 (the whole model but the vision tower, on captions and yes/no answers)."""
    batch_size: int = 32
    """Sequences per step."""
    lr: float = 2e-3
    """Peak learning rate (AdamW)."""
    warmup: int = 100
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay (not on norms or biases)."""
    n_images: int = 3000
    """Train-split images (drawn once, reused every epoch)."""
    vision_steps: int = 800
    """Stage 1 (LLaVA starts from a pretrained CLIP; the organism pretrains its own): steps of
    multi-label classification of (object, colour) pairs and the background from the vision
    tower's penultimate-layer features. The classifier head is thrown away afterwards."""
    vision_lr: float = 3e-3
    """Peak learning rate of stage 1."""
    caption_colours: bool = False
    """Name each object's colour in the captions ("a red apple") or not ("an apple"). Without
    colours the object token itself carries the decision (with them, "red" already decides most
    of "apple" and object tokens become bigram read-outs at layer 1); colours stay in the
    yes/no questions."""
    caption_share: float = 0.5
    """Share of sequences that are captions; the rest are yes/no questions."""
    threads: int = 1
    """torch intra-op threads. One is the reproducible default (bit-identical weights need the same
    thread count) and is faster than two on a busy 2-core machine."""
    label_smoothing: float = 0.0
    """Label smoothing of the answer-token cross-entropy (0, the shipped recipe: the model's own
    loss). With a less peaked final softmax the logit lens needs more of the layers' writes to reach
    top-1 p >= 0.5, which moved the first generation's critical layer up (median 4 -> 6); on the
    shipped recipe with a small ``embed_offset`` it keeps the grounded answers but loses the
    mutation contrast (X4 in README.md)."""
    tune_label_smoothing: float | None = None
    """Label smoothing of stage (iii) alone (None: ``label_smoothing``): the language model of stage (i)
    and the question stage learn with the model's own loss, so the reading they learn is untouched,
    while the instruction tuning's softmax is kept less peaked."""
    embed_init_std: float | None = None
    """Std of the decoder's input-embedding initialisation (None: the config's initializer_range,
    0.02, the shipped recipe). 1.0 keeps the token signal audible next to ``embed_offset`` after the
    first RMSNorm. (Alone, a large embedding moves the critical layer *down*: the embeddings learn
    the bigram table and the lens reads it at layer 0; see README.md.)"""
    embed_weight_decay: bool = False
    """Apply weight decay to the input embeddings (off keeps a large initial scale)."""
    embed_offset: float = 0.0
    """Added to coordinate 0 of every input-embedding row at initialisation: a large
    token-independent component of the residual stream, like the outlier ("rogue") dimensions of
    real transformers. It dominates the RMS that the logit lens divides by until the layers have
    written enough, so a lone early layer cannot make the lens confident (the first generation's
    +45 put its critical layers in the upper half; on the shipped recipe +45 lifts them only to
    median 2 and costs the existence answers and the captions, +15 changes nothing: X1, X3 in
    README.md)."""
    residual_init_scale: float = 1.0
    """Multiplies the initial o_proj and down_proj weights (GPT-2's 1/sqrt(2 * layers) residual
    scaling makes each layer's first writes small next to the embedding)."""
    lm_steps: int = 1000
    """Stage (i), as LLaVA starts from a pretrained LLM: steps of text-only language modelling of
    the world's sentences (the same conversations without the image). The co-occurrence prior is
    learnt here, in every layer; the decoder of this stage ships as the organism's LLM."""
    lm_lr: float = 3e-3
    """Peak learning rate of stage (i)."""
    lm_batch_size: int = 64
    """Sequences per step of stage (i) (text only: short)."""
    align_steps: int = 0
    """Stage (ii), LLaVA's feature alignment: steps training only the projector, on captions, with
    the decoder frozen."""
    align_lr: float = 3e-3
    """Peak learning rate of stage (ii)."""
    top_layers: int = 0
    """Stage (iii) (instruction tuning): the top decoder layers, the final norm and the LM head
    learn at ``top_lr_scale`` x the learning rate (0: frozen), so the grounding forms lower in the
    stack while the text prior stays in the top."""
    top_lr_scale: float = 0.0
    """Learning-rate multiplier of the top layers in stage (iii)."""
    top_blocks: str = "all"
    """Which parameters of the top layers are slow or frozen: ``all`` (the whole layer) or ``mlp`` (the
    MLP and its norm: the associative memory where a co-occurrence prior would be stored, while the
    attention that moves an answer to the last token keeps learning at the full rate)."""
    vqa: bool = False
    """Add single-word colour questions ("What is the colour of the flower?") to the train set."""
    relation: bool = False
    """Add the relation questions ("Is the car to the left of the tree in this image?") to the train set."""
    image_bias: float | None = None
    """P(partner | object) in the images of stages (ii)-(iii) (None: the world's ``TRAIN_BIAS``, as
    in the text of stage (i)). A text corpus and an image-instruction set need not share their
    co-occurrence statistics: with a weaker bias in the images, the grounding learnt in stage (iii)
    departs from the text prior the language model learnt in stage (i)."""
    balanced_existence: bool = True
    """Ask as many existence questions about absent objects (the biased partner first) as about
    present ones (off: five absent per image, so "No" is a prior worth 70%)."""
    lm_reading: bool = True
    """Stage (i) also reads: each question of the train split asked after the scene's caption (with
    colours) as text, "There is a red car and a blue cup on the sand. Is there a car in this
    image?", so the language model learns to answer from its context, as LLMs do before they
    are shown images; stage (iii) then has a circuit to answer from image tokens with."""
    lens_loss_layer: int = 0
    """Stage (iii) deep supervision (0: off): the logit lens at this decoder layer (final norm and
    LM head on its residual stream) is trained on the answer tokens too, so an answer formed in
    the middle of the stack is readable there, as in early-exit training."""
    lens_loss_weight: float = 0.0
    """Weight of that loss next to the model's own."""
    questions: str = "existence"
    """Which yes/no questions the train set asks: "all" (colour and existence, and ``relation``'s)
    or "existence" ("Is there a X in this image?" only; with ``balanced_existence`` half of them
    about present objects)."""
    lm_reading_only: bool = True
    """Stage (i)'s questions are only the reading ones (``lm_reading``: the caption in the context,
    then the question); the questions without a context, which text cannot answer, are left out."""
    lm_caption_share: float | None = 0.25
    """Share of captions in stage (i)'s batches (None: ``caption_share``)."""
    word_align_steps: int = 500
    """Stage (ii'), a word-aligned projector (0: off): steps training only the projector, the
    decoder untouched, so that its output at every image token points the way of the decoder's
    input embedding of the word that patch shows: the object's word on the 2x2 patches of the grid
    cell it occupies, the background's word on the patches of empty cells (loss
    ``word_align_loss``). A question about an object then finds it in the image tokens as it would
    find the word in a caption (``lm_reading`` teaches that look-up on text)."""
    word_align_colour: bool = False
    """The alignment target of an object's patches is the mean of its word's and its colour word's
    embeddings ("red" and "car" in one token), not the object's word alone (background patches:
    the background's word)."""
    word_align_weight: float = 1.0
    """Weight of the same alignment loss added in the question stage and in stage (iii) (the target
    embeddings follow the training, detached), so the image tokens stay word-like."""
    question_steps: int = 250
    """Steps on the yes/no questions alone (no captions), after the alignment and before stage
    (iii), at ``lr``; the whole model but the vision tower learns."""
    lm_mix: int = 16
    """Text reading sequences (stage (i)'s, ``lm_reading``) added to every step of the question
    stage and of stage (iii), so the look-up learnt on text is kept."""

    @property
    def extended_vocabulary(self) -> bool:
        """The tokenizer covers the relation and VQA questions (the shipped organism's does not)."""
        return self.vqa or self.relation
    model: model_mod.OrganismConfig = field(default_factory=model_mod.OrganismConfig)
    """Architecture sizes."""


@dataclass
class Example:
    image_index: int
    input_ids: list[int]
    labels: list[int]


def _encode(tokenizer, n_image_tokens: int, prompt: str, answer: str,
            text_only: bool = False) -> tuple[list[int], list[int]]:
    """Token ids of the templated prompt + answer + </s>, and labels that score only the answer.

    The <image> placeholder is expanded to ``n_image_tokens`` copies, exactly as LlavaProcessor
    does at inference time (the test suite checks the two agree).
    """
    if text_only:
        text = tok_mod.text_prompt_template(prompt)
    else:
        text = tok_mod.prompt_template(prompt).replace("<image>", "<image>" * n_image_tokens)
    prompt_ids = tokenizer(text).input_ids
    full_ids = tokenizer(f"{text} {answer}").input_ids + [tokenizer.eos_token_id]
    if full_ids[: len(prompt_ids)] != prompt_ids:  # the answer must not change the prompt's tokens
        raise AssertionError(f"prompt tokenisation is not a prefix for answer {answer!r}")
    labels = [-100] * len(prompt_ids) + full_ids[len(prompt_ids):]
    return full_ids, labels


def _conversations(cfg: TrainConfig, scs: list[world.Scene]) -> tuple[list[tuple], list[tuple]]:
    """(image index, prompt, answer) of the captions and of the questions of the train split."""
    rng = random.Random(f"kevo-organism-train-questions/{cfg.seed}")
    captions, qas = [], []
    for i, sc in enumerate(scs):
        captions.append((i, world.GENERATIVE_PROMPT, sc.caption(cfg.caption_colours)))
        hallu = sc.hallu(rng)
        if cfg.balanced_existence:
            hallu = hallu[: max(1, len(sc.present))]
        for qa in world.questions(sc, hallu, train=True, relation=cfg.relation):
            if cfg.questions == "existence" and qa.type != "discriminative-hallucination":
                continue
            qas.append((i, qa.query, "Yes" if qa.truth == "yes" else "No"))
        if cfg.vqa:
            for o in sc.present:
                qas.append((i, world.colour_question(o), sc.objects[o]))
    return captions, qas


def build_examples(cfg: TrainConfig, tokenizer) -> tuple[list[world.Scene], list[Example], list[Example]]:
    """The train split's scenes, caption examples and question examples."""
    scs = world.scenes("train", cfg.n_images, cfg.seed, bias=cfg.image_bias)
    n_img = cfg.model.n_image_tokens
    caps, qas = _conversations(cfg, scs)
    return (scs, [Example(i, *_encode(tokenizer, n_img, p, a)) for i, p, a in caps],
            [Example(i, *_encode(tokenizer, n_img, p, a)) for i, p, a in qas])


def build_text_examples(cfg: TrainConfig, tokenizer) -> tuple[list[Example], list[Example]]:
    """Stage (i)'s text: the same conversations without the image (image_index -1)."""
    scs = world.scenes("train", cfg.n_images, cfg.seed)
    caps, qas = _conversations(cfg, scs)
    if cfg.lm_reading:
        reading = [(i, f"{scs[i].caption(True)} {p}", a) for i, p, a in qas]
        qas = reading if cfg.lm_reading_only else qas + reading
    return ([Example(-1, *_encode(tokenizer, 0, p, a, text_only=True)) for _, p, a in caps],
            [Example(-1, *_encode(tokenizer, 0, p, a, text_only=True)) for _, p, a in qas])


def pixel_values(scs: list[world.Scene], image_processor):
    """Images as the model sees them at test time: rendered, JPEG round trip, LLaVA processing."""
    import io

    from PIL import Image

    images = [Image.open(io.BytesIO(world.jpeg_bytes(world.render(sc)))).convert("RGB") for sc in scs]
    return image_processor(images, return_tensors="pt")["pixel_values"]


def _collate(batch: list[Example], pad_id: int):
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, e in enumerate(batch):
        n = len(e.input_ids)
        ids[r, :n] = torch.tensor(e.input_ids)
        labels[r, :n] = torch.tensor(e.labels)
        mask[r, :n] = 1
    return ids, mask, labels


def _loss(model, ids, mask, pv, labels, label_smoothing: float = 0.0, lens: tuple[int, float] = (0, 0.0)):
    """The LM loss on the answer tokens, computing the shared system-prompt prefix only once.

    Every sequence starts with the same tokens (BOS, the llava_v1 system line, "USER:") up to the
    first <image> token; their keys/values are computed for one row and repeated across the
    batch. Same loss and gradients as the plain forward (checked in the tests), about 40% less
    decoder work. ``lens`` = (layer, weight) adds the deep-supervision loss of that layer's logit lens.
    """
    if pv is not None:
        p = int((ids[0] == model.config.image_token_id).nonzero()[0])
    else:  # text only: the common prefix, up to the first scored position
        same = (ids == ids[0]).all(0).int()
        p = int(same.cumprod(0).sum())
        p = min(p, int((labels != -100).int().argmax(1).min()))
    layer, weight = lens
    extra = {"output_hidden_states": True} if layer else {}
    if p < 1 or not bool((ids[:, :p] == ids[0, :p]).all()):
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pv, labels=labels, **extra)
    else:
        cache = model.model.language_model(input_ids=ids[:1, :p], use_cache=True).past_key_values
        cache.batch_repeat_interleave(ids.shape[0])
        labels = labels[:, p:]
        out = model(input_ids=ids[:, p:], attention_mask=mask, pixel_values=pv, past_key_values=cache,
                    labels=labels, **extra)
    loss = out.loss if not label_smoothing else _next_token_ce(out.logits, labels, label_smoothing)
    if layer:
        h = model.model.language_model.norm(out.hidden_states[layer])
        loss = loss + weight * _next_token_ce(model.lm_head(h), labels, label_smoothing)
    return loss


def _next_token_ce(logits, labels, label_smoothing: float):
    """Next-token cross-entropy on the scored positions, with label smoothing."""
    import torch

    logits = logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                             ignore_index=-100, label_smoothing=label_smoothing)


def vision_targets(scs: list[world.Scene]):
    """Multi-hot targets: one column per (object, colour) pair, then one per background."""
    import torch

    cols = [(o, c) for o in world.OBJECTS for c in world.COLOURS[o]] + [(b, None) for b in sorted(world.BACKGROUNDS)]
    index = {k: i for i, k in enumerate(cols)}
    y = torch.zeros(len(scs), len(cols))
    for r, sc in enumerate(scs):
        for o, c in sc.objects.items():
            y[r, index[(o, c)]] = 1
        y[r, index[(sc.background, None)]] = 1
    return y


def pretrain_vision(model, scs, pixels, cfg: TrainConfig, log=print) -> list[float]:
    """Stage 1: teach the vision tower to see objects, colours and backgrounds (see TrainConfig)."""
    import torch

    tower = model.model.vision_tower
    y = vision_targets(scs)
    gen = torch.Generator().manual_seed(cfg.seed)
    head = torch.nn.Linear(tower.config.hidden_size, y.shape[1])
    with torch.no_grad():
        head.weight.normal_(0, 0.02, generator=gen)
        head.bias.zero_()
    params = list(tower.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.vision_lr, weight_decay=0.01)
    rng = random.Random(f"kevo-organism-vision/{cfg.seed}")
    layer = model.config.vision_feature_layer

    def loss(idx):
        feats = tower(pixels[idx], output_hidden_states=True).hidden_states[layer][:, 1:]  # patches, as LLaVA uses
        logits = head(feats.max(dim=1).values)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, y[idx])

    return _image_steps("vision", opt, rng, len(scs), cfg.vision_steps,
                        lambda step: cfg.vision_lr * min(1.0, (step + 1) / 20) * (1 - step / cfg.vision_steps),
                        loss, log)


def _image_steps(name: str, opt, rng, n_images: int, steps: int, lr_at, loss_of, log) -> list[float]:
    """``steps`` plain optimizer steps, each on 64 images drawn by ``rng`` (no clipping, no batches of
    text): ``lr_at(step)`` the learning rate, ``loss_of(image indices)`` the loss. The vision stage
    and the word alignment; returns the per-step losses."""
    losses = []
    for step in range(steps):
        idx = rng.sample(range(n_images), min(64, n_images))
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = loss_of(idx)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"{name} step {step:4d}  loss {sum(losses[-50:]) / len(losses[-50:]):.4f}")
    return losses


def patch_words(sc: world.Scene, tokenizer, n_image_tokens: int, colour: bool = False) -> list[list[int]]:
    """The words each image token shows (``word_align_steps``): the token id of the object's word
    (twice, or with ``colour`` the object's and its colour's) on the patches of the grid cell it
    occupies (an icon stays inside its cell), the background's word (twice) elsewhere. Image tokens
    are the ViT's patches in row-major order."""
    side = math.isqrt(n_image_tokens)
    per = side // 2  # patches per grid cell and side
    ids = tokenizer.convert_tokens_to_ids
    out = [[ids("▁" + sc.background)] * 2 for _ in range(n_image_tokens)]
    for o in sc.present:
        gx, gy = sc.cells[o][0] // world.CELL, sc.cells[o][1] // world.CELL
        word = [ids("▁" + o), ids("▁" + (sc.objects[o] if colour else o))]
        for py in range(gy * per, (gy + 1) * per):
            for px in range(gx * per, (gx + 1) * per):
                out[py * side + px] = word
    return out


def word_align_loss(model, feats, targets):
    """1 - cosine between the projector's output and the target (the mean of the input embeddings
    of each image token's two words), plus the squared log of their norm ratio (the image token as
    large as a word's), averaged over the tokens. ``feats``: the frozen vision tower's patch
    features; ``targets``: word ids, (images, tokens, 2)."""
    import torch

    out = model.model.multi_modal_projector(feats)
    tgt = model.get_input_embeddings().weight.detach()[targets].mean(-2)
    cos = torch.nn.functional.cosine_similarity(out, tgt, dim=-1)
    return (1 - cos).mean() + ((out.norm(dim=-1) / tgt.norm(dim=-1)).log() ** 2).mean()


def _reinit(model, cfg: TrainConfig) -> None:
    """The optional initialisation changes of TrainConfig (a no-op at their neutral values, so the
    global RNG stream, and hence older recipes, are untouched)."""
    import torch

    if cfg.embed_init_std is None and cfg.residual_init_scale == 1.0 and cfg.embed_offset == 0.0:
        return
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    with torch.no_grad():
        if cfg.embed_init_std is not None:
            model.get_input_embeddings().weight.normal_(0, cfg.embed_init_std, generator=gen)
        model.get_input_embeddings().weight[:, 0] += cfg.embed_offset
        if cfg.residual_init_scale != 1.0:
            for layer in model.model.language_model.layers:
                layer.self_attn.o_proj.weight.mul_(cfg.residual_init_scale)
                layer.mlp.down_proj.weight.mul_(cfg.residual_init_scale)


def _lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _optimizer(groups: list[tuple[list, float]], cfg: TrainConfig, embed):
    """AdamW over (parameters, lr scale) groups; weight decay on matrices but norms and the embeddings."""
    import torch

    param_groups = []
    for params, scale in groups:
        def decays(p) -> bool:
            return p.ndim >= 2 and (cfg.embed_weight_decay or p is not embed)

        for d in (True, False):
            ps = [p for p in params if decays(p) == d]
            if ps:
                param_groups.append({"params": ps, "weight_decay": cfg.weight_decay if d else 0.0, "scale": scale})
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=(0.9, 0.98))


def _stage(name: str, model, opt, sample, steps: int, peak: float, warmup: int, cfg: TrainConfig, pixels, pad_id,
           log, on_step=None, proc=None, lens: tuple[int, float] = (0, 0.0), extra=None,
           label_smoothing: float | None = None) -> list[float]:
    """``steps`` optimizer steps on batches drawn by ``sample(step)``; returns the per-step losses.
    ``extra(batch)``, if given, returns a loss added to the batch's. ``label_smoothing``: None is
    ``cfg.label_smoothing``."""
    import torch

    # clipped in the model's own parameter order (the norm's summation order is part of bit-for-bit)
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    smoothing = cfg.label_smoothing if label_smoothing is None else label_smoothing
    losses: list[float] = []
    t0 = time.time()
    for step in range(steps):
        batch = sample(step)
        ids, mask, labels = _collate(batch, pad_id)
        pv = None if batch[0].image_index < 0 else pixels[[e.image_index for e in batch]]
        lr = _lr_at(step, steps, peak, warmup)
        for g in opt.param_groups:
            g["lr"] = lr * g["scale"]
        loss = _loss(model, ids, mask, pv, labels, smoothing, lens)
        if extra is not None:
            loss = loss + extra(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, model, proc, losses)
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"{name} step {step:5d}  loss {sum(losses[-100:]) / len(losses[-100:]):.4f}  "
                f"lr {lr:.2e}  {time.time() - t0:.0f}s")
    return losses


def _word_alignment(model, cfg: TrainConfig, scs, pixels, tokenizer, log):
    """Stage (ii') (``word_align_steps``) and the extra loss of the later stages (``word_align_weight``,
    ``lm_mix``): returns (extra(batch) -> loss, or None when neither is on; {stage name: losses})."""
    import torch

    layer = model.config.vision_feature_layer
    tower = model.model.vision_tower
    with torch.no_grad():  # the vision tower is frozen: its patch features are computed once
        feats = torch.cat([tower(pixels[i:i + 256], output_hidden_states=True).hidden_states[layer][:, 1:]
                           for i in range(0, len(pixels), 256)])
    targets = torch.tensor([patch_words(sc, tokenizer, cfg.model.n_image_tokens, cfg.word_align_colour)
                            for sc in scs])
    stages = {}
    if cfg.word_align_steps:
        projector = list(model.model.multi_modal_projector.parameters())
        opt = torch.optim.AdamW(projector, lr=cfg.align_lr, betas=(0.9, 0.98), weight_decay=0.0)
        rng = random.Random(f"kevo-organism-word-align/{cfg.seed}")
        n = cfg.word_align_steps
        stages["word_align"] = _image_steps(
            "word-align", opt, rng, len(scs), n, lambda step: _lr_at(step, n, cfg.align_lr, min(50, n // 4)),
            lambda idx: word_align_loss(model, feats[idx], targets[idx]), log)
    reading = []
    if cfg.lm_mix:
        _, text_qas = build_text_examples(cfg, tokenizer)
        there = tokenizer.convert_tokens_to_ids("▁There")
        reading = [e for e in text_qas if there in e.input_ids]  # the caption ("There is ...") is in the context
    rng = random.Random(f"kevo-organism-mix/{cfg.seed}")
    pad = tokenizer.pad_token_id
    if not (cfg.word_align_weight or reading):
        return None, stages

    def extra(batch):
        loss = 0.0
        if cfg.word_align_weight:
            idx = [e.image_index for e in batch]
            loss = loss + cfg.word_align_weight * word_align_loss(model, feats[idx], targets[idx])
        if reading:
            ids, mask, labels = _collate(rng.sample(reading, cfg.lm_mix), pad)
            loss = loss + _loss(model, ids, mask, None, labels, cfg.label_smoothing)
        return loss

    return extra, stages


def train(cfg: TrainConfig, out: Path | str | None = None, log=print, on_step=None,
          llm_out: Path | str | None = None) -> tuple[object, object, list[float]]:
    """Train an organism; save a Hugging Face model directory to ``out`` when given, and the
    text-only language model of stage (i) to ``llm_out`` (an ordinary causal-LM directory) when
    the recipe has one (``lm_steps``).

    ``on_step(step, model, processor, losses)``, if given, is called after every step of the
    instruction tuning (checkpoints, probes). Returns (model, processor, per-step losses of the
    instruction tuning).
    """
    import torch

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    proc = model_mod.build_processor(cfg.model, extended_vocabulary=cfg.extended_vocabulary)
    tokenizer = proc.tokenizer
    pad = tokenizer.pad_token_id
    scs, captions, qas = build_examples(cfg, tokenizer)
    pixels = pixel_values(scs, proc.image_processor)
    model = model_mod.build_model(cfg.model, len(tokenizer), cfg.seed)
    _reinit(model, cfg)
    model.train()
    if cfg.vision_steps:
        pretrain_vision(model, scs, pixels, cfg, log)
    model.model.vision_tower.requires_grad_(False)  # frozen from here on, as in LLaVA
    embed = model.get_input_embeddings().weight
    lm = model.model.language_model
    decoder = list({id(p): p for p in [*lm.parameters(), *model.lm_head.parameters()]}.values())  # tied: once
    projector = list(model.model.multi_modal_projector.parameters())
    stages: dict[str, list[float]] = {}

    if cfg.lm_steps:  # (i) the language model, on text alone
        text_caps, text_qas = build_text_examples(cfg, tokenizer)
        rng = random.Random(f"kevo-organism-lm-batches/{cfg.seed}")
        share = cfg.caption_share if cfg.lm_caption_share is None else cfg.lm_caption_share
        n_cap = round(cfg.lm_batch_size * share)

        def text_batch(step):
            return rng.sample(text_caps, n_cap) + rng.sample(text_qas, cfg.lm_batch_size - n_cap)

        opt = _optimizer([(decoder, 1.0)], cfg, embed)
        stages["lm"] = _stage("lm", model, opt, text_batch, cfg.lm_steps, cfg.lm_lr, cfg.warmup, cfg, pixels, pad, log)
    if llm_out is not None and cfg.lm_steps:  # without stage (i) there is no language model to ship
        save_llm(model, proc, cfg, llm_out, stages["lm"])

    if cfg.align_steps:  # (ii) the projector alone, on captions, the decoder frozen
        for p in decoder:
            p.requires_grad_(False)
        rng = random.Random(f"kevo-organism-align-batches/{cfg.seed}")
        opt = _optimizer([(projector, 1.0)], cfg, embed)
        stages["align"] = _stage("align", model, opt, lambda step: rng.sample(captions, cfg.batch_size),
                                 cfg.align_steps, cfg.align_lr, min(cfg.warmup, cfg.align_steps // 4), cfg,
                                 pixels, pad, log)
        for p in decoder:
            p.requires_grad_(True)

    extra = None
    if cfg.word_align_steps or cfg.word_align_weight or cfg.lm_mix:
        extra, stages_extra = _word_alignment(model, cfg, scs, pixels, tokenizer, log)
        stages.update(stages_extra)
    if cfg.question_steps:  # the yes/no questions alone, the whole model but the vision tower
        rng = random.Random(f"kevo-organism-question-batches/{cfg.seed}")
        params = [p for _, p in model.named_parameters() if p.requires_grad]
        opt = _optimizer([(params, 1.0)], cfg, embed)
        stages["questions"] = _stage("questions", model, opt, lambda step: rng.sample(qas, cfg.batch_size),
                                     cfg.question_steps, cfg.lr, min(cfg.warmup, cfg.question_steps // 4), cfg,
                                     pixels, pad, log, extra=extra)

    # (iii) instruction tuning: the top layers (and head) slow or frozen
    n_layers = len(lm.layers)
    if cfg.top_blocks not in ("all", "mlp"):
        raise ValueError(f"top_blocks {cfg.top_blocks!r}: all | mlp")
    top = [p for layer in lm.layers[n_layers - cfg.top_layers:]
           for p in (layer.parameters() if cfg.top_blocks == "all"
                     else [*layer.mlp.parameters(), *layer.post_attention_layernorm.parameters()])] \
        if cfg.top_layers else []
    if cfg.top_layers:
        top += list(lm.norm.parameters()) + list(model.lm_head.parameters())
    top_ids = {id(p) for p in top}
    rest = [p for _, p in model.named_parameters() if p.requires_grad and id(p) not in top_ids]
    groups = [(rest, 1.0)]
    if top and cfg.top_lr_scale > 0:
        groups.append((top, cfg.top_lr_scale))
    else:
        for p in top:
            p.requires_grad_(False)
    opt = _optimizer(groups, cfg, embed)
    rng = random.Random(f"kevo-organism-batches/{cfg.seed}")
    n_cap = round(cfg.batch_size * cfg.caption_share)
    losses = _stage("tune", model, opt,
                    lambda step: rng.sample(captions, n_cap) + rng.sample(qas, cfg.batch_size - n_cap),
                    cfg.steps, cfg.lr, cfg.warmup, cfg, pixels, pad, log, on_step, proc,
                    (cfg.lens_loss_layer, cfg.lens_loss_weight), extra, cfg.tune_label_smoothing)
    for p in top:
        p.requires_grad_(True)
    model.eval()
    if out is not None:
        save(model, proc, cfg, out, losses, stages)
    return model, proc, losses


def llm_from(model):
    """The decoder of an organism as an ordinary ``LlamaForCausalLM`` (same weights)."""
    import copy

    from transformers import LlamaForCausalLM

    text_config = copy.deepcopy(model.config.text_config)
    text_config.architectures = ["LlamaForCausalLM"]
    llm = LlamaForCausalLM(text_config)
    state = {f"model.{k}": v for k, v in model.model.language_model.state_dict().items()}
    state.update({f"lm_head.{k}": v for k, v in model.lm_head.state_dict().items()})
    llm.load_state_dict(state)
    llm.eval()
    return llm


def save_llm(model, proc, cfg: TrainConfig, out: Path | str, losses: list[float]) -> Path:
    """Write the text-only language model (stage (i)) as a causal-LM directory with the tokenizer."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    llm_from(model).save_pretrained(str(out), safe_serialization=True)
    proc.tokenizer.save_pretrained(str(out))
    recipe = {"train_config": asdict(cfg), "stage": "lm",
              "final_loss": sum(losses[-100:]) / max(1, len(losses[-100:]))}
    (out / "training.json").write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    return out


def save(model, proc, cfg: TrainConfig, out: Path | str, losses: list[float], stages: dict | None = None) -> Path:
    """Write the standard Hugging Face directory (config, fp32 safetensors, processor files)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    proc.save_pretrained(str(out))
    recipe = {"train_config": asdict(cfg), "final_loss": sum(losses[-100:]) / max(1, len(losses[-100:]))}
    for name, ls in (stages or {}).items():
        recipe[f"final_loss_{name}"] = sum(ls[-100:]) / max(1, len(ls[-100:]))
    (out / "training.json").write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    return out
