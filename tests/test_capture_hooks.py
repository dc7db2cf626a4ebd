"""Hidden states recorded by forward hooks (ingest.residual) are the very bytes the former path
(transformers' ``output_hidden_states``, every prompt position kept) gave, for every family.

For each family, with and without ``--capture-prompt``: ``kevo ingest`` in-process twice on the same
loaded model, once per path, gives stores with equal tables (tokens, layers, topk, samples) and
byte-identical hidden arrays and hidden shard files; teacher-forced scoring (which records only the
response positions without ``--capture-prompt``) likewise. And the recorder keeps, without prompt
positions, one position per forward pass whatever the prompt's length.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ingest.residual as residual
from ingest.capture import CaptureSettings
from ingest.datasets import Dataset, DatasetItem
from ingest.forced import capture_forced, response_ids
from ingest.models import load_adapter
from ingest.runner import IngestConfig, run_ingest
from tests.model_helpers import FAMILIES, TEXT_ONLY, tiny_model_dir
from tests.runner_helpers import make_images, store_content

PROMPTS = ["Describe this image.", "What is in the picture? Is there a cat on the table next to a guitar?"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"), 2)


def _dataset(family: str, images: Path) -> Dataset:
    if family in TEXT_ONLY:
        items = [DatasetItem(key=f"text:{k}", item_id=str(k), prompt=p, image_path=None, annotations={})
                 for k, p in enumerate(PROMPTS)]
    else:
        items = [DatasetItem(key=f"folder:{k}", item_id=str(k), prompt=p, image_path=str(images / f"img{k:02d}.png"),
                             annotations={}) for k, p in enumerate(PROMPTS)]
    return Dataset("hooks", items)


def _hidden_files(store: Path) -> dict[str, str]:
    """sha256 of every file under the store's hidden/ group (shards, coordinates, tails, index)."""
    root = store / "hidden"
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _ingest(ad, path, out: Path, dataset: Dataset, monkeypatch, old: bool, **kw) -> dict:
    monkeypatch.setattr(residual, "_OUTPUT_HIDDEN_STATES", old)
    config = IngestConfig(model=str(path), out=str(out), max_new_tokens=4, batch_size=2, progress=False,
                          lens_modes=("final_norm", "raw"), top_k=3, **kw)
    run_ingest(dataset, config, adapter=ad, echo=lambda m: None)
    return {**store_content(out), "files": _hidden_files(out)}


def _assert_same(a: dict, b: dict):
    for t in ("samples", "tokens", "layers", "topk", "errors"):
        assert a[t].drop_columns([c for c in a[t].column_names if c == "time"]).equals(b[t]), t
    assert a["hidden"].dtype == b["hidden"].dtype and a["hidden"].shape == b["hidden"].shape
    assert a["hidden"].tobytes() == b["hidden"].tobytes()
    assert a["files"] == b["files"]


@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_store_the_same_bytes_as_output_hidden_states(family, images, tmp_path, monkeypatch):
    path = tiny_model_dir(family)
    ad = load_adapter(str(path), dtype="float32", device="cpu")
    ds = _dataset(family, images)
    for prompt in (False, True):
        new = _ingest(ad, path, tmp_path / f"new-{prompt}.kevo", ds, monkeypatch, False, capture_prompt=prompt)
        old = _ingest(ad, path, tmp_path / f"old-{prompt}.kevo", ds, monkeypatch, True, capture_prompt=prompt)
        assert len(new["samples"]) == 2 and len(new["errors"]) == 0
        roles = set(new["tokens"].column("role").to_pylist())
        assert roles == ({"generated", "prompt"} | ({"image"} if family not in TEXT_ONLY else set())
                         if prompt else {"generated"})
        _assert_same(new, old)

    # teacher forcing: the same response scored both ways, with and without prompt positions
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps([{"id": "0", "response": "a cat"}, {"id": "1", "response": "the table"}]))
    for prompt in (False, True):
        outs = [_ingest(ad, path, tmp_path / f"forced-{old}-{prompt}.kevo", ds, monkeypatch, old,
                        capture_prompt=prompt, responses=str(responses)) for old in (False, True)]
        assert len(outs[0]["samples"]) == 2
        _assert_same(*outs)


def test_recorded_positions_do_not_grow_with_the_prompt():
    path = tiny_model_dir("causal_lm")
    ad = load_adapter(str(path), dtype="float32", device="cpu")
    L = ad.n_layers
    for words in (2, 200):
        batch = ad.encode([ad.build_prompt(" ".join(["cat"] * words), False)])
        T = batch.input_ids.shape[1]
        for keep, first in ((1, 1), (None, T)):
            seq, passes = residual.generate_recorded(ad, ad.generate_inputs(batch), 3, keep, ad.device)
            assert len(passes) == seq.shape[1] - T
            assert [h.shape[1] for h in passes[0]] == [first] * (L + 1)
            assert all(h.shape[1] == 1 for step in passes[1:] for h in step)
            # a slice of its own, not a view that keeps the whole pass alive
            assert all(h.untyped_storage().nbytes() == h.numel() * h.element_size() for h in passes[0])


def test_forced_records_only_response_positions(monkeypatch):
    path = tiny_model_dir("causal_lm")
    ad = load_adapter(str(path), dtype="float32", device="cpu")
    texts = [ad.build_prompt(" ".join(["cat"] * n), False) for n in (3, 40)]
    ids = [response_ids(ad, r) for r in ("a dog", "the red car on the table")]
    kept = []
    real = residual.generate_recorded

    def spy(adapter, inputs, max_new_tokens, keep_last, device):
        kept.append(keep_last)
        return real(adapter, inputs, max_new_tokens, keep_last, device)

    monkeypatch.setattr("ingest.forced.generate_recorded", spy)
    settings = CaptureSettings(max_new_tokens=16, top_k=2)
    caps = capture_forced(ad, texts, None, ids, settings)
    assert kept == [max(len(i) for i in ids) + 1]
    monkeypatch.setattr(residual, "_OUTPUT_HIDDEN_STATES", True)
    ref = capture_forced(ad, texts, None, ids, settings)
    for a, b in zip(caps, ref):
        assert a.hidden.tobytes() == b.hidden.tobytes()
        assert torch.equal(torch.from_numpy(a.lens["final_norm"].p_out), torch.from_numpy(b.lens["final_norm"].p_out))
        np.testing.assert_array_equal(a.greedy_match, b.greedy_match)
