"""Activations beyond float16's range: stored as inf, so kevo counts them during capture, warns with
the counts, suggests bfloat16 and records them in the manifest (they used to pass in silence)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.runner_helpers import kevo, manifest, tiny_model_dir


@pytest.fixture(scope="module")
def loud_model(tmp_path_factory):
    """The tiny causal LM with its embeddings scaled up: every layer's residual stream is far beyond
    65504 while the normed lens still works (a model with large activations, in miniature)."""
    import torch
    from transformers import AutoModelForCausalLM

    src = tiny_model_dir("causal_lm")
    dst = tmp_path_factory.mktemp("loud") / "model"
    shutil.copytree(src, dst)
    m = AutoModelForCausalLM.from_pretrained(dst, torch_dtype=torch.float32)
    with torch.no_grad():
        m.get_input_embeddings().weight.mul_(3e6)
    m.save_pretrained(dst)
    return dst


def _prompts(tmp):
    p = tmp / "p.jsonl"
    prompts = ["A cat.", "A red car."]
    p.write_text("".join(json.dumps({"id": f"q{i}", "prompt": t}) + "\n" for i, t in enumerate(prompts)))
    return p


def test_overflow_is_counted_warned_and_recorded(tmp_path, loud_model):
    from kevo_store import open_store

    out = tmp_path / "f16.kevo"
    p = kevo("ingest", "text", "--prompts", _prompts(tmp_path), "--model", loud_model, "--out", out,
             "--max-new-tokens", 4, "--batch-size", 1, "--hidden-dtype", "float16")
    warn = [ln for ln in p.stderr.splitlines() if "float16's range" in ln]
    assert warn and all("--hidden-dtype bfloat16" in ln for ln in warn), p.stderr
    rec = manifest(out)["capture"]["float16_overflow"]
    # independent count: the values that read back as inf
    s = open_store(out)
    h = s.hidden(np.arange(s.rows("tokens")))
    infs = np.isinf(h).sum(axis=(0, 2))
    assert infs.sum() > 0
    assert rec["total"] == int(infs.sum())
    assert rec["by_layer"] == {str(layer): int(n) for layer, n in zip(s.hidden_layers, infs) if n}
    assert f"{rec['total']:,} hidden-state values in this run" in p.stderr
    s.close()


def test_bfloat16_holds_them_and_a_normal_model_is_quiet(tmp_path, loud_model):
    from kevo_store import open_store

    out = tmp_path / "bf16.kevo"
    p = kevo("ingest", "text", "--prompts", _prompts(tmp_path), "--model", loud_model, "--out", out,
             "--max-new-tokens", 4, "--hidden-dtype", "bfloat16")
    assert "float16's range" not in p.stderr
    assert "float16_overflow" not in manifest(out)["capture"]
    s = open_store(out)
    h = s.hidden(np.arange(s.rows("tokens")))
    assert np.isfinite(h).all() and np.abs(h).max() > 65504
    s.close()
    out2 = tmp_path / "plain.kevo"
    p = kevo("ingest", "text", "--prompts", _prompts(tmp_path), "--model", tiny_model_dir("causal_lm"),
             "--out", out2, "--max-new-tokens", 4)
    assert "float16's range" not in p.stderr and "float16_overflow" not in manifest(out2)["capture"]
