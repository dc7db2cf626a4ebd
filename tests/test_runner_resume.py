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


# The ingest, in a child that SIGKILLs itself inside the background commit thread, half-way through
# a commit: after that batch's tokens part is written, before its layers part is whole and long before
# its hidden states and manifest. To the store it is a real crash with one batch in flight.
KILL_MID_COMMIT = """
import os, signal, sys, threading
import kevo_store.writer as W
marker = sys.argv[1]
orig = W.write_parquet
def write_parquet(fs, rel, table, name):
    if name == "layers" and "part-000005" in rel:
        orig(fs, rel, table.slice(0, table.num_rows // 2), name)
        with open(marker, "w") as f:
            f.write(threading.current_thread().name)
        os.kill(os.getpid(), signal.SIGKILL)
    return orig(fs, rel, table, name)
W.write_parquet = write_parquet
from kevo_store.cli import main
sys.argv = ["kevo", *sys.argv[2:]]
main()
"""


def test_sigkill_inside_the_background_commit_then_rerun_equals_an_uninterrupted_run(tmp_path):
    import sys

    model = tiny_model_dir("causal_lm")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"Describe the {WORDS[i % 10]} number {i}.\n" for i in range(12)))
    args = ["ingest", "text", "--prompts", str(prompts), "--model", str(model), "--max-new-tokens", "6",
            "--batch-size", "2", "--lens", "final_norm", "--top-k", "2"]
    crashed, marker = tmp_path / "crashed.kevo", tmp_path / "killed-in"
    p = subprocess.run([sys.executable, "-c", KILL_MID_COMMIT, str(marker), *args, "--out", str(crashed)],
                       capture_output=True, text=True, env={**os.environ, **REPRODUCIBLE_ENV}, timeout=600)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    assert marker.read_text().startswith("kevo-commit")  # the commit thread, not the model's
    # the vocab (commit 1) and batches 0-2 (commits 2-4) committed, batch 3 (commit 5) in flight
    assert _committed(crashed) == 6
    kevo(*args, "--out", crashed, env=REPRODUCIBLE_ENV)
    clean = tmp_path / "clean.kevo"
    kevo(*args, "--out", clean, env=REPRODUCIBLE_ENV)
    a, b = store_content(crashed), store_content(clean)
    for table in ("samples", "tokens", "layers", "topk", "vocab", "errors"):
        assert a[table].equals(b[table]), table
    assert a["hidden"].dtype == b["hidden"].dtype and a["hidden"].tobytes() == b["hidden"].tobytes()
