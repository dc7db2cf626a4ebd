"""The Manifest object: the one compatibility policy, and the weights fingerprint it relies on."""

from __future__ import annotations

import json
import os

import pytest

from kevo_store.errors import FormatVersionError, StoreError
from kevo_store.manifest import Manifest


def _meta(**patch):
    m = {
        "model": {"id": "/node0/llava", "path": "/node0/llava", "revision": None, "family": "llava",
                  "n_layers": 32, "fingerprint": {"sha256": "a" * 64, "files": {"model.safetensors": "b" * 64}}},
        "lens": {"modes": ["final_norm"], "top_k": 10, "dtype": "float32"},
        "generation": {"max_new_tokens": 256, "prompt_template": "USER: <image>\n{prompt} ASSISTANT:"},
        "dataset": {"name": "amber", "n_items": 1004, "limit": None,
                    "fingerprint": {"root": "/node0/amber", "images": "/node0/amber/image",
                                    "files": {"annotations.json": "c" * 64}},
                    "settings": {"task": "generative", "prompt": "Describe this image.", "ids": "1-500"}},
        "capture": {"hidden_layers": [0, 16, 32], "hidden_dtype": "float16", "batch_size": 8, "world_size": 1},
    }
    for path, value in patch.items():
        sec, *keys = path.split("__")
        d = m[sec]
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return Manifest.new(m)


def test_provenance_is_not_identity():
    a = _meta()
    b = _meta(model__id="llava-1.5", model__path="/node1/weights", capture__batch_size=1, capture__world_size=4,
              dataset__fingerprint__root="/scratch/amber", dataset__fingerprint__images="/scratch/img",
              dataset__settings__ids="501-1004", dataset__n_items=504, dataset__limit=10)
    assert a.identity_diff(b) == []


@pytest.mark.parametrize("patch,named", [
    ({"model__fingerprint": {"sha256": "f" * 64, "files": {"model.safetensors": "e" * 64}}},
     "model.fingerprint.files.model.safetensors"),
    ({"generation__prompt_template": "<s>[INST] {prompt} [/INST]"}, "generation.prompt_template"),
    ({"dataset__settings__prompt": "What is here?"}, "dataset.settings.prompt: 'Describe this image.' vs "
                                                     "'What is here?'"),
    ({"dataset__settings__task": "discriminative"}, "dataset.settings.task"),
    ({"dataset__fingerprint__files": {"annotations.json": "d" * 64}}, "dataset.fingerprint.files"),
    ({"lens__top_k": 20}, "lens.top_k: 10 vs 20"),
    ({"capture__hidden_dtype": "bfloat16"}, "capture.hidden_dtype"),
])
def test_what_changes_the_numbers_is_named(patch, named):
    diff = _meta().identity_diff(_meta(**patch))
    assert len(diff) >= 1 and any(d.startswith(named) for d in diff), diff


def test_without_fingerprints_the_model_name_decides():
    a, b = _meta(), _meta(model__id="other/model")
    for m in (a, b):
        del m["model"]["fingerprint"]
    assert a.identity_diff(b) == ["model.id: '/node0/llava' vs 'other/model'"]
    # one side without a fingerprint (a store older than fingerprints): the name decides too
    c = _meta(model__id="other/model")
    assert a.identity_diff(c) == ["model.id: '/node0/llava' vs 'other/model'"]


def test_several_datasets_are_compared_only_when_asked():
    a, b = _meta(), _meta(dataset__name="coco", dataset__settings__prompt="Caption.")
    assert a.identity_diff(b) == []  # a merge of two datasets keeps each one's description
    assert "dataset.name: 'amber' vs 'coco'" in a.identity_diff(b, same_dataset=True)


def test_a_key_only_one_side_records_is_not_a_difference():
    a = _meta()
    planned = {"model": {"id": "x", "fingerprint": a["model"]["fingerprint"], "n_layers": 32},
               "lens": {"modes": ["final_norm"], "top_k": 10}}
    assert a.identity_diff(planned, same_dataset=True) == []


def test_hidden_shapes_and_format_checks():
    a = _meta()
    a["hidden"] = {"layers": [0, 16, 32], "hidden_size": 4096, "logical_dtype": "float16"}
    assert a.hidden_diff({"layers": [0, 16, 32], "hidden_size": 4096, "logical_dtype": "float16"}) == []
    assert a.hidden_diff({"layers": [0, 32], "hidden_size": 4096, "logical_dtype": "float16"}) == [
        "hidden.layers: [0, 16, 32] vs [0, 32]"]
    assert a.hidden_diff(None) == ["hidden: captured vs none"]
    raw = json.loads(a.dump())
    assert Manifest.parse(a.dump(), "s") == raw
    raw["format_version"] = 9
    with pytest.raises(FormatVersionError, match="format version 9.*upgrade kevo"):
        Manifest.parse(json.dumps(raw).encode(), "s")
    with pytest.raises(StoreError, match="not a kevo store manifest"):
        Manifest.parse(b'{"format_version": 1}', "s")


def test_partial_pull_rules():
    m = _meta()
    m["hidden"] = {"layers": [0, 16, 32], "hidden_size": 8, "logical_dtype": "float16"}
    m["tables"]["layers"]["files"] = ["tables/layers/part-000001.parquet"]
    assert m.partial is None and m.omitted_files(["tables/layers/part-000001.parquet"]) == set()
    m["partial"] = {"source": "s3://b/x.kevo", "omitted_tables": ["layers"], "hidden_layers": [16]}
    declared = ["tables/layers/part-000001.parquet", "hidden/c/0/0/0", "hidden/c/0/1/0", "hidden/c/0/2/0",
                "hidden/zarr.json"]
    assert m.omitted_files(declared) == {"tables/layers/part-000001.parquet", "hidden/c/0/0/0", "hidden/c/0/2/0"}
    assert m.hidden_layers_present() == [16] and "layers" not in m.present_tables()
    assert m.partial_summary() == "pulled from s3://b/x.kevo; tables left out: layers; hidden layers 16 only"
    with pytest.raises(StoreError, match=r"layer\(s\) \[0\] were left out"):
        m.check_hidden_layers_present([0, 16], "x.kevo")


def test_weights_fingerprint_is_cached_and_follows_the_bytes(tmp_path, monkeypatch):
    from ingest.models.fingerprint import CACHE_NAME, fingerprint

    monkeypatch.setenv("KEVO_CACHE_DIR", str(tmp_path / "cache"))
    w = tmp_path / "weights"
    w.mkdir()
    (w / "config.json").write_text('{"model_type": "llama"}')
    (w / "model.safetensors").write_bytes(b"\1" * 1000)
    (w / "README.md").write_text("not part of the model")
    fp = fingerprint(w)
    assert sorted(fp["files"]) == ["config.json", "model.safetensors"]
    cache = json.loads((tmp_path / "cache" / CACHE_NAME).read_text())
    assert len(cache) == 2 and all(str(w.resolve()) in k for k in cache)
    # a copy elsewhere is the same model; the README does not count
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    for name in ("config.json", "model.safetensors"):
        (copy / name).write_bytes((w / name).read_bytes())
    assert fingerprint(copy)["sha256"] == fp["sha256"]
    # the cached hash is used while (size, mtime) hold: a changed file is hashed again
    (w / "model.safetensors").write_bytes(b"\2" * 1000)
    st = (w / "model.safetensors").stat()
    os.utime(w / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fingerprint(w)["sha256"] != fp["sha256"]
