"""End to end with the real ingest: two "nodes" each ingest half of a folder with a tiny LLaVA, push
their stores to S3 (moto on loopback); a third machine pulls both and merges them. The result must
equal one ingest of the whole folder: every table, the hidden states bit for bit, the failed image.
"""

from __future__ import annotations

import shutil

import numpy as np

from kevo_store import open_store
from kevo_store.schema import KEYS, TABLES
from tests.runner_helpers import make_images, tiny_model_dir


def test_split_ingest_push_pull_merge_equals_one_ingest(s3, tmp_path):
    images = make_images(tmp_path / "all", 3, corrupt=("broken.jpg",))
    halves = {"node0": ["img00.png", "broken.jpg"], "node1": ["img01.png", "img02.png"]}
    for node, names in halves.items():
        (tmp_path / node).mkdir()
        for n in names:
            shutil.copy(images / n, tmp_path / node / n)
    common = ["--prompt", "Describe this image.", "--model", tiny_model_dir("llava"), "--max-new-tokens", 4,
              "--top-k", 3, "--hidden", "all", "--batch-size", 1]
    s3.run_kevo("ingest", "folder", "--images", images, "--out", tmp_path / "one.kevo", *common, check=True)
    for node in halves:
        s3.run_kevo("ingest", "folder", "--images", tmp_path / node, "--out", tmp_path / f"{node}.kevo", *common,
                    check=True)
        s3.run_kevo("store", "push", tmp_path / f"{node}.kevo", s3.url(f"runs/{node}.kevo"), check=True)
    laptop = tmp_path / "laptop"
    for node in halves:
        s3.run_kevo("store", "pull", s3.url(f"runs/{node}.kevo"), laptop / f"{node}.kevo", check=True)
    p = s3.run_kevo("store", "merge", laptop / "node0.kevo", laptop / "node1.kevo", "--out", laptop / "all.kevo",
                    check=True)
    assert "3 samples, 1 errors" in p.stdout
    assert s3.run_kevo("store", "verify", laptop / "all.kevo").returncode == 0

    with open_store(tmp_path / "one.kevo") as one, open_store(laptop / "all.kevo") as merged:
        for t in TABLES:
            q = f"SELECT * FROM {t} ORDER BY {', '.join(KEYS[t])}"
            a, b = one.arrow(q), merged.arrow(q)
            if t == "errors":  # the message names the image's path on its node, and the time differs
                a, b = (x.drop_columns(["message", "time"]) for x in (a, b))
            assert a.num_rows > 0 and a.equals(b), t
        uids = np.arange(one.rows("tokens"))
        assert np.array_equal(one.hidden(uids).view(np.uint16), merged.hidden(uids).view(np.uint16))
        assert merged.manifest["model"] == one.manifest["model"]
