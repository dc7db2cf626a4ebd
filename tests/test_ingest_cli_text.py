"""`kevo ingest text` end to end through the real command (tiny causal LM), and the user errors."""

from __future__ import annotations

import json

import pytest

from tests.runner_helpers import (
    generated_ids,
    greedy_reference,
    kevo,
    manifest,
    store_content,
    tiny_model_dir,
)

MAX_NEW = 9
PROMPTS = ["Describe a cat on the table.", "What is in the picture?", "A red car and a tree.",
           "Is there a horse? Answer yes or no.", "The guitar 🎸 is next to the dog."]


@pytest.fixture(scope="module")
def model():
    return tiny_model_dir("causal_lm")


@pytest.fixture(scope="module")
def run(tmp_path_factory, model):
    tmp = tmp_path_factory.mktemp("text")
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p, "topic": "test"}) + "\n"
                               for i, p in enumerate(PROMPTS)))
    out = tmp / "text.kevo"
    p = kevo("ingest", "text", "--prompts", prompts, "--model", model, "--out", out, "--max-new-tokens", MAX_NEW,
             "--batch-size", 3, "--dola")
    return dict(out=out, proc=p, prompts=prompts)


def test_text_store_generated_tokens_equal_model_generate(run, model):
    c = store_content(run["out"])
    rows = c["samples"].to_pylist()
    assert [r["sample_key"] for r in rows] == [f"text:q{i}" for i in range(len(PROMPTS))]
    assert c["errors"].num_rows == 0
    gen = generated_ids(run["out"])
    for r, prompt in zip(rows, PROMPTS):
        assert r["prompt"] == prompt and r["image_id"] is None and r["image_sha256"] is None
        assert json.loads(r["annotations"]) == {"id": r["item_id"], "topic": "test"}
        ref = greedy_reference(model, r["prompt_text"], None, MAX_NEW)
        assert gen[r["sample_key"]] == ref
    # default capture: generated tokens only, hidden states of every layer, final_norm lens only, js_dola kept
    n = c["tokens"].num_rows
    assert set(c["tokens"].column("role").to_pylist()) == {"generated"}
    assert c["hidden"].shape == (n, 4, 32)
    assert c["layers"].num_rows == n * 4 and set(c["layers"].column("lens").to_pylist()) == {"final_norm"}
    js_dola = c["layers"].column("js_dola").to_pylist()
    layer = c["layers"].column("layer").to_pylist()
    assert all((v is None) == (lay == 0) for v, lay in zip(js_dola, layer))
    assert manifest(run["out"])["dataset"]["fingerprint"]["format"] == "jsonl"


def test_plain_text_file_one_prompt_per_line(tmp_path, model):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS[:2]) + "\n")
    out = tmp_path / "t.kevo"
    kevo("ingest", "text", "--prompts", prompts, "--model", model, "--out", out, "--max-new-tokens", 3,
         "--hidden", "none", "--top-k", 0)
    c = store_content(out)
    assert c["samples"].column("sample_key").to_pylist() == ["text:1", "text:2"]
    assert c["hidden"] is None and c["topk"].num_rows == 0
    assert manifest(out)["hidden"] is None


def test_dry_run_prints_the_estimate_and_writes_nothing(tmp_path, model, run):
    out = tmp_path / "dry.kevo"
    p = kevo("ingest", "text", "--prompts", run["prompts"], "--model", model, "--out", out, "--dry-run",
             "--lens", "final_norm,raw")
    # 5 prompts x 256 tokens x 4 layers x 32 x 2 bytes
    assert "5 samples, <= 1,280 tokens" in p.stderr and "1,280 tokens x 4 layers x 32 x 2 B = 327.7 KB" in p.stderr
    assert "layers: 10,240 rows (2 lens mode(s) x 4 layers)" in p.stderr
    assert not out.exists()


def test_skip_layers_run_records_the_experiment(tmp_path, model, run):
    out = tmp_path / "skip.kevo"
    kevo("ingest", "text", "--prompts", run["prompts"], "--model", model, "--out", out, "--max-new-tokens", 3,
         "--skip-layers", "1", "--limit", 2)
    m = manifest(out)
    assert m["capture"]["skip_layers"] == [1] and m["model"]["n_layers"] == 2
    assert m["model"]["skipped_layers"] == [1]
    c = store_content(out)
    assert c["samples"].num_rows == 2 and c["hidden"].shape[1] == 3  # layers 0..2 after removing one


