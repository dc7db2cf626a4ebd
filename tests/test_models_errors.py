"""load_adapter on bad input: one clear ModelError naming the model and the reason."""

from __future__ import annotations

import json
import shutil

import pytest

from ingest.models import ModelError, load_adapter, supported_families
from tests.model_helpers import tiny_model_dir


def test_unknown_directory(tmp_path):
    with pytest.raises(ModelError, match="no such directory"):
        load_adapter(str(tmp_path / "nope" / "model"))


def test_hub_id_not_in_cache():
    with pytest.raises(ModelError, match=r"nor in the Hugging Face cache.*works offline"):
        load_adapter("kevo-tests/definitely-not-cached-model")


def test_non_safetensors_weights(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (d / "pytorch_model.bin").write_bytes(b"\x80\x02not really")
    with pytest.raises(ModelError, match=r"pickled weights \(pytorch_model.bin\).*safetensors only"):
        load_adapter(str(d))


def test_no_weights_no_config(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    with pytest.raises(ModelError, match="no \\*.safetensors"):
        load_adapter(str(d))
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="no config.json"):
        load_adapter(str(d))


def test_unknown_architecture_lists_families(tmp_path):
    src = tiny_model_dir("causal_lm")
    d = tmp_path / "bert"
    shutil.copytree(src, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "bert", ["BertForMaskedLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError) as e:
        load_adapter(str(d))
    msg = str(e.value)
    assert "model_type='bert'" in msg and "BertForMaskedLM" in msg
    for fam in ("llava", "llava_next", "qwen2_vl", "idefics3", "paligemma", "gemma3", "instructblip", "causal_lm"):
        assert fam in msg and fam in supported_families()


def test_bad_dtype_and_device_args():
    path = str(tiny_model_dir("causal_lm"))
    with pytest.raises(ModelError, match="unknown dtype 'fp8'"):
        load_adapter(path, dtype="fp8")
    with pytest.raises(ModelError, match="either device or device_map"):
        load_adapter(path, device="cpu", device_map="auto")


def test_model_info_and_images_on_text_model():
    ad = load_adapter(str(tiny_model_dir("causal_lm")), dtype="float32")
    info = ad.model_info
    assert info["family"] == "causal_lm" and info["architecture"] == "LlamaForCausalLM"
    assert (info["n_layers"], info["hidden_size"], info["vocab_size"], info["dtype"]) == (3, 32, ad.vocab_size,
                                                                                          "float32")
    with pytest.raises(ValueError, match="text-only"):
        ad.build_prompt("hi", has_image=True)


def test_hub_id_resolved_from_local_cache(tmp_path, monkeypatch):
    """A hub id is found in the Hugging Face cache layout (refs/main -> snapshots/<commit>), offline."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--kevo-tests--tiny-llava"
    shutil.copytree(tiny_model_dir("llava"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ad = load_adapter("kevo-tests/tiny-llava", dtype="float32")
    assert ad.family == "llava"
    assert ad.model_info["id"] == "kevo-tests/tiny-llava" and ad.model_info["revision"] == commit
    with pytest.raises(ModelError, match="nor in the Hugging Face cache"):
        load_adapter("kevo-tests/tiny-llava", revision="v9")


def test_original_llava_checkpoint_hint(tmp_path):
    d = tmp_path / "llava-v1.5-7b"
    d.mkdir()
    cfg = {"model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"]}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="llava-hf/llava-1.5-7b-hf"):
        load_adapter(str(d))


def test_device_map_and_device():
    """device_map (accelerate) and device give the same model as a plain load."""
    import torch

    from ingest.capture import CaptureSettings, capture
    from tests.model_helpers import tiny_image

    path = str(tiny_model_dir("llava"))
    a = load_adapter(path, dtype="float32", device_map={"": "cpu"})
    b = load_adapter(path, dtype="float32", device="cpu")
    assert a.device == b.device == torch.device("cpu")
    texts = [a.build_prompt("Describe this image.", True)]
    ca = capture(a, texts, [tiny_image()], CaptureSettings(max_new_tokens=3))[0]
    cb = capture(b, texts, [tiny_image()], CaptureSettings(max_new_tokens=3))[0]
    assert ca.generated_ids.tolist() == cb.generated_ids.tolist()
    assert (ca.hidden == cb.hidden).all()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "smolvlm"])
def test_family_names_the_variant(family):
    assert load_adapter(str(tiny_model_dir(family)), dtype="float32").model_info["family"] == family
