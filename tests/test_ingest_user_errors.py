"""What users hit next with `kevo ingest`: one-line errors before the model loads (--out under a file,
a read-only place, --device cuda without CUDA, a disk too small for the estimate), a full disk while
writing (--force), a finished store re-run, a prompt longer than the model's positions."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.runner_helpers import kevo, manifest, tiny_model_dir


@pytest.fixture(scope="module")
def model():
    return tiny_model_dir("causal_lm")


def _prompts(tmp, texts=("A cat.", "A red car.", "A dog on a mat.")):
    p = tmp / "p.jsonl"
    p.write_text("".join(json.dumps({"id": f"q{i}", "prompt": t}) + "\n" for i, t in enumerate(texts)))
    return p


def _one_line(p, *needles):
    assert p.returncode != 0, p.stdout
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("kevo: error:")]  # besides progress, estimate
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_out_under_a_file(tmp_path, model):
    (tmp_path / "afile").write_text("x")
    p = kevo("ingest", "text", "--prompts", _prompts(tmp_path), "--model", model,
             "--out", tmp_path / "afile" / "s.kevo", check=False)
    _one_line(p, "is a file, not a directory")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda(tmp_path, model):
    p = kevo("ingest", "text", "--prompts", _prompts(tmp_path), "--model", model, "--out", tmp_path / "s.kevo",
             "--device", "cuda", check=False)
    _one_line(p, "--device cuda", "CUDA")
    assert not (tmp_path / "s.kevo").exists() or not (tmp_path / "s.kevo" / "samples").exists()


def test_rerun_of_a_finished_store_says_complete(tmp_path, model):
    out = tmp_path / "s.kevo"
    args = ("ingest", "text", "--prompts", _prompts(tmp_path), "--model", model, "--out", out, "--max-new-tokens", 3)
    kevo(*args)
    before = manifest(out)
    p = kevo(*args)
    assert "is complete: all 3 samples are committed; nothing to do" in p.stderr
    assert manifest(out) == before  # not reopened, not rewritten


@pytest.fixture
def tiny_fs(tmp_path):
    d = tmp_path / "tiny"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()})")
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_disk_too_small_refused_then_full_disk_is_one_line(tmp_path, model, tiny_fs):
    from kevo_store.verify import verify_store

    out = tiny_fs / "s.kevo"
    args = ["ingest", "text", "--prompts", _prompts(tmp_path, [f"Prompt number {i}." for i in range(12)]),
            "--model", model, "--out", out, "--max-new-tokens", 40]
    p = kevo(*args, check=False)
    _one_line(p, "exceeds the", "free", "--force")
    assert not out.exists()
    p = kevo(*args, "--force", check=False)
    _one_line(p, "no space left on the device", "committed work is kept")
    if (out / "manifest.json").exists():  # what was committed before the disk filled is whole
        assert verify_store(out).ok


def test_prompt_longer_than_the_positions_warns(tmp_path, model):
    cfg = json.loads((model / "config.json").read_text())
    n_pos = cfg["max_position_embeddings"]
    long_prompt = " ".join(["cat"] * (n_pos - 4))  # at least one token a word
    p = kevo("ingest", "text", "--prompts", _prompts(tmp_path, [long_prompt]), "--model", model,
             "--out", tmp_path / "s.kevo", "--max-new-tokens", 8, "--hidden", "none", "--top-k", 0)
    assert f"runs past the model's {n_pos} positions" in p.stderr
    p = kevo("ingest", "text", "--prompts", _prompts(tmp_path, ["A cat on a mat."]), "--model", model,
             "--out", tmp_path / "t.kevo", "--max-new-tokens", 4)
    assert "positions" not in p.stderr


def test_retry_errors_reruns_exactly_the_errored_samples(tmp_path):
    from kevo_store import open_store
    from kevo_store.verify import verify_store
    from tests.runner_helpers import generated_ids, greedy_reference, make_images

    model = tiny_model_dir("llava")
    images = make_images(tmp_path / "images", 2, corrupt=("broken.png",))
    out = tmp_path / "s.kevo"
    args = ("ingest", "folder", "--images", images, "--prompt", "Describe this image.", "--model", model,
            "--out", out, "--max-new-tokens", 4, "--hidden", "0")
    kevo(*args)
    assert manifest(out)["tables"]["errors"]["rows"] == 1
    from tests.model_helpers import tiny_image

    tiny_image(seed=9).save(images / "broken.png")  # the user fixes the file
    p = kevo(*args)  # without the flag: complete, errors named
    assert "is complete" in p.stderr and "1 as errors" in p.stderr
    p = kevo(*args, "--retry-errors")
    assert "retrying 1 samples recorded as errors" in p.stderr
    m = manifest(out)
    assert m["tables"]["errors"]["rows"] == 0 and m["tables"]["samples"]["rows"] == 3
    assert verify_store(out).ok
    with open_store(out) as s:
        key = s.sql("SELECT sample_key, prompt_text FROM samples WHERE image_id = 'broken.png'").row(0)
    assert generated_ids(out)[key[0]] == greedy_reference(model, key[1], images / "broken.png", 4)


def test_retry_errors_commit_is_atomic_in_the_writer(tmp_path):
    import store_helpers as H

    from kevo_store import StoreWriter, open_store

    path = tmp_path / "w.kevo"
    H.write_store(path, 2)  # batch b has the error 'synthetic:<b>-err'
    w = StoreWriter(path, meta=H.META, hidden_size=H.HIDDEN)
    assert w.retry_errors(["synthetic:0-err", "nope"]) == ["synthetic:0-err"]
    assert "synthetic:0-err" not in w.committed_keys and "synthetic:1-err" in w.committed_keys
    bt = H.batch(7, n_samples=1, with_error=False)
    bt["samples"] = bt["samples"].set_column(0, "sample_key", __import__("pyarrow").array(["synthetic:0-err"]))
    bt["tokens"] = bt["tokens"].set_column(1, "sample_key",
                                           __import__("pyarrow").array(["synthetic:0-err"] * bt["tokens"].num_rows))
    before = json.loads((path / "manifest.json").read_text())["commits"]
    w.write_batch(**bt)
    m = json.loads((path / "manifest.json").read_text())
    assert m["commits"] == before + 1 and m["tables"]["errors"]["rows"] == 1
    w.close()
    with open_store(path) as s:
        assert s.sql("SELECT sample_key FROM errors")["sample_key"].to_list() == ["synthetic:1-err"]
        assert s.sql("SELECT count(*) AS n FROM samples WHERE sample_key = 'synthetic:0-err'")["n"][0] == 1
