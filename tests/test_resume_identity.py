"""A model is what its weights are, not where they lie: resume, join and merge share one policy.

Through the real `kevo` command with a real tiny model: two nodes with their own copy of the
weights and their own batch size make stores that `kevo store merge` joins without --force into
the store of one ingest; a run resumes after the model directory moved or is spelled otherwise;
and a store is refused, naming the difference, for other weights (also retrained at the same
path, checked before the model loads), another prompt or an edited annotation file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from ingest.config import IngestConfig, IngestError
from ingest.datasets import Dataset, DatasetItem
from ingest.runner import run_ingest
from tests.runner_helpers import (
    KEVO,
    REPRODUCIBLE_ENV,
    generated_ids,
    manifest,
    store_content,
    tiny_model_dir,
)

PROMPTS = ["Describe a cat on the table.", "What is in the picture?", "A red car and a tree.",
           "Is there a horse?", "The guitar is next to the dog.", "Two birds in the sky."]
MAX_NEW = 6
COMMON = ["--max-new-tokens", MAX_NEW, "--lens", "final_norm,raw", "--top-k", 3]


def kevo_in(cwd, *args, check=True):
    p = subprocess.run([KEVO, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd,
                       env={**os.environ, **REPRODUCIBLE_ENV})
    if check and p.returncode != 0:
        raise AssertionError(f"kevo {' '.join(map(str, args))} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def _prompts(path, ids):
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": PROMPTS[i]}) + "\n" for i in ids))
    return path


def _refused(p, *needles):
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    for n in needles:
        assert n in p.stderr, p.stderr


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity")
    weights = tiny_model_dir("causal_lm")
    node0, node1 = root / "node0", root / "node1"
    for node in (node0, node1):
        shutil.copytree(weights, node / "weights")
    everything = _prompts(root / "all.jsonl", range(6))
    one = root / "one.kevo"
    kevo_in(root, "ingest", "text", "--prompts", everything, "--model", weights, "--out", one, "--batch-size", 1,
            *COMMON)
    a = node0 / "a.kevo"
    kevo_in(node0, "ingest", "text", "--prompts", _prompts(node0 / "part.jsonl", range(3)), "--model", "weights",
            "--out", a, "--batch-size", 1, *COMMON)
    b = node1 / "b.kevo"
    kevo_in(node1, "ingest", "text", "--prompts", _prompts(node1 / "part.jsonl", range(3, 6)), "--model",
            node1 / "weights", "--out", b, "--batch-size", 3, *COMMON)
    return dict(root=root, weights=weights, everything=everything, one=one, a=a, b=b, node0=node0, node1=node1)


def test_stores_of_the_same_weights_in_two_directories_merge_into_one_ingest(world):
    ma, mb = manifest(world["a"]), manifest(world["b"])
    assert ma["model"]["path"] != mb["model"]["path"] and ma["capture"]["batch_size"] != mb["capture"]["batch_size"]
    assert ma["model"]["fingerprint"] == mb["model"]["fingerprint"] == manifest(world["one"])["model"]["fingerprint"]
    out = world["root"] / "merged.kevo"
    p = kevo_in(world["root"], "store", "merge", world["a"], world["b"], "--out", out)  # no --force
    assert "6 samples, 0 errors" in p.stdout
    assert kevo_in(world["root"], "store", "verify", out).returncode == 0
    got, want = store_content(out), store_content(world["one"])
    for table in ("samples", "tokens", "vocab", "errors"):
        assert got[table].equals(want[table]), table
    assert generated_ids(out) == generated_ids(world["one"])
    # node1 generated three samples per batch: the same computation up to rounding (left padding)
    g, w = got["layers"], want["layers"]
    keys = ["token_uid", "lens", "layer", "top1_id"]
    assert g.select(keys).equals(w.select(keys))
    for col in ("p_out", "entropy", "js_final", "kl_final"):
        np.testing.assert_allclose(g.column(col).to_numpy(), w.column(col).to_numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["hidden"].astype(np.float32), want["hidden"].astype(np.float32), rtol=2e-3,
                               atol=2e-3)
    assert "merge_forced" not in manifest(out)["capture"]


def test_a_resume_finds_the_same_weights_moved_or_spelled_otherwise(world, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(world["weights"], home / "weights")
    everything = world["everything"]
    out = home / "resumed.kevo"
    for spelling, limit in (("weights", 2), ("./weights/", 3), (str(home / "weights"), 4)):
        kevo_in(home, "ingest", "text", "--prompts", everything, "--model", spelling, "--out", out, "--limit", limit,
                "--batch-size", 2, *COMMON)
    (home / "weights").rename(home / "moved")
    p = kevo_in(home, "ingest", "text", "--prompts", everything, "--model", "moved", "--out", out, *COMMON)
    assert "4 of 6 samples already committed" in p.stderr
    assert generated_ids(out) == generated_ids(world["one"])
    assert manifest(out)["model"]["path"] == str((home / "moved").resolve())  # provenance: the last run's


def test_other_weights_are_refused_by_merge_naming_the_difference(world, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    other = tmp_path / "retrained"
    shutil.copytree(world["weights"], other)
    st = other / "model.safetensors"
    tensors = load_file(st)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + torch.ones_like(tensors[name]) * 1e-3
    save_file(tensors, st, metadata={"format": "pt"})
    c = tmp_path / "c.kevo"
    kevo_in(tmp_path, "ingest", "text", "--prompts", _prompts(tmp_path / "p.jsonl", range(3, 6)), "--model", other,
            "--out", c, "--batch-size", 3, *COMMON)
    p = kevo_in(tmp_path, "store", "merge", world["a"], c, "--out", tmp_path / "m.kevo", check=False)
    _refused(p, "model.fingerprint", "--force")
    assert not (tmp_path / "m.kevo").exists()


def test_weights_retrained_at_the_same_path_are_refused_before_the_model_loads(world, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(world["weights"], home / "weights")
    out = home / "x.kevo"
    args = ["ingest", "text", "--prompts", world["everything"], "--model", "weights", "--out", out, *COMMON]
    kevo_in(home, *args, "--limit", 1)
    before = (out / "manifest.json").read_bytes()
    # "retrained": other bytes under the same name; these do not even load, so only a check made
    # from the files, before loading, can give the answer below
    (home / "weights" / "model.safetensors").write_bytes(b"\0" * 4096)
    p = kevo_in(home, *args, check=False)
    _refused(p, "was made by another run", "model.fingerprint")
    assert "safetensors" in p.stderr and "disk estimate" not in p.stderr
    assert (out / "manifest.json").read_bytes() == before


def _items(ids):
    return [DatasetItem(key=f"amber:{i}", item_id=str(i), prompt=PROMPTS[i], image_path=None, annotations={})
            for i in ids]


def test_another_prompt_or_an_edited_annotation_file_is_refused(world, tmp_path):
    """A dataset is its name, its settings and its annotation files; which items a run takes may change."""
    model = str(world["weights"])
    out = tmp_path / "ds.kevo"

    def run(ids, prompt="Describe the image.", annotations="aa" * 32):
        ds = Dataset("amber", _items(ids), fingerprint={"root": str(tmp_path / f"data{len(ids)}"),
                                                        "files": {"annotations.json": annotations}},
                     settings={"task": "generative", "prompt": prompt, "ids": ",".join(map(str, ids))})
        return run_ingest(ds, IngestConfig(model=model, out=str(out), max_new_tokens=3, progress=False),
                          echo=lambda m: None)

    run([0, 1])
    assert run([0, 1, 2]).n_samples == 1  # more ids, data at another path: the same dataset
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(IngestError, match=r"dataset\.settings\.prompt: 'Describe the image\.' vs 'Describe it\.'"):
        run([0, 1, 2, 3], prompt="Describe it.")
    with pytest.raises(IngestError, match=r"dataset\.fingerprint\.files"):
        run([0, 1, 2, 3], annotations="bb" * 32)
    assert (out / "manifest.json").read_bytes() == before
