"""Quick checks of a trained organism, independent of the ingest engine.

`caption_report` generates captions for test-split images and scores them against the scenes
(coverage of true objects, hallucinated objects, the biased partner on images that show its
object alone). `lens_report` runs a plain logit lens (lm_head(final_norm(h_l)); the last entry of
``hidden_states`` is already normed) over the generated tokens and returns each token's
critical layer. Used by the tests, by ``kevo organism train`` to print what it trained, and while
tuning the recipe. It is deliberately a second, independent implementation (plain torch, no store,
no SQL) of the lens and of the critical layer, for checking a model without a store; the analyses'
own definitions and defaults live in queries/sql/_critical_layer.sql.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from ingest.organism import tokenizer as tok_mod
from ingest.organism import world


def load(model_dir: Path | str):
    """The standard Hugging Face path: nothing organism-specific."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(str(model_dir))
    model.eval()
    return model, AutoProcessor.from_pretrained(str(model_dir))


def test_images(n: int, seed: int = 0):
    from PIL import Image

    scs = world.scenes("test", n, seed)
    return scs, [Image.open(io.BytesIO(world.jpeg_bytes(world.render(s)))).convert("RGB") for s in scs]


def generate(model, proc, images, prompt: str = world.GENERATIVE_PROMPT, max_new_tokens: int = 40, batch: int = 16):
    """Greedy captions; returns (texts, list of generated id lists, list of full input id tensors)."""
    import torch

    proc.tokenizer.padding_side = "left"
    texts, gen_ids, full = [], [], []
    for i in range(0, len(images), batch):
        chunk = images[i: i + batch]
        inputs = proc(images=chunk, text=[tok_mod.prompt_template(prompt)] * len(chunk),
                      return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        n_in = inputs["input_ids"].shape[1]
        for r in range(len(chunk)):
            g = out[r, n_in:].tolist()
            if proc.tokenizer.eos_token_id in g:
                g = g[: g.index(proc.tokenizer.eos_token_id) + 1]
            g = [t for t in g if t != proc.tokenizer.pad_token_id]
            gen_ids.append(g)
            texts.append(proc.tokenizer.decode(g, skip_special_tokens=True))
            full.append((inputs["input_ids"][r], inputs["attention_mask"][r], inputs["pixel_values"][r], g))
    return texts, gen_ids, full


def mentioned(text: str) -> list[str]:
    words = [w.strip(".,?!").lower() for w in text.split()]
    return [w for w in words if w in world.OBJECTS]


@dataclass
class CaptionReport:
    n: int
    cover: float  # true objects mentioned / true objects
    chair: float  # hallucinated mentions / mentions
    hal: float  # share of captions with any hallucinated object
    biased_rate: float  # Y mentioned / images showing X without Y
    n_biased: int
    captions: list[str]


def caption_report(model, proc, n: int = 48, seed: int = 0) -> CaptionReport:
    scs, images = test_images(n, seed)
    texts, _, _ = generate(model, proc, images)
    truth_n = cov = ment = hal_m = hal_caps = 0
    biased_hits = biased_n = 0
    for sc, t in zip(scs, texts):
        m = mentioned(t)
        truth_n += len(sc.present)
        cov += len(set(m) & set(sc.present))
        ment += len(m)
        bad = [o for o in m if o not in sc.objects]
        hal_m += len(bad)
        hal_caps += bool(bad)
        for x, y in world.BIAS_PAIRS.items():
            if x in sc.objects and y not in sc.objects:
                biased_n += 1
                biased_hits += y in m
    return CaptionReport(n, cov / max(1, truth_n), hal_m / max(1, ment), hal_caps / max(1, n),
                         biased_hits / max(1, biased_n), biased_n, texts)


def lens_report(model, full, tau: float = 0.5):
    """Per generated token: (token id, critical layer or None, top-1 prob per layer, p_out per layer,
    top-1 id per layer). The critical layer is the paper's: the first layer whose top-1
    probability (of any token) reaches ``tau``."""
    import torch

    lm = model.model.language_model
    head = model.lm_head
    rows = []
    for ids, mask, pv, gen in full:
        if not gen:
            continue
        seq = torch.cat([ids[mask.bool()], torch.tensor(gen[:-1], dtype=torch.long)])
        with torch.no_grad():
            out = model(input_ids=seq[None], pixel_values=pv[None], output_hidden_states=True)
        hs = out.hidden_states  # L + 1 entries; the last is already normed
        n_gen = len(gen)
        pos = slice(seq.shape[0] - n_gen, seq.shape[0])
        stack = torch.stack([h[0, pos] for h in hs])  # (L+1, n_gen, D)
        normed = torch.cat([lm.norm(stack[:-1]), stack[-1:]])
        probs = torch.softmax(head(normed).float(), dim=-1)  # (L+1, n_gen, V)
        assert torch.allclose(head(stack[-1]), out.logits[0, pos], atol=1e-4)
        top1, top1_id = probs.max(-1)
        for j, t in enumerate(gen):
            above = (top1[:, j] >= tau).nonzero()
            crit = int(above[0]) if len(above) else None
            rows.append((t, crit, top1[:, j].tolist(), probs[:, j, t].tolist(), top1_id[:, j].tolist()))
    return rows


def emitted_critical_layer(row, tau: float = 0.5) -> int | None:
    """First layer where the *emitted* token is top-1 with probability >= tau (the layer where the
    final answer stands out, as opposed to any confident candidate)."""
    t, _, top1, p_out, top1_id = row
    for layer, (p, i) in enumerate(zip(p_out, top1_id)):
        if i == t and p >= tau:
            return layer
    return None


def question_report(model, proc, n: int = 40, seed: int = 1) -> dict[str, dict]:
    """Grounding of the yes/no and colour answers: per question kind, how often the first answer
    token is right and which answers were given. On ``n`` test-split images: for every present
    object "Is there a X in this image?" (exist-present), "Is the X C in this image?" with its own
    colour (attr-yes) and the other (attr-no), "What is the colour of the X?" (vqa); for two absent
    objects (the biased partner first) the existence question (exist-absent). A model that answers
    from the question's form and not from the image shows one answer per kind."""
    import random
    from collections import Counter

    import torch

    scs, images = test_images(n, seed)
    rng = random.Random(0)
    tok = proc.tokenizer
    out: dict[str, dict] = {}
    kinds = {("discriminative-attribute-state", "yes"): "attr-yes", ("discriminative-attribute-state", "no"): "attr-no",
             ("discriminative-hallucination", "yes"): "exist-present",
             ("discriminative-hallucination", "no"): "exist-absent"}
    for sc, img in zip(scs, images):
        qs = [(kinds[qa.type, qa.truth], qa.query, qa.truth.capitalize())
              for qa in world.questions(sc, sc.hallu(rng)[:2], train=True, relation=False)]
        qs += [("vqa", world.colour_question(o), sc.objects[o]) for o in sc.present]
        for kind, q, truth in qs:
            inputs = proc(images=[img], text=[tok_mod.prompt_template(q)], return_tensors="pt")
            with torch.no_grad():
                answer = tok.convert_ids_to_tokens(int(model(**inputs).logits[0, -1].argmax())).lstrip("▁")
            k = out.setdefault(kind, {"right": 0, "n": 0, "answers": Counter()})
            k["right"] += answer == truth
            k["n"] += 1
            k["answers"][answer] += 1
    return out
