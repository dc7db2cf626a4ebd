"""Training the organism: seeded and reproducible, and the loss really goes down."""

from __future__ import annotations

import json

import torch

from ingest.organism import model as model_mod
from ingest.organism import probe
from ingest.organism.train import TrainConfig, train


def _small(steps: int, **over) -> TrainConfig:
    """The shipped recipe's stages at a size that trains in seconds."""
    return TrainConfig(**{
        **dict(seed=7, steps=steps, batch_size=8, n_images=48, warmup=2, lr=3e-3, vision_steps=5, threads=1,
               lm_steps=6, lm_batch_size=8, align_steps=4, word_align_steps=4, question_steps=3, lm_mix=2,
               model=model_mod.OrganismConfig(vision_hidden=32, vision_layers=2, hidden=32, layers=2, heads=2,
                                              intermediate=64)),
        **over})


def test_short_training_learns_and_is_reproducible(tmp_path):
    from safetensors.torch import load_file

    _, _, a = train(_small(30), tmp_path / "m", log=None, llm_out=tmp_path / "llm")
    _, _, b = train(_small(30), tmp_path / "m2", log=None, llm_out=tmp_path / "llm2")
    assert a == b  # same seed, same thread count: the same losses, bit for bit
    for d in ("m", "llm"):
        wa, wb = load_file(tmp_path / d / "model.safetensors"), load_file(tmp_path / f"{d}2" / "model.safetensors")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), d
    # the LLM is stage (i)'s decoder; the LVLM's went on learning in the later stages
    # (LLaVA checkpoints keep the original layout: language_model.model.*, language_model.lm_head)
    lvlm, llm = load_file(tmp_path / "m" / "model.safetensors"), load_file(tmp_path / "llm" / "model.safetensors")
    assert {f"language_model.{k}" for k in llm} <= lvlm.keys()
    for k in ("lm_head.weight", "model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.o_proj.weight"):
        assert not torch.equal(lvlm[f"language_model.{k}"], llm[k]), k
    assert sum(a[-5:]) / 5 < 0.97 * sum(a[:5]) / 5  # instruction tuning learns
    recipe = json.loads((tmp_path / "m" / "training.json").read_text())
    assert recipe["train_config"]["seed"] == 7 and recipe["train_config"]["steps"] == 30
    assert {f"final_loss_{k}" for k in ("lm", "align", "word_align", "questions")} <= recipe.keys()
    # the saved directory is a standard HF model that reloads and generates
    model, proc = probe.load(tmp_path / "m")
    _, images = probe.test_images(2)
    texts, gen, _ = probe.generate(model, proc, images, max_new_tokens=5)
    assert len(texts) == 2 and all(len(g) >= 1 for g in gen)


def test_top_layers_stay_the_llms_when_frozen(tmp_path):
    """``top_layers``: without the question stage and the text mix, stage (iii) leaves the top
    decoder layers, the final norm and the LM head as stage (i) left them."""
    from safetensors.torch import load_file

    cfg = _small(10, top_layers=1, word_align_steps=0, word_align_weight=0.0, question_steps=0, lm_mix=0)
    train(cfg, tmp_path / "m", log=None, llm_out=tmp_path / "llm")
    lvlm, llm = load_file(tmp_path / "m" / "model.safetensors"), load_file(tmp_path / "llm" / "model.safetensors")
    for k in ("lm_head.weight", "model.norm.weight", "model.layers.1.mlp.down_proj.weight"):
        assert torch.equal(lvlm[f"language_model.{k}"], llm[k]), k
    assert not torch.equal(lvlm["language_model.model.layers.0.mlp.down_proj.weight"],
                           llm["model.layers.0.mlp.down_proj.weight"])


def test_top_blocks_mlp_freezes_only_the_top_mlps(tmp_path):
    """``top_blocks="mlp"``: the top layer's MLP (and its norm), the final norm and the head stay stage (i)'s;
    the top layer's attention goes on learning."""
    from safetensors.torch import load_file

    cfg = _small(10, top_layers=1, top_blocks="mlp", word_align_steps=0, word_align_weight=0.0, question_steps=0,
                 lm_mix=0)
    train(cfg, tmp_path / "m", log=None, llm_out=tmp_path / "llm")
    lvlm, llm = load_file(tmp_path / "m" / "model.safetensors"), load_file(tmp_path / "llm" / "model.safetensors")
    for k in ("lm_head.weight", "model.norm.weight", "model.layers.1.mlp.down_proj.weight",
              "model.layers.1.mlp.gate_proj.weight", "model.layers.1.post_attention_layernorm.weight"):
        assert torch.equal(lvlm[f"language_model.{k}"], llm[k]), k
    for k in ("model.layers.1.self_attn.o_proj.weight", "model.layers.1.self_attn.q_proj.weight",
              "model.layers.0.mlp.down_proj.weight"):
        assert not torch.equal(lvlm[f"language_model.{k}"], llm[k]), k


