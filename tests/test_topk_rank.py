"""`--top-k` of 128 or more: ranks stay 1..k (an 8-bit column wrapped them to negative numbers), and a k
beyond the vocabulary is refused before the model loads (not after, as an error row per sample)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.runner_helpers import kevo, tiny_model_dir

K = 130  # > 127, the largest int8


@pytest.fixture(scope="module")
def model():
    return tiny_model_dir("causal_lm")


def _prompts(tmp):
    p = tmp / "prompts.jsonl"
    p.write_text("".join(json.dumps({"id": f"q{i}", "prompt": t}) + "\n"
                         for i, t in enumerate(["A red car.", "A cat on a table."])))
    return p


def test_top_k_above_127_keeps_ranks(tmp_path, model):
    out = tmp_path / "k.kevo"
    kevo("ingest", "text", "--prompts", _prompts(tmp_path), "--model", model, "--out", out,
         "--max-new-tokens", 3, "--top-k", K, "--lens", "final_norm")
    from kevo_store import open_store
    from kevo_store.verify import verify_store

    assert verify_store(out).ok
    s = open_store(out)
    per = s.sql("SELECT token_uid, lens, layer, min(rank) AS lo, max(rank) AS hi, count(*) AS n, "
                "count(DISTINCT rank) AS nd FROM topk GROUP BY ALL")
    assert per.height > 0
    assert (per["lo"] == 1).all() and (per["hi"] == K).all() and (per["n"] == K).all() and (per["nd"] == K).all()
    # rank 1 is the layer's top-1 token (the layers table computes it separately), probabilities fall with rank
    top = s.sql("SELECT l.top1_id, l.top1_prob, t.vocab_id, t.prob FROM layers l JOIN topk t "
                "USING (token_uid, lens, layer) WHERE t.rank = 1")
    assert top.height == per.height
    assert (top["top1_id"] == top["vocab_id"]).all()
    assert np.allclose(top["top1_prob"].to_numpy(), top["prob"].to_numpy())
    bad = s.sql("SELECT count(*) AS n FROM (SELECT prob < lead(prob) OVER (PARTITION BY token_uid, lens, layer "
                "ORDER BY rank) - 1e-7 AS up FROM topk) WHERE up")
    assert bad["n"][0] == 0
    s.close()


def test_top_k_beyond_vocabulary_refused_before_loading(tmp_path, model):
    # a checkpoint with a config but no weights: anything that loads the model fails differently
    cfg_only = tmp_path / "cfg-only"
    cfg_only.mkdir()
    shutil.copy(model / "config.json", cfg_only / "config.json")
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    out = tmp_path / "bad.kevo"
    for m in (cfg_only, model):
        p = kevo("ingest", "text", "--prompts", _prompts(tmp_path), "--model", m, "--out", out,
                 "--max-new-tokens", 3, "--top-k", vocab + 1, check=False)
        assert p.returncode != 0
        err = p.stderr.strip().splitlines()
        assert len(err) == 1 and "--top-k" in err[0] and str(vocab) in err[0], p.stderr
        assert not out.exists()  # no store of error rows left behind
    # the same k as the vocabulary is fine
    kevo("ingest", "text", "--prompts", _prompts(tmp_path), "--model", model, "--out", out,
         "--max-new-tokens", 2, "--top-k", vocab, "--lens", "final_norm")


def test_store_with_int8_ranks_still_verifies_and_reads(tmp_path):
    """Stores written before the widening hold int8 ranks: they stay valid."""
    import store_helpers as H

    from kevo_store import open_store
    from kevo_store.verify import verify_store

    path = tmp_path / "old.kevo"
    H.write_store(path, 2)
    m = json.loads((path / "manifest.json").read_text())
    # rewrite the topk files with the old int8 type, as an older kevo wrote them, and re-declare them
    import hashlib

    for rel in m["tables"]["topk"]["files"]:
        t = pq.read_table(path / rel)
        t = t.set_column(t.schema.get_field_index("rank"), pa.field("rank", pa.int8(), nullable=False),
                         t.column("rank").cast(pa.int8()))
        pq.write_table(t, path / rel, compression="zstd")
        data = (path / rel).read_bytes()
        m["files"][rel].update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    (path / "manifest.json").write_text(json.dumps(m))
    rep = verify_store(path)
    assert rep.ok, rep.problems
    s = open_store(path)
    assert s.sql("SELECT min(rank) AS a, max(rank) AS b FROM topk").row(0) == (1, H.TOPK)
    s.close()
