"""MultEdit: the closed-form update against a direct solve, the edit on tiny models, the edited
directory as an ordinary model, the fine-tuning baselines, and every user error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ingest.datasets.base import DatasetError
from ingest.edit.finetune import FinetuneSettings, finetune
from ingest.edit.model_dir import write_model_dir
from ingest.edit.multedit import (
    EditSettings,
    answer_probability,
    describe,
    load_image,
    multedit,
    output_projection,
    ridge_update,
)
from ingest.edit.requests import EditRequest, read_requests
from ingest.models import ModelError, load_adapter
from tests.model_helpers import tiny_image, tiny_model_dir

KEVO = Path(sys.executable).parent / "kevo"


def _normal_equations(W, K, V, lam):
    """W'^T = (K^T K + lam I)^-1 (K^T V + lam W^T), solved as written (d_ff x d_ff), float64."""
    A = K.T @ K + lam * torch.eye(K.shape[1], dtype=torch.float64)
    return torch.linalg.solve(A, K.T @ V + lam * W.T).T


def test_update_is_the_ridge_closed_form():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(16, 40, generator=g, dtype=torch.float64)
    K = torch.randn(3, 40, generator=g, dtype=torch.float64)
    V = torch.randn(3, 16, generator=g, dtype=torch.float64)
    for lam in (1e-4, 0.01, 1.0, 100.0):
        torch.testing.assert_close(ridge_update(W, K, V, lam), _normal_equations(W, K, V, lam), rtol=1e-9, atol=1e-9)
    # lambda -> large: the weight does not move; lambda -> 0: every key maps to its value
    assert (ridge_update(W, K, V, 1e12) - W).abs().max() < 1e-9
    torch.testing.assert_close(ridge_update(W, K, V, 1e-9) @ K.T, V.T, rtol=1e-6, atol=1e-6)
    # a rank-n change along the keys only: inputs orthogonal to every key are mapped as before
    x = torch.randn(40, generator=g, dtype=torch.float64)
    x = x - K.T @ torch.linalg.solve(K @ K.T, K @ x)
    torch.testing.assert_close(ridge_update(W, K, V, 0.01) @ x, W @ x, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError):
        ridge_update(W, K, V, 0.0)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("edit-images")
    tiny_image(40, 30, 0).save(d / "a.png")
    return d / "a.png"


# random tiny models have small activations (keys of norm ~1e-2): a small ridge weight lets the update act
STRONG = EditSettings(layer=2, lam=1e-6, steps=25, clamp=50.0)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_multedit_writes_the_target_value_and_raises_the_target(family, image_file):
    ad = load_adapter(str(tiny_model_dir(family)), dtype="float32")
    req = EditRequest("0", image_file, "Is there a cat on the table?", "a cat", "guitar")
    proj = output_projection(ad, STRONG.layer)
    W = proj.weight.detach().double().clone()
    res = multedit(ad, [req], STRONG)
    t = res.targets[0]
    # the optimisation found a value that makes the target likelier than the model had it
    assert t.p_value > t.p_before, (t.p_before, t.p_value)
    # the new weight is the closed form for (key, value), and maps the key to the value
    torch.testing.assert_close(proj.weight.detach().double(), _normal_equations(W, t.key[None], t.value[None],
                                                                               STRONG.lam), rtol=1e-4, atol=1e-6)
    seen = {}

    def grab(module, args, output):  # returns None: observes, does not replace the output
        seen["v"] = output[0, t.position].detach().double()

    h = proj.register_forward_hook(grab)
    p_after, _ = answer_probability(ad, t.prompt_text, load_image(image_file), t.target_id)
    h.remove()
    torch.testing.assert_close(seen["v"], t.value, rtol=1e-3, atol=1e-4 * float(t.value.norm()))
    assert p_after > t.p_before
    d = describe(res)
    assert d["module"].endswith(f"layers.{STRONG.layer - 1}.mlp.down_proj")
    assert d["weight_delta_norm"] == pytest.approx(float((proj.weight.detach().double() - W).norm()), rel=1e-6)


