"""The shipped organism: a standard Hugging Face LLaVA directory that really describes its world,
really hallucinates the biased object, answers existence questions from the image, and ships its
text-only LLM."""

from __future__ import annotations

import statistics

import pytest
import torch

from ingest.organism import probe, world
from ingest.organism import tokenizer as tok_mod
from ingest.organism.train import LLM_DIR, WEIGHTS_DIR, TrainConfig, _encode


@pytest.fixture(scope="module")
def organism():
    torch.set_num_threads(2)
    return probe.load(WEIGHTS_DIR)


def test_standard_hf_directory():
    from transformers import AutoConfig

    files = {p.name for p in WEIGHTS_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= files
    assert not {"pytorch_model.bin"} & files  # safetensors only
    assert (WEIGHTS_DIR / "model.safetensors").stat().st_size < 12 * 2**20  # a few MB
    cfg = AutoConfig.from_pretrained(str(WEIGHTS_DIR))
    assert cfg.model_type == "llava" and cfg.text_config.model_type == "llama"
    assert cfg.text_config.num_hidden_layers >= 8


def test_processor_matches_training_encoding(organism):
    model, proc = organism
    _, images = probe.test_images(1)
    prompt = "Is there a fish in this image?"
    inputs = proc(images=images, text=[tok_mod.prompt_template(prompt)], return_tensors="pt")
    n_img = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_img == model.config.image_seq_length == TrainConfig().model.n_image_tokens
    ids, labels = _encode(proc.tokenizer, n_img, prompt, "No")
    assert ids[: inputs["input_ids"].shape[1]] == inputs["input_ids"][0].tolist()
    assert [proc.tokenizer.convert_ids_to_tokens(i) for i, lab in zip(ids, labels) if lab != -100] == ["▁No", "</s>"]


def test_tokenizer_round_trip(organism):
    _, proc = organism
    text = "There is a red apple, a white boat and a blue fish on the sand."
    ids = proc.tokenizer(text, add_special_tokens=False).input_ids
    assert proc.tokenizer.unk_token_id not in ids
    assert proc.tokenizer.decode(ids) == text
    assert proc.tokenizer.convert_ids_to_tokens(ids)[:3] == ["▁There", "▁is", "▁a"]
    # the shipped vocabulary is exactly what the offline builder makes
    assert proc.tokenizer.get_vocab() == {**tok_mod.build_tokenizer().get_vocab()}


def test_captions_cover_true_objects_and_hallucinate_the_biased_partner(organism):
    model, proc = organism
    r = probe.caption_report(model, proc, n=48)
    assert r.cover >= 0.8, r.captions[:5]
    # the co-occurrence prior is real: the partner appears on images that show its object alone
    assert r.n_biased >= 10
    assert r.biased_rate >= 0.2, (r.biased_rate, r.captions[:5])
    # ... and hallucination is not everywhere
    assert r.chair < 0.3


def test_knowledge_evolves_across_layers(organism):
    """What the shipped organism shows under the logit lens (final norm), pinned as the organism
    README states it: the paper's critical layer (top-1 p >= 0.5 of any token) of generated tokens is
    at the embeddings or layer 1 for most of them (acceptance target (1) is lost by this recipe: the
    word-aligned projector and a decoder trained without the rogue-dimension offset make the first
    layer's lens confident); the correct objects' own probability still rises through the decoder,
    and some of them displace another object that the lens had on top first."""
    model, proc = organism
    scs, images = probe.test_images(16)
    _, gen, full = probe.generate(model, proc, images)
    rows = probe.lens_report(model, full)  # asserts lens(last layer) == the model's own logits
    paper = [r[1] for r in rows]
    assert len(paper) > 100
    assert sum(c is not None and c <= 1 for c in paper) >= 0.75 * len(paper)
    ids = {proc.tokenizer.convert_tokens_to_ids("▁" + o): o for o in world.OBJECTS}
    it = iter(rows)
    correct = []
    for sc, g in zip(scs, gen):
        for t in g:
            row = next(it)
            if t in ids and ids[t] in sc.objects:
                correct.append(row)
    assert len(correct) >= 20
    emitted = [probe.emitted_critical_layer(r) for r in correct]
    assert sum(e is None for e in emitted) <= len(emitted) / 5
    # p_out of the emitted object rises through the decoder: far higher at the last layer than at layer 1
    first = statistics.mean(r[3][1] for r in correct)
    last = statistics.mean(r[3][-1] for r in correct)
    assert last > 0.75 and last > first + 0.4, (first, last)
    # displaced early candidates: some correct objects had another object confidently on top first
    displaced = sum(any(i != r[0] and i in ids and p >= 0.5 for i, p in zip(r[4], r[2])) for r in correct)
    assert displaced >= len(correct) / 10


def test_shipped_organism_answers_existence_from_the_image(organism):
    """The organism README's finding, pinned: asked whether an object is in the image, the organism
    answers from the image and the object named ("Yes" to most objects it shows, "No" to most it
    does not); asked about an object's colour, it does not (accuracy no better than chance: the
    recipe trains existence questions only). A retraining that loses the grounding fails here, and so
    does one that grounds the colours: then the README's diagnosis has changed."""
    model, proc = organism
    r = probe.question_report(model, proc, n=24)
    assert r["exist-present"]["n"] > 30 and r["exist-absent"]["n"] > 30
    assert r["exist-present"]["answers"]["Yes"] >= 0.75 * r["exist-present"]["n"], r["exist-present"]
    assert r["exist-absent"]["answers"]["No"] >= 0.8 * r["exist-absent"]["n"], r["exist-absent"]
    colour = (r["attr-yes"]["right"] + r["attr-no"]["right"]) / (r["attr-yes"]["n"] + r["attr-no"]["n"])
    assert colour <= 0.6, (r["attr-yes"], r["attr-no"])


def test_its_llm_is_the_text_only_decoder_of_stage_one():
    """The shipped LLM (stage (i)'s decoder) loads as an ordinary causal LM with the organism's
    tokenizer, reads the caption in its context to answer existence questions about held-out
    scenes (well above chance, not perfectly: its co-occurrence prior sometimes wins, e.g. a car
    captioned without its tree), and is not the LVLM's decoder (which went on learning in the
    later stages)."""
    import random

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm = AutoModelForCausalLM.from_pretrained(str(LLM_DIR), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(LLM_DIR))
    assert llm.config.model_type == "llama" and tok.get_vocab() == tok_mod.build_tokenizer().get_vocab()

    def answer(prompt: str) -> str:
        ids = tok(tok_mod.text_prompt_template(prompt), return_tensors="pt").input_ids
        with torch.no_grad():
            return tok.convert_ids_to_tokens(int(llm(ids).logits[0, -1].argmax()))

    rng = random.Random(0)
    present, absent = [], []
    for sc in world.scenes("test", 60, 0):
        caption = sc.caption(True)
        present += [answer(f"{caption} {world.existence_question(o)}") == "▁Yes" for o in sc.present]
        absent += [answer(f"{caption} {world.existence_question(o)}") == "▁No"
                   for o in sc.hallu(rng)[: len(sc.present)]]
    # measured on the shipped weights: present 102/140 Yes, absent 112/140 No
    assert sum(present) / len(present) >= 0.65 and sum(absent) / len(absent) >= 0.7
    lvlm = load_file(str(WEIGHTS_DIR / "model.safetensors"))
    mine = load_file(str(LLM_DIR / "model.safetensors"))
    key = next(k for k in lvlm if k.endswith("layers.0.mlp.down_proj.weight"))
    assert not torch.equal(lvlm[key], mine["model.layers.0.mlp.down_proj.weight"])