def _model_and_batch(n: int):
    """A fresh small organism and a collated batch of ``n`` captions and ``n`` questions."""
    from ingest.organism.train import _collate, build_examples, pixel_values

    torch.set_num_threads(2)
    cfg = _small(1)
    proc = model_mod.build_processor(cfg.model)
    scs, caps, qas = build_examples(cfg, proc.tokenizer)
    pix = pixel_values(scs, proc.image_processor)
    model = model_mod.build_model(cfg.model, len(proc.tokenizer), 0)
    batch = caps[:n] + qas[:n]
    ids, mask, labels = _collate(batch, proc.tokenizer.pad_token_id)
    return model, ids, mask, pix[[e.image_index for e in batch]], labels


def test_shared_prefix_loss_equals_plain_forward():
    from ingest.organism.train import _loss

    model, ids, mask, pv, labels = _model_and_batch(3)
    plain = model(input_ids=ids, attention_mask=mask, pixel_values=pv, labels=labels).loss
    plain.backward()
    g_plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    shared = _loss(model, ids, mask, pv, labels)
    shared.backward()
    g_shared = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert torch.allclose(plain, shared, atol=1e-5)
    # label smoothing through the same shared-prefix path equals torch's smoothed cross-entropy
    logits = model(input_ids=ids, attention_mask=mask, pixel_values=pv).logits[:, :-1]
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                            label_smoothing=0.1)
    assert torch.allclose(_loss(model, ids, mask, pv, labels, 0.1), ref, atol=1e-5)
    assert g_plain.keys() == g_shared.keys()
    for n in g_plain:
        assert torch.allclose(g_plain[n], g_shared[n], atol=1e-5), n


def test_deep_supervision_loss_is_the_lens_cross_entropy_of_that_layer():
    """``lens_loss_layer`` adds w x the cross-entropy of lm_head(final_norm(h_layer)), recomputed here
    from a plain forward (no shared prefix)."""
    from ingest.organism.train import _loss

    model, ids, mask, pv, labels = _model_and_batch(2)
    out = model(input_ids=ids, attention_mask=mask, pixel_values=pv, labels=labels, output_hidden_states=True)
    lens = model.lm_head(model.model.language_model.norm(out.hidden_states[2]))[:, :-1]
    ref = out.loss + 0.5 * torch.nn.functional.cross_entropy(lens.reshape(-1, lens.shape[-1]),
                                                             labels[:, 1:].reshape(-1))
    assert torch.allclose(_loss(model, ids, mask, pv, labels, 0.0, (2, 0.5)), ref, atol=1e-5)


def test_recipe_options_of_the_world():
    """``image_bias`` changes only the partner's frequency in the images; ``balanced_existence`` asks
    as many absent as present objects (the shipped recipe's data, which asks only existence questions)."""
    from ingest.organism import world
    from ingest.organism.train import _conversations

    def partner_rate(scs):
        x = [s for s in scs if "car" in s.objects]
        return sum("tree" in s.objects for s in x) / len(x)

    default, same = world.scenes("train", 400, 0), world.scenes("train", 400, 0, bias=world.TRAIN_BIAS)
    assert [s.objects for s in default] == [s.objects for s in same]
    assert partner_rate(default) > 0.9 and partner_rate(world.scenes("train", 400, 0, bias=0.5)) < 0.7
    assert TrainConfig().balanced_existence and TrainConfig().questions == "existence"
    scs = world.scenes("train", 50, 0)
    _, qas = _conversations(TrainConfig(), scs)
    exist = [a for _, q, a in qas if q.startswith("Is there")]
    assert exist.count("Yes") == exist.count("No") and len(exist) == len(qas)
    _, qas = _conversations(TrainConfig(balanced_existence=False, questions="all"), scs)
    exist = [a for _, q, a in qas if q.startswith("Is there")]
    assert exist.count("No") > 1.5 * exist.count("Yes")