def test_edited_directory_is_an_ordinary_model(tmp_path, image_file):
    src = tiny_model_dir("llava")
    ad = load_adapter(str(src), dtype="float32")
    reqs = [EditRequest("0", image_file, "Is there a cat on the table?", "a cat", "guitar"),
            EditRequest("1", image_file, "What is the colour of the car?", "the car", "red")]
    res = multedit(ad, reqs, STRONG)  # two requests at once: batched keys
    record = describe(res)
    out = write_model_dir(ad, tmp_path / "edited", record)
    assert json.loads((out / "edit.json").read_text())["requests"][1]["target"] == "red"
    assert {p.name for p in src.iterdir() if "token" in p.name} <= {p.name for p in out.iterdir()}
    again = load_adapter(str(out), dtype="float32")
    torch.testing.assert_close(output_projection(again, 2).weight, output_projection(ad, 2).weight)
    for t in res.targets:
        p, _ = answer_probability(again, t.prompt_text, load_image(image_file), t.target_id)
        p_ad, _ = answer_probability(ad, t.prompt_text, load_image(image_file), t.target_id)
        assert p == pytest.approx(p_ad, rel=1e-5)
    with pytest.raises(ModelError, match="not an empty directory"):
        write_model_dir(ad, out, record)


def test_finetune_baselines_move_only_the_block(image_file):
    ad = load_adapter(str(tiny_model_dir("llava")), dtype="float32")
    req = EditRequest("0", image_file, "Is there a cat on the table?", "a cat", "guitar")
    before = {n: p.detach().clone() for n, p in ad.model.named_parameters()}
    rec = finetune(ad, [req], FinetuneSettings(layer=2, lr=1e-2, steps=3, eps=1e-3))
    changed = [n for n, p in ad.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed == [rec["module"] + ".weight"]
    delta = ad.model.get_parameter(changed[0]) - before[changed[0]]
    assert delta.abs().max() <= 1e-3 + 1e-7 and delta.abs().max() > 0
    assert rec["method"] == "ft-constrained" and rec["losses"][-1] < rec["losses"][0]


def test_bad_requests_and_layers(tmp_path, image_file):
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps({"image": str(image_file), "question": "Is there a cat?", "constraint": "a dog",
                             "target": "yes"}) + "\n")
    with pytest.raises(DatasetError, match="constraint 'a dog' is not in the question"):
        read_requests(f)
    f.write_text(json.dumps({"image": str(image_file), "question": "Is there a cat?", "constraint": "a cat",
                             "target": "  "}) + "\n")
    with pytest.raises(DatasetError, match="request 1: missing or empty 'target'"):
        read_requests(f)
    ad = load_adapter(str(tiny_model_dir("llava")), dtype="float32")
    with pytest.raises(ModelError, match="--layer 9: the model has MLP blocks 1..3"):
        output_projection(ad, 9)


def _kevo(*args, **kw):
    return subprocess.run([str(KEVO), *map(str, args)], capture_output=True, text=True, timeout=600, **kw)


def test_kevo_edit_end_to_end_and_its_errors(tmp_path, image_file):
    reqs = tmp_path / "requests.json"
    reqs.write_text(json.dumps([{"id": "cat", "image": str(image_file), "question": "Is there a cat on the table?",
                                 "constraint": "a cat", "target": "guitar",
                                 "paraphrases": ["Do you see a cat on the table?"]}]))
    model = tiny_model_dir("llava")
    out = tmp_path / "edited"
    r = _kevo("edit", "--model", model, "--requests", reqs, "--out", out, "--layer", "2", "--lambda", "1e-6",
              "--dtype", "float32")
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((out / "edit.json").read_text())
    assert rec["layer"] == 2 and rec["lam"] == 1e-6 and rec["layer_source"] == "--layer"
    assert rec["requests"][0]["id"] == "cat" and rec["weight_delta_norm"] > 0
    # errors: one line each, non-zero exit, nothing written
    r = _kevo("edit", "--model", model, "--requests", reqs, "--out", tmp_path / "x", "--layer", "7")
    assert r.returncode != 0 and "--layer 7" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()
    r = _kevo("edit", "--model", model, "--requests", reqs, "--out", out)
    assert r.returncode != 0 and "not an empty directory" in r.stderr
    notrace = tmp_path / "t.kevo"
    from kevo_store import StoreWriter

    with StoreWriter(str(notrace), meta={}, hidden_size=None):
        pass
    r = _kevo("edit", "--model", model, "--requests", reqs, "--out", tmp_path / "y", "--from-trace", notrace)
    assert r.returncode != 0 and "has no traces" in r.stderr, r.stderr


