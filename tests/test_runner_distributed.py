"""Several processes: `torchrun --nproc_per_node 2` (CPU, gloo) splits the items across ranks, each rank
writes a part, rank 0 joins them: the store equals a one-process run's (rows and hidden bytes)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from tests.runner_helpers import (
    KEVO,
    REPRODUCIBLE_ENV,
    kevo,
    make_images,
    manifest,
    store_content,
    tiny_model_dir,
)


def test_two_process_gloo_ingest_equals_one_process(tmp_path):
    model = tiny_model_dir("llava")
    images = make_images(tmp_path / "images", 5, corrupt=("img02b.png",))
    args = ["ingest", "folder", "--images", str(images), "--prompt", "What is in the picture?", "--model",
            str(model), "--max-new-tokens", "6", "--lens", "final_norm,raw", "--top-k", "3", "--device", "cpu"]

    one = tmp_path / "one.kevo"
    kevo(*args, "--out", one, env=REPRODUCIBLE_ENV)

    two = tmp_path / "two.kevo"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "--no-python", KEVO, *args, "--out", str(two)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, **REPRODUCIBLE_ENV})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "joined 2 parts" in p.stderr
    assert not (tmp_path / "two.kevo.parts").exists()  # parts are removed once joined

    a, b = store_content(one), store_content(two)
    assert a["samples"].num_rows == 5 and a["errors"].num_rows == 1
    for table in ("samples", "tokens", "layers", "topk", "vocab", "errors"):
        assert a[table].equals(b[table]), table
    assert a["hidden"].dtype == b["hidden"].dtype == np.float16
    assert np.array_equal(a["hidden"].view(np.uint16), b["hidden"].view(np.uint16))
    assert manifest(two)["capture"]["world_size"] == 2
    for sec in ("model", "lens", "generation", "dataset"):
        assert manifest(one)[sec] == manifest(two)[sec], sec
