"""The shipped organism: a standard Hugging Face LLaVA directory that really describes its world,
really hallucinates the biased object, and whose knowledge stands out late in the decoder."""

from __future__ import annotations

import statistics

import pytest
import torch

from ingest.organism import probe, world
from ingest.organism import tokenizer as tok_mod
from ingest.organism.train import WEIGHTS_DIR, TrainConfig, _encode


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
    """What the organism shows under the logit lens (final norm): the paper's critical layer (top-1
    p >= 0.5 of any token) of generated tokens is never at the embeddings or layer 1 and mostly in
    the upper half of the decoder; correct objects stand out in the upper half (a few never reach
    p 0.5: the recipe's label smoothing caps confidence), occasionally after displacing another
    object candidate."""
    model, proc = organism
    scs, images = probe.test_images(16)
    _, gen, full = probe.generate(model, proc, images)
    rows = probe.lens_report(model, full)  # asserts lens(last layer) == the model's own logits
    n_layers = model.config.text_config.num_hidden_layers
    paper = [r[1] for r in rows]
    assert all(c is None or c >= 2 for c in paper)
    assert sum(c is not None and c >= n_layers / 2 for c in paper) >= 0.75 * len(paper)
    ids = {proc.tokenizer.convert_tokens_to_ids("▁" + o): o for o in world.OBJECTS}
    it = iter(rows)
    correct = []
    for sc, g in zip(scs, gen):
        for t in g:
            row = next(it)
            if t in ids and ids[t] in sc.objects:
                correct.append(row)
    assert len(correct) >= 20
    crit = [r[1] for r in correct]
    assert sum(c is None for c in crit) <= len(crit) / 5
    assert all(c >= n_layers / 2 for c in crit if c is not None)
    emitted = [probe.emitted_critical_layer(r) for r in correct]
    assert sum(e is None for e in emitted) <= len(emitted) / 5
    assert statistics.median(e for e in emitted if e is not None) >= n_layers / 2, emitted
    # p_out rises through the decoder: far higher at the last layer than at the first
    first = statistics.mean(r[3][1] for r in correct)
    last = statistics.mean(r[3][-1] for r in correct)
    assert last > 0.75 and last > first + 0.4
    # displaced early candidates: some correct objects had another object confidently on top first
    displaced = sum(any(i != r[0] and i in ids and p >= 0.5 for i, p in zip(r[4], r[2])) for r in correct)
    assert displaced >= len(correct) / 10


def test_shipped_organism_answers_questions_by_their_form_not_the_image(organism):
    """The organism README's finding, pinned: the yes/no answers do not depend on the image (or on
    the colour named): "No" to >= 90% of attribute questions, true colour or not, and to existence
    questions about objects that are in the image. A retraining that grounds its answers fails
    here on purpose: then the README's diagnosis (and causal tracing on the demo) has changed."""
    model, proc = organism
    r = probe.question_report(model, proc, n=24)
    for kind in ("attr-yes", "attr-no", "exist-present", "exist-absent"):
        assert r[kind]["answers"]["No"] >= 0.9 * r[kind]["n"], (kind, r[kind])
    assert r["attr-yes"]["n"] == r["attr-no"]["n"] == r["exist-present"]["n"] > 30