def test_hallucination_requests_from_a_labelled_caption_store(tmp_path):
    """The requests a caption store yields: the prefix up to the hallucinated word, the constraint the
    trigger's last mention, the target the ground-truth object the caption missed; others counted."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from ingest.edit.hallucination import hallucination_requests
    from kevo_store import StoreWriter
    from tests.store_helpers import HIDDEN, META, batch, vocab_table

    captions = [("There is a car, a tree and a cup on the sand.", ["car", "cup", "ball", "sand"]),
                ("There is a sun and a tree on the grass.", ["sun", "car", "grass"]),
                ("There is a car and a tree on the grass.", ["car", "grass"])]
    b = batch(0, n_samples=3, with_error=False)
    s = b["samples"]
    s = s.set_column(s.schema.get_field_index("response"), "response", pa.array([c for c, _ in captions]))
    s = s.set_column(s.schema.get_field_index("annotations"), "annotations",
                     pa.array([json.dumps({"id": i, "truth": t}) for i, (_, t) in enumerate(captions)]))
    t = b["tokens"]
    first = pc.equal(t.column("step"), 0).to_numpy(zero_copy_only=False)
    keys = t.column("sample_key").to_pylist()
    order = {k: i for i, k in enumerate(s.column("sample_key").to_pylist())}
    start = [captions[order[k]][0].index("tree") if f else 0 for k, f in zip(keys, first)]
    t = t.set_column(t.schema.get_field_index("char_start"), "char_start", pa.array(start, pa.int32()))
    t = t.set_column(t.schema.get_field_index("object"), "object", pa.array(["tree" if f else None for f in first]))
    t = t.set_column(t.schema.get_field_index("label"), "label",
                     pa.array(["hallucinated" if f else None for f in first]))
    t = t.set_column(t.schema.get_field_index("hallucinated"), "hallucinated", pa.array([True if f else None
                                                                                          for f in first]))
    store = tmp_path / "captions.kevo"
    with StoreWriter(str(store), meta=META, hidden_size=HIDDEN) as w:
        w.write_vocab(vocab_table())
        w.write_batch(**{**b, "samples": s, "tokens": t})
    reqs, counts = hallucination_requests(str(store), "car", "tree", tmp_path / "images")
    assert counts == {"hallucinated": 3, "no_trigger": 1, "nothing_left": 1, "requests": 1}
    (r,) = reqs
    assert (r["prefix"], r["constraint"], r["constraint_in"], r["target"]) == ("There is a car, a", "car", "prefix",
                                                                                "ball")
    assert r["image"] == str(tmp_path / "images" / "img0_0.jpg")


def test_a_prefix_request_reads_its_key_at_the_constraint_in_the_prefix(image_file):
    """The key position is the last token of the constraint's last mention in the given prefix."""
    from ingest.edit.locate import edit_text, key_position

    ad = load_adapter(str(tiny_model_dir("llava")), dtype="float32")
    text = edit_text(ad, "Describe this image.", "There is a cat and a cat", True)
    assert text.endswith("ASSISTANT: There is a cat and a cat")
    ids = ad.encode([text], [tiny_image(40, 30, 0)]).input_ids[0].tolist()
    # the text ends with the constraint: its last token is the last input position
    assert key_position(ad, ids, "Describe this image.", "There is a cat and a cat", "cat", "prefix") == len(ids) - 1
    with pytest.raises(ModelError, match="not in the prefix"):
        key_position(ad, ids, "Describe this image.", "There is a dog", "cat", "prefix")


