"""`kevo ingest folder` end to end through the real command, with a tiny random LLaVA."""

from __future__ import annotations

import json

import pytest

from tests.runner_helpers import (
    generated_ids,
    greedy_reference,
    kevo,
    make_images,
    manifest,
    sha256,
    store_content,
    tiny_model_dir,
)

PROMPT = "Describe this image."
MAX_NEW = 7


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("folder")
    images = make_images(tmp / "images", 3, corrupt=("broken.jpg",))
    (images / "notes.txt").write_text("not an image: ignored")
    model = tiny_model_dir("llava")
    out = tmp / "store.kevo"
    p = kevo("ingest", "folder", "--images", images, "--prompt", PROMPT, "--model", model, "--out", out,
             "--max-new-tokens", MAX_NEW, "--batch-size", 2, "--lens", "final_norm,raw", "--top-k", 4,
             "--hidden", "0,2-3", "--capture-prompt")
    return dict(images=images, model=model, out=out, proc=p)


def test_store_holds_every_image_and_the_broken_one_as_an_error(run):
    c = store_content(run["out"])
    keys = c["samples"].column("sample_key").to_pylist()
    assert keys == ["folder:img00.png", "folder:img01.png", "folder:img02.png"]
    errs = c["errors"].to_pylist()
    assert len(errs) == 1
    e = errs[0]
    assert e["sample_key"] == "folder:broken.jpg" and e["stage"] == "read"
    assert "broken.jpg" in e["message"]
    assert "disk estimate" in run["proc"].stderr and "1 samples failed" in run["proc"].stderr


def test_generated_tokens_equal_model_generate(run):
    c = store_content(run["out"])
    gen = generated_ids(run["out"])
    for row in c["samples"].to_pylist():
        image = run["images"] / row["image_id"]
        ref = greedy_reference(run["model"], row["prompt_text"], image, MAX_NEW)
        assert gen[row["sample_key"]] == ref
        assert row["n_generated"] == len(ref)
        assert row["stop_reason"] == ("eos" if len(ref) < MAX_NEW else "max_new_tokens")
        assert row["image_sha256"] == sha256(image)
        assert row["prompt"] == PROMPT
        # the llava_v1 template, verbatim
        assert row["prompt_text"].endswith(f"USER: <image>\n{PROMPT} ASSISTANT:")
        assert row["prompt_text"].startswith("A chat between a curious human and an artificial intelligence")


def test_token_rows_roles_spans_and_table_sizes(run):
    c = store_content(run["out"])
    tokens = c["tokens"].to_pylist()
    samples = {r["sample_id"]: r for r in c["samples"].to_pylist()}
    for sid, s in samples.items():
        rows = [t for t in tokens if t["sample_id"] == sid]
        prompt_rows = [t for t in rows if t["role"] != "generated"]
        gen = [t for t in rows if t["role"] == "generated"]
        assert len(prompt_rows) == s["n_prompt_tokens"] and len(gen) == s["n_generated"]
        # the tiny CLIP sees a 2 x 2 patch grid: four image tokens with their grid positions
        img = [(t["patch_row"], t["patch_col"]) for t in rows if t["role"] == "image"]
        assert img == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert [t["step"] for t in gen] == list(range(len(gen)))
        assert [t["position"] for t in gen] == list(range(s["n_prompt_tokens"] - 1,
                                                          s["n_prompt_tokens"] - 1 + len(gen)))
        # generated spans partition the response
        assert "".join(s["response"][t["char_start"]:t["char_end"]] for t in gen) == s["response"]
        assert all(t["char_start"] is None for t in prompt_rows)
    n = len(tokens)
    assert c["layers"].num_rows == n * 2 * 4  # 2 lens modes x layers 0..3
    assert c["topk"].num_rows == n * 2 * 4 * 4
    assert c["hidden"].shape == (n, 3, 32)
    assert c["vocab"].num_rows == 400


def test_manifest_records_model_lens_generation_dataset_capture(run):
    m = manifest(run["out"])
    assert m["model"]["id"] == str(run["model"]) and m["model"]["family"] == "llava"
    assert m["model"]["dtype"] == "float32" and "revision" in m["model"]
    assert m["lens"]["modes"] == ["final_norm", "raw"] and m["lens"]["top_k"] == 4
    g = m["generation"]
    assert g["decoding"] == "greedy" and g["max_new_tokens"] == MAX_NEW
    assert "llava_v1" in g["prompt_template"]
    d = m["dataset"]
    assert d["name"] == "folder" and d["settings"]["prompt"] == PROMPT and d["fingerprint"]["n_files"] == 4
    assert m["capture"] == {"hidden_layers": [0, 2, 3], "hidden_dtype": "float16", "skip_layers": [],
                            "capture_prompt": True, "world_size": 1, "batch_size": 2}
    json.dumps(m)


def test_rerun_resumes_and_adds_nothing(run):
    before = manifest(run["out"])
    p = kevo("ingest", "folder", "--images", run["images"], "--prompt", PROMPT, "--model", run["model"],
             "--out", run["out"], "--max-new-tokens", MAX_NEW, "--batch-size", 2, "--lens", "final_norm,raw",
             "--top-k", 4, "--hidden", "0,2-3", "--capture-prompt")
    assert "is complete: all 4 samples are committed (1 as errors" in p.stderr  # and the model is not loaded
    after = manifest(run["out"])
    assert after["tables"]["samples"]["rows"] == before["tables"]["samples"]["rows"] == 3
    assert after["tables"]["errors"]["rows"] == 1