# ---- user errors: one clear line, non-zero exit, nothing written or lost

def _fails(p, *needles):
    assert p.returncode != 0, p.stdout + p.stderr
    err = p.stderr.strip().splitlines()
    assert err and err[-1].startswith("kevo: error:") or "Error:" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    for n in needles:
        assert n in p.stderr, (n, p.stderr)


def test_unknown_model_directory(tmp_path, run):
    out = tmp_path / "x.kevo"
    p = kevo("ingest", "text", "--prompts", run["prompts"], "--model", tmp_path / "no-such-model", "--out", out,
             check=False)
    _fails(p, "no-such-model")
    assert not out.exists()


def test_model_directory_without_a_config(tmp_path, run):
    d = tmp_path / "empty-model"
    d.mkdir()
    p = kevo("ingest", "text", "--prompts", run["prompts"], "--model", d, "--out", tmp_path / "x.kevo", check=False)
    _fails(p, "empty-model", "config.json")


def test_empty_prompt_file(tmp_path, model):
    prompts = tmp_path / "empty.txt"
    prompts.write_text("\n\n")
    p = kevo("ingest", "text", "--prompts", prompts, "--model", model, "--out", tmp_path / "x.kevo", check=False)
    _fails(p, "empty.txt", "contains no prompts")
    assert not (tmp_path / "x.kevo").exists()


def test_skip_layers_out_of_range(tmp_path, model, run):
    p = kevo("ingest", "text", "--prompts", run["prompts"], "--model", model, "--out", tmp_path / "x.kevo",
             "--skip-layers", "1-5", check=False)
    _fails(p, "--skip-layers", "layer 3 is out of range", "0..2")
    assert not (tmp_path / "x.kevo").exists()


def test_hidden_layer_out_of_range(tmp_path, model, run):
    p = kevo("ingest", "text", "--prompts", run["prompts"], "--model", model, "--out", tmp_path / "x.kevo",
             "--hidden", "0,9", check=False)
    _fails(p, "--hidden", "layer 9 is out of range")


def test_resume_with_other_settings_is_refused_and_the_store_is_untouched(run, model):
    before = (run["out"] / "manifest.json").read_bytes()
    p = kevo("ingest", "text", "--prompts", run["prompts"], "--model", model, "--out", run["out"],
             "--max-new-tokens", MAX_NEW + 1, "--batch-size", 3, "--dola", check=False)
    _fails(p, "max_new_tokens")
    assert (run["out"] / "manifest.json").read_bytes() == before


def test_no_resume_refuses_a_store_with_samples(run, model):
    before = (run["out"] / "manifest.json").read_bytes()
    p = kevo("ingest", "text", "--prompts", run["prompts"], "--model", model, "--out", run["out"],
             "--max-new-tokens", MAX_NEW, "--batch-size", 3, "--dola", "--no-resume", check=False)
    _fails(p, "already holds 5 samples", "--no-resume")
    assert (run["out"] / "manifest.json").read_bytes() == before


def test_images_with_a_text_only_model_fail_before_writing(tmp_path, model):
    from tests.runner_helpers import make_images

    images = make_images(tmp_path / "images", 2)
    out = tmp_path / "x.kevo"
    p = kevo("ingest", "folder", "--images", images, "--prompt", "Describe.", "--model", model, "--out", out,
             check=False)
    _fails(p, "is text-only", "folder")
    assert not out.exists()


def test_resume_with_a_smaller_batch_size_continues_the_run(tmp_path, model, run):
    """A run that ran out of memory resumes with a smaller --batch-size: the result equals one run."""
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(run["prompts"].read_text().splitlines(keepends=True)[:2]))
    out = tmp_path / "resumed.kevo"
    kevo("ingest", "text", "--prompts", partial, "--model", model, "--out", out, "--max-new-tokens", MAX_NEW,
         "--batch-size", 3, "--dola")
    kevo("ingest", "text", "--prompts", run["prompts"], "--model", model, "--out", out,
         "--max-new-tokens", MAX_NEW, "--batch-size", 1, "--dola")
    got, want = store_content(out), store_content(run["out"])
    assert got["samples"].column("sample_key").to_pylist() == want["samples"].column("sample_key").to_pylist()
    assert generated_ids(out) == generated_ids(run["out"])
    assert manifest(out)["capture"]["batch_size"] == 1