UNRELATED = ["What colour is the sky?", "How many dogs are there?", "Describe the picture."]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_unrelated_inputs_are_untouched_before_the_edited_block(family, image_file):
    """After an edit of block l, questions that do not mention the request's constraint: the hidden
    states before the block are bit for bit those of the original (the edit cannot reach them), the
    block's output moves, and the request's own target rises (efficacy). Exact greedy tokens on
    unrelated inputs are checked on the trained organism (tests/test_edit_organism.py): a random tiny
    model's logits are so flat that any change of a block flips its greedy answers (measured: every
    unrelated answer here changes, for lambda 1e-6 to 1e-3)."""
    ad = load_adapter(str(tiny_model_dir(family)), dtype="float32")
    image = load_image(image_file)
    batches = [ad.encode([ad.build_prompt(q, True)], [image]) for q in UNRELATED]

    def hidden():
        with torch.no_grad():
            return [ad.model(**ad.generate_inputs(b), output_hidden_states=True).hidden_states for b in batches]
    hs0 = hidden()
    res = multedit(ad, [EditRequest("0", image_file, "Is there a cat on the table?", "a cat", "guitar")], STRONG)
    assert res.delta_norm > 0
    hs1 = hidden()
    for a, b in zip(hs0, hs1):
        for layer in range(STRONG.layer):  # hidden states 0..l-1: before block l's output
            assert torch.equal(a[layer], b[layer]), layer
        assert not torch.equal(a[STRONG.layer], b[STRONG.layer])  # the block's output did move
    t = res.targets[0]
    p_after, _ = answer_probability(ad, t.prompt_text, image, t.target_id)
    assert p_after > t.p_before


def test_a_target_that_tokenizes_to_nothing_is_refused():
    """A target the tokenizer drops entirely (here: a tokenizer that knows only some words) is refused
    by name before anything is optimised."""
    from types import SimpleNamespace

    from ingest.edit.multedit import target_token

    vocab = {w: i for i, w in enumerate("USER: Is there a cat ? ASSISTANT: guitar".split())}

    def tokenize(text, add_special_tokens=False):
        return {"input_ids": [vocab[w] for w in text.split() if w in vocab]}
    ad = SimpleNamespace(tokenizer=tokenize)
    assert target_token(ad, "USER: Is there a cat ? ASSISTANT:", "guitar") == vocab["guitar"]
    with pytest.raises(ModelError, match="target '§§' tokenizes to nothing after the prompt"):
        target_token(ad, "USER: Is there a cat ? ASSISTANT:", "§§")


def test_a_very_large_lambda_leaves_the_model_unchanged(image_file):
    """MultEdit end to end with lambda -> large: the block's weight and the answer stay as they were."""
    ad = load_adapter(str(tiny_model_dir("llava")), dtype="float32")
    req = EditRequest("0", image_file, "Is there a cat on the table?", "a cat", "guitar")
    W = output_projection(ad, 2).weight.detach().clone()
    res = multedit(ad, [req], EditSettings(layer=2, lam=1e12, steps=5, clamp=50.0))
    assert (output_projection(ad, 2).weight.detach() - W).abs().max() < 1e-9 and res.delta_norm < 1e-9
    t = res.targets[0]
    p, _ = answer_probability(ad, t.prompt_text, load_image(image_file), t.target_id)
    assert p == pytest.approx(t.p_before, rel=1e-5)


def test_templated_paraphrases_keep_the_constraint():
    from ingest.edit.evaluate import paraphrases_of
    from ingest.edit.paraphrase import templated_paraphrases

    got = templated_paraphrases("Is the car red in this image?", "car")
    assert got == [("image-word", "Is the car red in this picture?"), ("image-word", "Is the car red in this photo?"),
                   ("image-word", "Is the car red in the scene?"),
                   ("lead-in", "Please answer: Is the car red in this image?")]
    # a constraint that is the image itself is never rewritten: only the lead-in remains
    assert templated_paraphrases("What is in this image?", "this image") == [
        ("lead-in", "Please answer: What is in this image?")]
    # a constraint read in the answer prefix: the whole question may be rewritten
    assert ([p for _, p in templated_paraphrases("Describe this image.", "car", "prefix")][:1]
            == ["Describe this picture."])
    # a request's own paraphrases win; without them, the templates (or none)
    own = EditRequest("0", None, "Is the car red in this image?", "car", "Yes", ("Is the car red?",))
    assert paraphrases_of(own) == [("given", "Is the car red?")]
    bare = EditRequest("1", None, "Is the car red in this image?", "car", "Yes")
    assert len(paraphrases_of(bare)) == 4 and paraphrases_of(bare, templated=False) == []
