"""A writer killed with SIGKILL (a real subprocess) leaves a store that opens and verifies, and
resuming gives exactly the content of an uninterrupted run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import store_helpers as H
from test_store_roundtrip import assert_tables_equal, read_all

from kevo_store import TABLES, open_store

TESTS = Path(__file__).parent
N_BATCHES = 7

# The child writes batches; a patched function kills it with SIGKILL at the chosen point of batch 3
# (commit 5: the vocab is commit 1, batches 0..2 are commits 2..4). Nothing in kevo_store knows
# about the patch: to the store it is a real crash.
CHILD = textwrap.dedent("""
    import os, signal, sys
    import store_helpers as H
    import kevo_store.writer as W
    import kevo_store.fs as F
    import kevo_store.hidden as HID
    path, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    state = {"commits": 0}
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if mode == "before-manifest":   # every data file of the batch is written; the commit record is not
        orig = F.LocalFS.write_atomic
        def write_atomic(self, rel, data):
            if rel == "manifest.json":
                state["commits"] += 1
                if state["commits"] == 6:
                    die()
            return orig(self, rel, data)
        F.LocalFS.write_atomic = write_atomic
    elif mode == "mid-parquet":     # dies half-way through writing the layers part (a torn file)
        orig = W.write_parquet
        def write_parquet(fs, rel, table, name):
            if name == "layers" and "part-000005" in rel:
                orig(fs, rel, table.slice(0, table.num_rows // 2), name)
                with open(fs.full(rel), "r+b") as f:
                    f.truncate(os.path.getsize(fs.full(rel)) // 2)
                die()
            return orig(fs, rel, table, name)
        W.write_parquet = write_parquet
    elif mode == "mid-hidden":      # dies after some hidden shards of the batch are on disk
        import kevo_store.shards as SH
        orig = SH.write_file
        def write_file(fs, rel, pieces, **kw):
            if state.get("armed") and "/c/" in rel and "hidden/hidden/" in rel:
                state["shards"] = state.get("shards", 0) + 1
                if state["shards"] == 3:  # a few shards of the batch written, the rest not
                    die()
            return orig(fs, rel, pieces, **kw)
        SH.write_file = write_file
        orig_stage = HID.HiddenWriter.stage
        def stage(self, commit):
            state["armed"] = commit >= 5  # the first batch from commit 5 on that fills a shard
            return orig_stage(self, commit)
        HID.HiddenWriter.stage = stage
    elif mode == "at-create":       # dies before the very first manifest exists
        orig = F.LocalFS.write_atomic
        def write_atomic(self, rel, data):
            if rel == "manifest.json":
                die()
            return orig(self, rel, data)
        F.LocalFS.write_atomic = write_atomic
    elif mode == "during-close":    # dies after compacted files are written, before the manifest switch
        orig = F.LocalFS.write_atomic
        def write_atomic(self, rel, data):
            if rel == "manifest.json" and b'"state": "closed"' in data:
                die()
            return orig(self, rel, data)
        F.LocalFS.write_atomic = write_atomic
    w = H.write_store(path, n, close=False)
    print("committed", w.n_samples, flush=True)
    w.close()
""")


def run_child(path: Path, mode: str, n: int = N_BATCHES) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.run([sys.executable, "-c", CHILD, str(path), mode, str(n)], env=env, capture_output=True,
                          text=True, timeout=300)


def kevo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kevo_store.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "ref.kevo"
    H.write_store(path, N_BATCHES)
    return path


def assert_same_store(a: Path, b: Path) -> None:
    ta, tb = read_all(a), read_all(b)
    for name in TABLES:
        assert_tables_equal(tb[name], ta[name], name)
    sa, sb = open_store(a), open_store(b)
    n = sa.rows("tokens")
    assert sb.rows("tokens") == n
    np.testing.assert_array_equal(sb.hidden(np.arange(n)).view(np.uint16), sa.hidden(np.arange(n)).view(np.uint16))


@pytest.mark.parametrize("mode", ["before-manifest", "mid-parquet", "mid-hidden", "during-close"])
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, reference, mode):
    path = tmp_path / "crash.kevo"
    r = run_child(path, mode)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    assert (path / ".lock").exists()  # the dead writer's lock is left behind
    # the crashed store opens and verifies: exactly the committed batches are visible
    s = open_store(path)
    if mode == "during-close":
        assert s.rows("samples") == 3 * N_BATCHES
    elif mode == "mid-hidden":
        assert 3 * 3 <= s.rows("samples") < 3 * N_BATCHES
    else:
        assert s.rows("samples") == 3 * 3
    assert s.sql("SELECT count(*) AS n FROM samples")["n"][0] == s.rows("samples")
    assert s.sql("SELECT count(DISTINCT token_uid) AS n FROM layers")["n"][0] == s.rows("tokens")
    v = kevo("store", "verify", str(path))
    assert v.returncode == 0, v.stderr
    assert "ok:" in v.stdout
    if mode != "during-close":
        assert "not named by the manifest" in v.stderr  # the crashed batch's files, reported, ignored
    # resume: the stale lock is broken (with a message), orphans removed, missing batches written
    r2 = run_child(path, "none")
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert "breaking the stale lock" in r2.stderr
    assert not (path / ".lock").exists()
    assert_same_store(reference, path)
    v = kevo("store", "verify", str(path))
    assert v.returncode == 0 and "not named" not in v.stderr, v.stderr
    named = set(open_store(path).manifest["files"])
    on_disk = {str(p.relative_to(path)) for p in (path / "tables").rglob("*") if p.is_file()}
    assert on_disk == {f for f in named if f.startswith("tables/")}


def test_sigkill_at_an_arbitrary_moment(tmp_path, reference):
    """Kill from outside at a moment chosen by the clock, not by a hook: still consistent."""
    path = tmp_path / "timed.kevo"
    env = dict(os.environ, PYTHONPATH=f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    code = "import sys, store_helpers as H\nH.write_store(sys.argv[1], 400, close=False)\n"
    p = subprocess.Popen([sys.executable, "-c", code, str(path)], env=env, stderr=subprocess.PIPE)
    import time

    deadline = time.time() + 60
    while time.time() < deadline:  # wait until a few batches are committed, then kill mid-stream
        m = path / "manifest.json"
        if m.exists() and open_store(path).rows("samples") >= 9:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    s = open_store(path)
    n = s.rows("samples")
    assert n >= 9 and n % 3 == 0
    assert kevo("store", "verify", str(path)).returncode == 0
    r = run_child(path, "none", N_BATCHES)
    assert r.returncode == 0, r.stderr[-2000:]
    if n // 3 <= N_BATCHES:
        assert_same_store(reference, path)


def test_sigkill_before_the_first_commit(tmp_path, reference):
    """A creation that died before its first manifest is not a store yet; the re-run starts it afresh."""
    path = tmp_path / "born.kevo"
    r = run_child(path, "at-create")
    assert r.returncode == -signal.SIGKILL
    assert (path / "hidden" / "zarr.json").exists() and not (path / "manifest.json").exists()
    v = kevo("store", "info", str(path))
    assert v.returncode == 1 and "is not a kevo store" in v.stderr
    r2 = run_child(path, "none")
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert_same_store(reference, path)


def test_store_compact_finishes_a_crashed_store(tmp_path, reference):
    path = tmp_path / "left.kevo"
    assert run_child(path, "before-manifest").returncode == -signal.SIGKILL
    r = kevo("store", "compact", str(path))
    assert r.returncode == 0, r.stderr
    assert "breaking the stale lock" in r.stderr and "compacted" in r.stdout
    assert re.search(r"compact .*left\.kevo: 100%\|.*\| (\d+)/\1 \[", r.stderr), r.stderr  # a bar over the parts
    s = open_store(path)
    assert s.manifest["state"] == "closed" and s.rows("samples") == 9
    assert all("/part-" not in f for t in ("samples", "tokens", "layers", "topk")
               for f in s.manifest["tables"][t]["files"])
    v = kevo("store", "verify", str(path))
    assert v.returncode == 0 and "not named" not in v.stderr, v.stderr
    n = s.rows("tokens")
    ref = open_store(reference)
    np.testing.assert_array_equal(s.hidden(np.arange(n)).view(np.uint16), ref.hidden(np.arange(n)).view(np.uint16))
    got = s.arrow("SELECT * FROM layers ORDER BY token_uid, lens, layer")
    want = ref.arrow(f"SELECT * FROM layers WHERE token_uid < {n} ORDER BY token_uid, lens, layer")
    assert got.equals(want)


@pytest.mark.parametrize("checkpoint_seconds", [0.0, 1e9])
def test_tails_lost_in_a_system_crash_roll_back_to_the_checkpoint(tmp_path, monkeypatch, checkpoint_seconds):
    """Hidden tails are not fsynced at their commit (FORMAT.md): a power failure may lose them. The next
    writer finds them damaged, returns to the checkpoint (the last commit whose files were all on disk)
    and says so; the resumed run then gives exactly an uninterrupted run's store. Readers refuse the
    damaged tail in the meantime. With the checkpoint moved at every commit that makes tails obsolete
    (0 s) and with a checkpoint that never moves on its own (1e9 s: the obsolete tails it names must
    still be there)."""
    import json

    import kevo_store.writer as W
    from kevo_store import CorruptStoreError, StoreWriter
    from kevo_store.writer import CHECKPOINT

    monkeypatch.setattr(W, "CHECKPOINT_SECONDS", checkpoint_seconds)
    layout = {"hidden_shard_tokens": 128, "hidden_chunk_tokens": 8}  # a shard every few batches
    ref = tmp_path / "ref.kevo"
    H.write_store(ref, N_BATCHES, **layout)
    path = tmp_path / "power.kevo"
    H.write_store(path, N_BATCHES, close=False, **layout).abort()
    m = open_store(path).manifest
    cp = json.loads((path / CHECKPOINT).read_text())
    tails = m["hidden"]["tails"]
    assert tails and cp["commits"] < m["commits"]
    if checkpoint_seconds == 0:
        assert cp["hidden"]["zarr_rows"] > 0
    # every file the checkpoint names is still there (obsolete ones are deleted only after a newer one)
    assert all((path / rel).is_file() for rel in cp["files"])
    assert not set(tails) & set(cp["hidden"]["tails"])  # the tails since the checkpoint: none flushed
    # the power failure: the last tail never reached the disk, another one only partly
    (path / tails[-1]).unlink()
    with pytest.raises(CorruptStoreError, match="missing"):
        open_store(path).hidden(np.arange(open_store(path).rows("tokens")))
    w = StoreWriter(path, meta=H.META, hidden_size=H.HIDDEN, **layout)
    assert len(w.notices) == 1 and f"returned to commit {cp['commits']}" in w.notices[0], w.notices
    assert w.manifest["commits"] == cp["commits"] and w.n_samples == cp["tables"]["samples"]["rows"]
    w.abort()
    assert kevo("store", "verify", str(path)).returncode == 0
    H.write_store(path, N_BATCHES, **layout)
    assert_same_store(ref, path)
    v = kevo("store", "verify", str(path))
    assert v.returncode == 0 and "not named" not in v.stderr, v.stderr


def test_a_damaged_tail_without_a_usable_checkpoint_is_refused(tmp_path):
    from kevo_store import CorruptStoreError, StoreWriter
    from kevo_store.writer import CHECKPOINT

    layout = {"hidden_shard_tokens": 4096, "hidden_chunk_tokens": 8}
    path = tmp_path / "lost.kevo"
    H.write_store(path, 3, close=False, **layout).abort()
    tails = open_store(path).manifest["hidden"]["tails"]
    with open(path / tails[0], "r+b") as f:
        f.truncate(100)
    (path / CHECKPOINT).write_text("{}")
    with pytest.raises(CorruptStoreError, match="not a usable earlier manifest"):
        StoreWriter(path, meta=H.META, hidden_size=H.HIDDEN, **layout)


def test_a_lagging_checkpoint_keeps_the_obsolete_tails_it_names(tmp_path, monkeypatch):
    """The checkpoint moves at most every CHECKPOINT_SECONDS: a tail it names that a later commit makes
    obsolete (its rows now in a shard) is kept until a newer checkpoint, so a power failure after that
    commit still returns to a complete store, and the resumed run equals an uninterrupted one."""
    import json

    import kevo_store.writer as W
    from kevo_store import StoreWriter
    from kevo_store.writer import CHECKPOINT

    monkeypatch.setattr(W, "CHECKPOINT_SECONDS", 1e9)
    layout = {"hidden_shard_tokens": 128, "hidden_chunk_tokens": 8}
    n = 4  # 59, 110, 147 (a shard: the first two tails obsolete; a tail of 19), 180 tokens: never on a shard edge
    ref = tmp_path / "ref.kevo"
    H.write_store(ref, n, **layout)
    path = tmp_path / "lag.kevo"
    H.write_store(path, 2, close=False, **layout).abort()  # two batches: tails only
    H.write_store(path, n, close=False, **layout).abort()  # reopened (checkpoint = its tails), then on
    m = open_store(path).manifest
    cp = json.loads((path / CHECKPOINT).read_text())
    kept = [t for t in cp["hidden"]["tails"] if t not in m["hidden"]["tails"]]
    assert len(kept) == 2 and cp["hidden"]["zarr_rows"] == 0 and m["hidden"]["zarr_rows"] == 128
    assert all((path / rel).is_file() for rel in cp["files"])  # obsolete since, kept for the checkpoint
    (path / m["hidden"]["tails"][-1]).unlink()  # the power failure
    w = StoreWriter(path, meta=H.META, hidden_size=H.HIDDEN, **layout)
    assert len(w.notices) == 1 and f"returned to commit {cp['commits']}" in w.notices[0], w.notices
    w.abort()
    H.write_store(path, n, **layout)
    assert_same_store(ref, path)
    assert not any(p.name.startswith("tail-") for p in (path / "hidden" / "hidden").iterdir())