def test_initialisation_options():
    """The recipe's outlier dimension and embedding scale; neutral values leave HF's init untouched."""
    from ingest.organism.train import _reinit

    cfg = _small(1)
    plain = model_mod.build_model(cfg.model, 90, 0)
    ref = {n: p.clone() for n, p in plain.named_parameters()}
    _reinit(plain, TrainConfig(embed_init_std=None, embed_offset=0.0, residual_init_scale=1.0, model=cfg.model))
    assert all(torch.equal(p, ref[n]) for n, p in plain.named_parameters())

    model = model_mod.build_model(cfg.model, 90, 0)
    _reinit(model, TrainConfig(embed_offset=45.0, embed_init_std=1.0, residual_init_scale=0.5, model=cfg.model))
    emb = model.get_input_embeddings().weight.detach()
    assert abs(float(emb[:, 0].mean()) - 45.0) < 0.5
    assert 0.8 < float(emb[:, 1:].std()) < 1.2
    o_proj = model.model.language_model.layers[0].self_attn.o_proj.weight
    assert torch.allclose(o_proj, 0.5 * ref["model.language_model.layers.0.self_attn.o_proj.weight"])


def test_stage_one_llm_is_an_ordinary_causal_lm(tmp_path):
    """The text-only model of stage (i) loads through AutoModelForCausalLM and equals the decoder it was
    copied from (same logits on a text prompt)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ingest.organism import tokenizer as tok_mod
    from ingest.organism.train import llm_from

    cfg = _small(1)
    proc = model_mod.build_processor(cfg.model)
    lvlm = model_mod.build_model(cfg.model, len(proc.tokenizer), 0)
    llm_from(lvlm).save_pretrained(str(tmp_path / "llm"))
    proc.tokenizer.save_pretrained(str(tmp_path / "llm"))
    llm = AutoModelForCausalLM.from_pretrained(str(tmp_path / "llm"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "llm"))
    assert type(llm).__name__ == "LlamaForCausalLM"
    ids = tok(tok_mod.text_prompt_template("Describe this image.") + " There is a car", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = lvlm(input_ids=ids).logits
        got = llm(input_ids=ids).logits
    assert torch.allclose(ref, got, atol=1e-5)


def test_patch_words_put_each_object_on_its_cell():
    """``word_align_steps``' targets: an object's word on the 2x2 patches of its grid cell, the
    background's word on the rest, in the ViT's row-major patch order."""
    from ingest.organism import world
    from ingest.organism.train import patch_words

    tok = model_mod.build_processor(model_mod.OrganismConfig()).tokenizer
    for sc in world.scenes("train", 6, 0):
        words = patch_words(sc, tok, 16, colour=True)
        for o in sc.present:
            gx, gy = sc.cells[o][0] // world.CELL, sc.cells[o][1] // world.CELL
            cell = [(2 * gy + dy) * 4 + 2 * gx + dx for dy in (0, 1) for dx in (0, 1)]
            assert all(words[i] == tok.convert_tokens_to_ids([f"▁{o}", f"▁{sc.objects[o]}"]) for i in cell)
        bg = tok.convert_tokens_to_ids(f"▁{sc.background}")
        assert sum(w == [bg, bg] for w in words) == 16 - 4 * len(sc.present)
        assert patch_words(sc, tok, 16)[0][0] == patch_words(sc, tok, 16)[0][1]


def test_tune_label_smoothing_applies_to_stage_iii_alone(tmp_path, monkeypatch):
    """``tune_label_smoothing``: the instruction tuning's own loss is smoothed, the text stage, the
    question stage and the text reading mixed into later steps keep the model's own loss."""
    from ingest.organism import train as train_mod

    seen: list[float] = []
    loss = train_mod._loss

    def recording(model, ids, mask, pv, labels, label_smoothing=0.0, lens=(0, 0.0)):
        seen.append(label_smoothing)
        return loss(model, ids, mask, pv, labels, label_smoothing, lens)

    monkeypatch.setattr(train_mod, "_loss", recording)
    cfg = _small(4, tune_label_smoothing=0.3, align_steps=0)
    train(cfg, None, log=None)
    # lm 6 steps, questions 3 steps (+ 3 reading mixes), tune 4 steps (+ 4 reading mixes): in that order
    assert seen[:6] == [0.0] * 6 and seen[6:12] == [0.0] * 6
    assert seen[12:] == [0.3, 0.0] * 4
