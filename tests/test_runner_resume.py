"""Resume after a real crash: SIGKILL an ingest mid-run, run it again, and get exactly the store of an
uninterrupted run (same rows, same hidden bytes, no duplicates)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np

from tests.runner_helpers import KEVO, REPRODUCIBLE_ENV, kevo, store_content, tiny_model_dir

N_PROMPTS = 20
WORDS = ["cat", "dog", "guitar", "table", "tree", "car", "horse", "sky", "street", "picture"]


def _committed(out) -> int:
    try:
        m = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):  # not there yet (the manifest is replaced atomically, never torn)
        return 0
    return m["tables"]["samples"]["rows"]


def test_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path):
    model = tiny_model_dir("causal_lm")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"Describe the {WORDS[i % 10]} and the {WORDS[(3 * i + 1) % 10]} number {i}.\n"
                               for i in range(N_PROMPTS)))
    args = ["ingest", "text", "--prompts", str(prompts), "--model", str(model), "--max-new-tokens", "8",
            "--batch-size", "2", "--lens", "final_norm,raw", "--top-k", "3"]

    crashed = tmp_path / "crashed.kevo"
    proc = subprocess.Popen([KEVO, *args, "--out", str(crashed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, **REPRODUCIBLE_ENV})
    deadline = time.monotonic() + 300
    while _committed(crashed) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_at_kill = _committed(crashed)
    assert proc.returncode == -signal.SIGKILL
    assert 4 <= n_at_kill < N_PROMPTS, f"the run was not interrupted mid-way ({n_at_kill} committed)"
    assert (crashed / ".lock").exists()  # the killed writer never released its lock

    p = kevo(*args, "--out", crashed, env=REPRODUCIBLE_ENV)
    assert f"{n_at_kill} of {N_PROMPTS} samples already committed" in p.stderr

    clean = tmp_path / "clean.kevo"
    kevo(*args, "--out", clean, env=REPRODUCIBLE_ENV)

    a, b = store_content(crashed), store_content(clean)
    keys = a["samples"].column("sample_key").to_pylist()
    assert len(keys) == len(set(keys)) == N_PROMPTS
    for table in ("samples", "tokens", "layers", "topk", "vocab", "errors"):
        assert a[table].equals(b[table]), table
    assert a["hidden"].dtype == b["hidden"].dtype
    assert np.array_equal(a["hidden"].view(np.uint16), b["hidden"].view(np.uint16))
    assert not (crashed / ".lock").exists()
