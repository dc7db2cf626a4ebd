"""The runner in-process with real tiny models and real stores: a failing sample does not poison its
batch, the dataset's labeler hook, and a run where everything fails."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ingest.datasets import Dataset, DatasetItem
from ingest.models import load_adapter
from ingest.runner import IngestConfig, IngestError, run_ingest
from tests.runner_helpers import kevo, make_images, store_content, tiny_model_dir


@pytest.fixture(scope="module")
def llava():
    path = tiny_model_dir("llava")
    return path, load_adapter(str(path), dtype="float32", device="cpu", device_map=None, skip_layers=None,
                              revision=None)


def _items(prompts: dict[str, str]) -> list[DatasetItem]:
    return [DatasetItem(key=f"text:{k}", item_id=k, prompt=p, image_path=None, annotations={}) for k, p in
            prompts.items()]


def _config(model, out, **kw) -> IngestConfig:
    return IngestConfig(model=str(model), out=str(out), max_new_tokens=5, progress=False, **kw)


def test_one_bad_sample_does_not_poison_its_batch(tmp_path, llava):
    path, ad = llava
    # a stray image token in a text-only prompt: the processor rejects that sample alone
    prompts = {"a": "Describe a cat.", "b": "Look at <image> here.", "c": "What is red?"}
    batched = tmp_path / "batched.kevo"
    r = run_ingest(Dataset("text", _items(prompts)), _config(path, batched, batch_size=3), adapter=ad,
                   echo=lambda m: None)
    assert (r.n_samples, r.n_errors) == (2, 1)
    c = store_content(batched)
    err = c["errors"].to_pylist()[0]
    assert err["sample_key"] == "text:b" and err["stage"] == "prepare" and "<image>" in err["message"]
    # the good samples come out exactly as when each runs alone
    alone = tmp_path / "alone.kevo"
    run_ingest(Dataset("text", _items({k: prompts[k] for k in "ac"})), _config(path, alone, batch_size=1),
               adapter=ad, echo=lambda m: None)
    a = store_content(alone)
    assert c["samples"].equals(a["samples"]) and c["tokens"].equals(a["tokens"])
    # same computation, separate calls: equal up to BLAS rounding (bit-exactness needs MKL_CBWR; see runner_helpers)
    for col in ("p_out", "entropy", "js_final", "kl_final"):
        np.testing.assert_allclose(c["layers"].column(col).to_numpy(), a["layers"].column(col).to_numpy(),
                                   rtol=1e-5, atol=1e-6)
    assert c["layers"].column("top1_id").equals(a["layers"].column("top1_id"))
    np.testing.assert_allclose(c["hidden"].astype(np.float32), a["hidden"].astype(np.float32), rtol=2e-3, atol=2e-3)


def test_labeler_columns_and_metrics_reach_the_store(tmp_path, llava):
    path, ad = llava
    seen = {}

    def labeler(item, response, tokens):
        if item.item_id == "boom":
            raise ValueError("annotation for 'boom' is malformed")
        seen[item.key] = (response, tokens)
        starts = tokens.column("char_start").to_pylist()
        ends = tokens.column("char_end").to_pylist()
        texts = [response[s:e] for s, e in zip(starts, ends)]
        return ({"word": texts, "is_answer": [i == 0 for i in range(tokens.num_rows)],
                 "label": ["safe"] * tokens.num_rows},
                {"n_chars": len(response), "item": item.item_id})

    out = tmp_path / "labels.kevo"
    ds = Dataset("text", _items({"x": "Describe a dog.", "boom": "Describe a tree.", "y": "A red car."}),
                 labeler=labeler)
    r = run_ingest(ds, _config(path, out, batch_size=2), adapter=ad, echo=lambda m: None)
    assert (r.n_samples, r.n_errors) == (2, 1)
    c = store_content(out)
    err = c["errors"].to_pylist()[0]
    assert err["sample_key"] == "text:boom" and err["stage"] == "label" and "malformed" in err["message"]
    samples = {s["sample_id"]: s for s in c["samples"].to_pylist()}
    for s in samples.values():
        response, given = seen[s["sample_key"]]
        assert response == s["response"]
        assert json.loads(s["metrics"]) == {"n_chars": len(response), "item": s["item_id"]}
        rows = [t for t in c["tokens"].to_pylist() if t["sample_id"] == s["sample_id"]]
        # the hook saw exactly the generated tokens, in step order, with their ids and spans
        assert given.column("token_id").to_pylist() == [t["token_id"] for t in rows]
        assert given.column("step").to_pylist() == list(range(len(rows)))
        assert [t["word"] for t in rows] == [response[t["char_start"]:t["char_end"]] for t in rows]
        assert [t["is_answer"] for t in rows] == [i == 0 for i in range(len(rows))]
        assert {t["label"] for t in rows} == {"safe"}


def test_every_sample_failing_exits_non_zero_and_keeps_the_errors(tmp_path):
    images = make_images(tmp_path / "images", 0, corrupt=("a.png", "b.jpg"))
    out = tmp_path / "bad.kevo"
    p = kevo("ingest", "folder", "--images", images, "--prompt", "Describe.", "--model", tiny_model_dir("llava"),
             "--out", out, "--max-new-tokens", 3, check=False)
    assert p.returncode == 1 and "kevo: error: every sample failed (2 errors)" in p.stderr
    c = store_content(out)
    assert c["samples"].num_rows == 0
    assert [(e["sample_key"], e["stage"]) for e in c["errors"].to_pylist()] == [("folder:a.png", "read"),
                                                                                ("folder:b.jpg", "read")]


def test_systematic_generation_failure_stops_the_run_without_burning_samples(tmp_path, llava, monkeypatch):
    path, ad = llava
    items = _items({str(i): f"Describe thing {i}." for i in range(6)})
    out = tmp_path / "oom.kevo"

    def broken_generate(*args, **kwargs):  # fault injection: what a too-small GPU does to every sample
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with monkeypatch.context() as m:
        m.setattr(ad.model, "generate", broken_generate)
        with pytest.raises(IngestError, match="generation failed for the first 3 samples.*out of memory"):
            run_ingest(Dataset("text", items), _config(path, out), adapter=ad, echo=lambda msg: None)
    c = store_content(out)
    assert c["samples"].num_rows == 0 and c["errors"].num_rows == 0  # nothing recorded: a re-run retries all
    r = run_ingest(Dataset("text", items), _config(path, out), adapter=ad, echo=lambda msg: None)
    assert (r.n_samples, r.n_errors, r.n_skipped) == (6, 0, 0)


def test_duplicate_keys_are_refused_before_anything_is_written(tmp_path, llava):
    path, ad = llava
    items = _items({"a": "x", "b": "y"}) + _items({"a": "z"})
    out = tmp_path / "dup.kevo"
    with pytest.raises(IngestError, match="two items share the key 'text:a'"):
        run_ingest(Dataset("text", items), _config(path, out), adapter=ad, echo=lambda m: None)
    assert not out.exists()


def test_out_that_is_not_a_store_is_refused_before_loading(tmp_path, llava):
    path, ad = llava
    out = tmp_path / "results"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(IngestError, match="non-empty directory that is not a kevo store"):
        run_ingest(Dataset("text", _items({"a": "x"})), _config(path, out), echo=lambda m: None)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
