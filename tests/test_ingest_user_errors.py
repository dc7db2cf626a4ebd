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
    p = kevo("ingest", "text", "--prompts", _prompts(tmp_path), "--model", model, "--out", tmp_path / "afile" / "s.kevo",
             check=False)
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
