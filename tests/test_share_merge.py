"""`kevo store merge A B … --out C`: per-node stores of a split ingest become the store of one ingest.

The reference is independent of merge: the same samples written once, in one store, through the
writer (what a one-process ingest of both inputs writes). Merge must reproduce it exactly: every
table row for row (sample_id and token_uid renumbered the same way), hidden states bit for bit,
failed samples kept. Stores made with different settings are refused, naming the difference,
unless --force (which records it); physically incompatible ones are refused always.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from kevo_store import open_store
from kevo_store.errors import KevoError
from kevo_store.schema import KEYS, TABLES
from kevo_store.share.merge import merge_stores
from tests.share_helpers import KEVO, synth, write_sample_range


def _ordered(table: str) -> str:
    return f"SELECT * FROM {table} ORDER BY {', '.join(KEYS[table])}"


def kevo(*args):
    import subprocess

    return subprocess.run([KEVO, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """One ingest of all 7 samples, and the same inputs split over two "nodes" (4 + 3 samples)."""
    root = tmp_path_factory.mktemp("merge")
    s = synth(n_samples=7, n_tokens=9)  # 63 tokens: the token chunks of the parts straddle 64
    full = write_sample_range(root / "one_ingest.kevo", s, 0, 7, batch_samples=3,
                              errors=["synthetic:e1", "synthetic:e2"])
    a = write_sample_range(root / "node0.kevo", s, 0, 4, batch_samples=3, errors=["synthetic:e1"])
    b = write_sample_range(root / "node1.kevo", s, 4, 7, batch_samples=2, errors=["synthetic:e2"])
    return s, full, a, b, root


def test_merge_of_two_stores_equals_one_ingest_of_both(parts):
    _s, full, a, b, root = parts
    out = root / "merged.kevo"
    p = kevo("store", "merge", a, b, "--out", out)
    assert p.returncode == 0, p.stderr
    assert "7 samples, 2 errors, 63 tokens from 2 parts" in p.stdout
    # progress on stderr: a bar over the 9 keys (samples and errors); one commit here, so no part to compact
    assert "merge -> merged.kevo" in p.stderr and "9/9" in p.stderr and ": compact" not in p.stderr
    assert kevo("store", "verify", out).returncode == 0
    with open_store(full) as f, open_store(out) as m:
        for t in TABLES:
            want, got = f.arrow(_ordered(t)), m.arrow(_ordered(t))
            assert got.num_rows == f.rows(t) and want.equals(got), t
        uids = np.arange(f.rows("tokens"))
        assert np.array_equal(f.hidden(uids).view(np.uint16), m.hidden(uids).view(np.uint16))
        # provenance: where the samples came from
        merged_from = m.manifest["dataset"]["merged_from"]
        assert [(d["store"], d["samples"], d["errors"]) for d in merged_from] == [(str(a), 4, 1), (str(b), 3, 1)]
        for sec in ("model", "lens", "generation"):
            assert m.manifest[sec] == f.manifest[sec]


def test_merge_refuses_different_settings_unless_forced(parts, tmp_path):
    s, _full, a, _b, _root = parts
    other = write_sample_range(tmp_path / "bf16_lens.kevo", s, 4, 7, meta_patch={"lens": {"dtype": "bfloat16"}})
    p = kevo("store", "merge", a, other, "--out", tmp_path / "m.kevo")
    assert p.returncode == 1
    assert "lens.dtype: 'float32' vs 'bfloat16'" in p.stderr and "--force" in p.stderr
    assert not (tmp_path / "m.kevo").exists()
    p = kevo("store", "merge", a, other, "--out", tmp_path / "m.kevo", "--force")
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "m.kevo" / "manifest.json").read_text())
    assert any("lens.dtype" in d for d in m["capture"]["merge_forced"])


def test_merge_refuses_what_no_flag_can_reconcile(parts, tmp_path):
    _s, _full, a, _b, _root = parts
    wide = write_sample_range(tmp_path / "d32.kevo", synth(n_samples=2, n_tokens=9, hidden_size=32), 0, 2)
    with pytest.raises(KevoError, match=r"hidden\.hidden_size: 16 vs 32"):
        merge_stores([a, wide], tmp_path / "m.kevo", force=True)
    with pytest.raises(KevoError, match="merge reads local stores; `kevo store pull` it first"):
        merge_stores([a, "s3://bucket/x.kevo"], tmp_path / "m2.kevo")


def test_overlapping_inputs_are_refused_unless_forced(parts, tmp_path):
    s, full, a, _b, _root = parts
    # node0 holds samples 0-3 and "synthetic:e1"; the one-ingest store holds them all again
    with pytest.raises(KevoError, match=r"sample key\(s\) are in more than one store, e\.g\. 'synthetic:0'"):
        merge_stores([a, full], tmp_path / "m.kevo")
    stats = merge_stores([a, full], tmp_path / "m.kevo", force=True)
    assert (stats.samples, stats.errors) == (7, 2)  # the first copy of each sample is kept, once
    with open_store(full) as f, open_store(tmp_path / "m.kevo") as m:
        assert f.arrow(_ordered("tokens")).equals(m.arrow(_ordered("tokens")))


def test_merge_never_appends_to_an_unrelated_store(parts, tmp_path):
    _s, full, a, b, _root = parts
    with pytest.raises(KevoError, match="not an interrupted merge of these stores"):
        merge_stores([a, b], full)
    # but re-running a finished (or interrupted) merge of the same inputs is a no-op resume
    out = tmp_path / "m.kevo"
    merge_stores([a, b], out)
    again = merge_stores([a, b], out)
    assert (again.samples, again.skipped) == (0, 9)
