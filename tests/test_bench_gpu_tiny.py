"""bench/gpu_bench.py's logic, on the CPU (``--tiny``): a GPU is lent to few sessions and for minutes, so
the script it runs must work the first time. Not a benchmark: the tiny model's times mean nothing; what is
checked is that every measurement runs and measures what it says (the capture generates the same tokens
as plain generate, the ingest arms write stores with and without hidden states, prompt positions add rows)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_bench_tiny_runs_every_measurement(tmp_path):
    out = tmp_path / "gpu-results.json"
    env = {**os.environ, "KEVO_BENCH_OUT": str(tmp_path / "scratch"), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "bench/gpu_bench.py", "--tiny", "--bf16", "--out", str(out)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    g = json.loads(out.read_text())
    assert g["tiny"] and [r["dtype"] for r in g["runs"]] == ["float32", "bfloat16"]
    for r in g["runs"]:
        assert r["same_tokens_as_generate"] and r["lens_finite"], r
        assert r["generated_tokens"] == r["batch"] * r["new_tokens"]  # the EOS row of lm_head is zeroed
    ing = g["ingest"]
    assert set(ing["times_s"]) == {"generate_loop", "kevo_ingest", "kevo_ingest_hidden_none"}
    assert ing["tokens"] == ing["images"] * ing["new_tokens"]
    assert ing["hidden_bytes"] >= ing["tokens"] * ing["hidden_bytes_per_token"]  # every layer's states stored
    arms = {(a["path"], a["capture_prompt"]): a["rows"] for a in g["capture_memory"]["arms"]}
    n_prompt = g["capture_memory"]["prompt_tokens"]
    for path in ("hooks", "output_hidden_states"):
        assert arms[(path, False)] == 4  # the 4 generated tokens
        assert arms[(path, True)] == 4 + n_prompt, arms  # and every prompt position
    hw = g["hidden_write"]
    assert hw["mib_per_s"]["raw_fsync"] > 0 and hw["ratio_store_vs_raw"] > 0
