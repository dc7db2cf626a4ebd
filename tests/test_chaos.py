"""Fault injection: every writing command killed (at seeded random moments and at fixed points of the
commit protocol), full disks (a small tmpfs the test mounts), flipped bytes in every file kind, files
replaced by FIFOs, directories and symbolic links. After each fault: the store opens or is refused with
one message; every read returns the right values or fails; `verify` agrees; re-running gives the store
an uninterrupted run gives. The figures (faults tried / survived per command and kind) are written to
docs/integrity.md (`KEVO_CHAOS_WRITE=1 pytest tests/test_chaos.py`) and checked against it.

Bounded: seeded, small stores, about two minutes on two cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import store_helpers as H

from kevo_store import TABLES, open_store
from kevo_store.errors import KevoError
from kevo_store.verify import verify_store

TESTS = Path(__file__).parent
REPO = TESTS.parent
DOC = REPO / "docs" / "integrity.md"
KEVO = str(Path(sys.executable).with_name("kevo"))
SEED = 17
N_BATCHES = 4

# (command, fault kind) -> [tried, survived, wrong-data-but-verify-caught]
FIG: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
EXPECTED_ROWS = {  # what a full run of this module records (the docs table is compared only then)
    "writer", "compact", "merge", "push", "pull", "embed", "trace", "byte flip", "replaced file"}


def _record(cmd: str, kind: str, survived: bool, wrong_caught: bool = False) -> None:
    f = FIG[(cmd, kind)]
    f[0] += 1
    f[1] += int(survived)
    f[2] += int(wrong_caught)


# ----------------------------------------------------------------------------- store content


def content(path) -> dict:
    """Every table sorted by its key and all hidden bytes: what two equal stores share."""
    from kevo_store.schema import KEYS

    with open_store(path) as s:
        out = {}
        for name in TABLES:
            if name in s.tables:
                order = ", ".join(KEYS[name])
                t = s.arrow(f"SELECT * FROM {name} ORDER BY {order}")
                out[name] = t.drop_columns(["time"]) if name == "errors" else t
        for name in (s.manifest.get("derived") or {}):
            out[name] = s.arrow(f"SELECT * FROM {name} ORDER BY ALL")
        n = s.rows("tokens")
        if s.manifest.get("hidden") and n:
            out["hidden"] = s.hidden(np.arange(n)).tobytes()
    return out


def same(a: dict, b: dict, approx: tuple[str, ...] = ()) -> bool:
    if set(a) != set(b):
        return False
    for k in a:
        if k in approx:
            x, y = a[k].to_pandas(), b[k].to_pandas()
            if x.shape != y.shape or not np.allclose(x[["x", "y"]].to_numpy(), y[["x", "y"]].to_numpy(), atol=1e-4):
                return False
        elif k == "hidden":
            if a[k] != b[k]:
                return False
        elif not a[k].equals(b[k]):
            return False
    return True


def committed_state_ok(path) -> bool:
    """After a kill: no store yet, or one that opens and verifies (its committed state is whole)."""
    path = Path(path)
    if not (path / "manifest.json").exists():
        return True
    try:
        return verify_store(path).ok
    except KevoError:
        return False


def run(*args, env=None, timeout=180) -> subprocess.CompletedProcess:
    e = {**os.environ, **(env or {})}
    return subprocess.run([KEVO, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=e)


def one_line_error(p: subprocess.CompletedProcess) -> bool:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and "%|" not in ln]
    return p.returncode != 0 and len(lines) == 1 and "Traceback" not in p.stderr


def kill_at(args: list, delay: float, cwd=None) -> int:
    """Start the real command, SIGKILL it after ``delay`` seconds (if still running). Returns its status."""
    p = subprocess.Popen([KEVO, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd,
                         start_new_session=True)
    try:
        p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    return p.returncode


def timed(args: list) -> float:
    t = time.perf_counter()
    p = run(*args)
    assert p.returncode == 0, p.stderr
    return time.perf_counter() - t


def delays(duration: float, n: int, key: str) -> list[float]:
    rng = np.random.default_rng([SEED, sum(map(ord, key))])
    return [float(x) for x in rng.uniform(0.15, 1.0, n) * duration]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    d = tmp_path_factory.mktemp("chaos-ref")
    closed = d / "closed.kevo"
    H.write_store(closed, N_BATCHES)
    a, b = d / "a.kevo", d / "b.kevo"
    H.write_store(a, 2)
    H.write_store(b, N_BATCHES, start=2)
    merged = d / "merged.kevo"
    assert run("store", "merge", a, b, "--out", merged).returncode == 0
    return {"dir": d, "closed": closed, "closed_c": content(closed), "a": a, "b": b, "merged": merged,
            "merged_c": content(merged)}


def open_store_copy(dst: Path) -> Path:
    """An interrupted ingest: every batch committed, never closed (parts, tail, per-commit indexes)."""
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import store_helpers as H; "
            f"H.write_store({str(dst)!r}, {N_BATCHES}, close=False); import os; os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    (dst / ".lock").unlink(missing_ok=True)  # as a crashed process on this host leaves it: stale
    return dst


# ----------------------------------------------------------------------------- the writer protocol

# a child that writes the batches; a patched function SIGKILLs it at the chosen point (as in
# tests/test_store_crash.py: to the store it is a real crash)
WRITER_CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, sys.argv[4])
    import store_helpers as H
    import kevo_store.writer as W
    import kevo_store.fs as F
    path, mode, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
    state = {"n": 0}
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    orig_atomic = F.LocalFS.write_atomic
    if mode == "before-manifest":
        def write_atomic(self, rel, data):
            if rel == "manifest.json":
                state["n"] += 1
                if state["n"] == k:
                    die()
            return orig_atomic(self, rel, data)
        F.LocalFS.write_atomic = write_atomic
    elif mode == "after-manifest":
        def write_atomic(self, rel, data):
            orig_atomic(self, rel, data)
            if rel == "manifest.json":
                state["n"] += 1
                if state["n"] == k:
                    die()
        F.LocalFS.write_atomic = write_atomic
    elif mode == "mid-parquet":
        orig = W.write_parquet
        def write_parquet(fs, rel, table, name):
            state["n"] += 1
            if state["n"] == k:
                orig(fs, rel, table, name)
                with open(fs.full(rel), "r+b") as f:
                    f.truncate(os.path.getsize(fs.full(rel)) // 2)
                die()
            return orig(fs, rel, table, name)
        W.write_parquet = write_parquet
    elif mode == "mid-compaction":
        orig_c = W.StoreWriter._compact_table
        def _compact_table(self, name, m, commit):
            r = orig_c(self, name, m, commit)
            if name == "layers":
                die()
            return r
        W.StoreWriter._compact_table = _compact_table
    H.write_store(path, int(sys.argv[5]))
""")


def _writer(path, mode="none", k=0):
    return subprocess.run([sys.executable, "-c", WRITER_CHILD, str(path), mode, str(k), str(TESTS), str(N_BATCHES)],
                          capture_output=True, text=True, timeout=120)


WRITER_POINTS = [("before-manifest", k) for k in (1, 2, 5)] + [("after-manifest", k) for k in (2, 6)] + \
    [("mid-parquet", k) for k in (1, 7)] + [("mid-compaction", 0)]


@pytest.mark.parametrize("mode,k", WRITER_POINTS, ids=[f"{m}-{k}" for m, k in WRITER_POINTS])
def test_writer_killed_in_the_commit_protocol(refs, tmp_path, mode, k):
    path = tmp_path / "w.kevo"
    p = _writer(path, mode, k)
    assert p.returncode == -signal.SIGKILL, p.stderr
    after_kill = committed_state_ok(path)
    p = _writer(path)  # the re-run resumes (and breaks the dead writer's stale lock)
    ok = after_kill and p.returncode == 0 and verify_store(path).ok and same(content(path), refs["closed_c"])
    _record("writer", "kill at a commit-protocol point", ok)
    assert ok, p.stderr


def test_writer_killed_at_random_moments(refs, tmp_path):
    t = time.perf_counter()
    assert _writer(tmp_path / "timing.kevo").returncode == 0
    dur = time.perf_counter() - t
    for i, d in enumerate(delays(dur, 3, "writer")):
        path = tmp_path / f"r{i}.kevo"
        child = subprocess.Popen([sys.executable, "-c", WRITER_CHILD, str(path), "none", "0", str(TESTS),
                                  str(N_BATCHES)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            child.wait(timeout=d)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        after_kill = committed_state_ok(path)
        p = _writer(path)
        ok = after_kill and p.returncode == 0 and same(content(path), refs["closed_c"])
        _record("writer", "SIGKILL at a seeded random moment", ok)
        assert ok, (d, p.stderr)


# ----------------------------------------------------------------------------- compact, merge, push, pull, embed


def _kill_and_rerun(cmd: str, args: list, out: Path, want: dict, n: int, prepare, tmp_path, approx=()):
    base = tmp_path / "timing"
    prepare(base)
    dur = timed([a if a != "{OUT}" else base for a in args])
    for i, d in enumerate(delays(dur, n, cmd)):
        target = tmp_path / f"{cmd}-{i}"
        prepare(target)
        argv = [a if a != "{OUT}" else target for a in args]
        kill_at(argv, d)
        after_kill = committed_state_ok(target if cmd != "push" else out)
        p = run(*argv)
        check = out if cmd == "push" else target
        if cmd == "push":  # what was pushed, pulled back whole
            back = tmp_path / f"back-{i}"
            p2 = run("store", "pull", f"file://{out}", back)
            ok = after_kill and p.returncode == 0 and p2.returncode == 0 and same(content(back), want)
            shutil.rmtree(out, ignore_errors=True)
        else:
            ok = after_kill and p.returncode == 0 and verify_store(check).ok and same(content(check), want, approx)
        _record(cmd, "SIGKILL at a seeded random moment", ok)
        assert ok, (cmd, d, p.stdout, p.stderr)


def test_compact_killed(refs, tmp_path):
    src = open_store_copy(tmp_path / "open-src.kevo")

    def prepare(t):
        shutil.copytree(src, t)

    _kill_and_rerun("compact", ["store", "compact", "{OUT}"], None, refs["closed_c"], 3, prepare, tmp_path)


def test_merge_killed(refs, tmp_path):
    def prepare(t):
        shutil.rmtree(t, ignore_errors=True)

    _kill_and_rerun("merge", ["store", "merge", refs["a"], refs["b"], "--out", "{OUT}"], None, refs["merged_c"], 3,
                    prepare, tmp_path)


def test_push_killed(refs, tmp_path):
    remote = tmp_path / "remote.kevo"

    def prepare(t):
        shutil.rmtree(remote, ignore_errors=True)

    _kill_and_rerun("push", ["store", "push", refs["closed"], f"file://{remote}"], remote, refs["closed_c"], 3,
                    prepare, tmp_path)


def test_pull_killed(refs, tmp_path):
    def prepare(t):
        shutil.rmtree(t, ignore_errors=True)

    _kill_and_rerun("pull", ["store", "pull", f"file://{refs['closed']}", "{OUT}"], None, refs["closed_c"], 4, prepare,
                    tmp_path)


def test_embed_write_back_killed(refs, tmp_path):
    want_dir = tmp_path / "want.kevo"
    shutil.copytree(refs["closed"], want_dir)
    args = ["embed", "{OUT}", "--method", "pca", "--tokens", "step >= 0", "--name", "e1", "--seed", "0"]
    assert run(*[a if a != "{OUT}" else want_dir for a in args]).returncode == 0
    want = content(want_dir)

    def prepare(t):
        shutil.rmtree(t, ignore_errors=True)
        shutil.copytree(refs["closed"], t)

    _kill_and_rerun("embed", args, None, want, 3, prepare, tmp_path, approx=("embeddings",))


TRACE_QUESTIONS = [
    {"id": "q0", "image": "img00.png", "question": "Is there a red car in the picture?", "constraint": "red car"},
    {"id": "q1", "image": "img01.png", "question": "What is on the table next to the guitar?",
     "constraint": "the guitar"},
]


def test_trace_killed(tmp_path):
    """`kevo trace` killed at seeded moments (model loading, the traced forwards, the one commit of its
    three tables): the store verifies after each kill, and a rerun gives the tables an uninterrupted run gives."""
    from tests.runner_helpers import make_images, tiny_model_dir

    model = tiny_model_dir("llava")
    images = make_images(tmp_path / "images", 2)
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps(r) + "\n" for r in TRACE_QUESTIONS))
    base = tmp_path / "base.kevo"
    p = run("ingest", "vqa", "--questions", q, "--images", images, "--model", model, "--out", base,
            "--max-new-tokens", 2, "--batch-size", 2, "--capture-prompt", timeout=300)
    assert p.returncode == 0, p.stderr
    args = ["trace", "{OUT}", "--model", model, "--corrupt", "swap:cat", "--window", "3", "--kinds", "hidden,mlp",
            "--dtype", "float32", "--device", "cpu"]
    want_dir = tmp_path / "want.kevo"
    shutil.copytree(base, want_dir)
    p = run(*[a if a != "{OUT}" else want_dir for a in args], timeout=300)
    assert p.returncode == 0, p.stderr
    want = content(want_dir)
    assert {"trace_runs", "traces"} <= set(want)

    def prepare(t):
        shutil.rmtree(t, ignore_errors=True)
        shutil.copytree(base, t)

    _kill_and_rerun("trace", args, None, want, 3, prepare, tmp_path)


# ----------------------------------------------------------------------------- full disk


@pytest.fixture
def small_fs(tmp_path):
    """Mount a tmpfs of a given size (root only); skipped where mounting is not allowed."""
    mounted = []

    def make(size_bytes: int) -> Path:
        d = tmp_path / f"small-{len(mounted)}"
        d.mkdir()
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={max(size_bytes, 4096)}", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({p.stderr.strip() or 'mount failed'}); "
                        "the full-disk faults need root or a user namespace")
        mounted.append(d)
        return d

    yield make
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


@pytest.mark.parametrize("frac", [0.3, 0.6, 0.9])
def test_full_disk(refs, tmp_path, small_fs, frac):
    """merge, pull and compact into a filesystem too small for the result: one line, the committed state
    whole; the same command with room to spare finishes the store an uninterrupted run gives."""
    jobs = {
        "merge": (lambda out: ["store", "merge", refs["a"], refs["b"], "--out", out], refs["merged"], refs["merged_c"]),
        "pull": (lambda out: ["store", "pull", f"file://{refs['closed']}", out], refs["closed"], refs["closed_c"]),
        "compact": (lambda out: ["store", "compact", out], refs["closed"], refs["closed_c"]),
    }
    opened = open_store_copy(tmp_path / "open.kevo")
    for cmd, (argv, ref_path, want) in jobs.items():
        need = _size(ref_path) + (_size(opened) if cmd == "compact" else 0)
        mnt = small_fs(int(need * frac))
        out = mnt / "s.kevo"
        if cmd == "compact":
            try:
                shutil.copytree(opened, out)
            except OSError:
                continue  # the open store itself does not fit: nothing to compact
        p = run(*argv(out))
        full = p.returncode != 0
        ok = (not full or one_line_error(p)) and committed_state_ok(out)
        if full:
            ok = ok and ("no space left" in p.stderr or "No space left" in p.stderr)
        # more room: move what is there to a big disk and run again
        big = tmp_path / f"big-{cmd}-{frac}.kevo"
        if out.exists():
            shutil.copytree(out, big, symlinks=True)
        p2 = run(*argv(big))
        ok = ok and p2.returncode == 0 and same(content(big), want)
        _record(cmd, "full disk", ok)
        assert ok, (cmd, frac, p.stderr, p2.stderr)


# ----------------------------------------------------------------------------- flipped bytes, replaced files


def _file_kinds(path: Path) -> dict[str, str]:
    m = json.loads((path / "manifest.json").read_text())
    kinds = {"manifest.json": "manifest.json", "hidden/zarr.json": "hidden/zarr.json",
             "hidden/hidden/zarr.json": "hidden/hidden/zarr.json"}
    for t in ("samples", "tokens", "layers", "topk", "vocab", "errors"):
        if m["tables"][t]["files"]:
            kinds[f"parquet ({t})"] = m["tables"][t]["files"][0]
    kinds["chunk index"] = m["hidden"]["index"][0]
    shard = sorted(p for p in (path / "hidden" / "hidden" / "c").rglob("0") if p.is_file())[0]
    kinds["hidden shard"] = str(shard.relative_to(path))
    kinds["sample_id coordinate"] = "hidden/sample_id/c/0"
    if m["hidden"].get("tails"):
        kinds["hidden tail"] = m["hidden"]["tails"][0]
    return kinds


def _judge(path: Path, want: dict) -> tuple[bool, bool]:
    """(survived, wrong-data-but-verify-caught) for a damaged store, in-process."""
    try:
        got = content(path)
        reads = "right" if same(got, want) else "wrong"
    except KevoError as e:
        reads = "failed" if "\n" not in str(e) else "bad-message"
    except Exception:  # noqa: BLE001 - anything but a one-line KevoError is a failure of the check
        reads = "bad-message"
    try:
        verified = verify_store(path).ok
    except KevoError:
        verified = False
    except Exception:  # noqa: BLE001
        return False, False
    if reads == "right":
        return True, False  # verify may still flag the damaged file: that is its job
    if reads == "failed":
        return not verified, False
    return False, reads == "wrong" and not verified


@pytest.mark.parametrize("state", ["closed", "open"])
def test_flipped_bytes_in_every_file_kind(refs, tmp_path, state):
    base = refs["closed"] if state == "closed" else open_store_copy(tmp_path / "open-base.kevo")
    want = refs["closed_c"]
    rng = np.random.default_rng([SEED, 1 if state == "open" else 0])
    for kind, rel in _file_kinds(base).items():
        size = (base / rel).stat().st_size
        for j, pos in enumerate(rng.integers(0, size, 3)):
            s = tmp_path / f"f-{state}-{abs(hash(kind))}-{j}"
            shutil.copytree(base, s)
            data = bytearray((s / rel).read_bytes())
            data[int(pos)] ^= 1 << int(rng.integers(0, 8))
            (s / rel).write_bytes(bytes(data))
            ok, caught = _judge(s, want)
            _record("byte flip", f"{kind}, {state} store", ok, caught)
            # no known gap is left: Parquet files (kevo_store/readcheck.py) and hidden shards and tails are
            # checked on every read, so every flip is read right or refused with one message
            assert ok or (caught and kind.startswith(KNOWN_GAPS)), (kind, state, int(pos))
            shutil.rmtree(s)


KNOWN_GAPS: tuple[str, ...] = ()  # every file kind is checked on read now (docs/integrity.md)

REPLACE_CHILD = textwrap.dedent("""
    import sys, numpy as np, kevo_store as K
    from kevo_store.errors import KevoError
    from kevo_store.verify import verify_store
    try:
        s = K.open_store(sys.argv[1]); s.sql("SELECT count(*) FROM layers"); s.hidden(np.arange(s.rows("tokens")))
        print("READ-OK")
    except KevoError as e:
        print("REFUSED", str(e).count(chr(10)))
    try:
        print("VERIFY", verify_store(sys.argv[1]).ok)
    except KevoError as e:
        print("VERIFY-REFUSED")
""")


@pytest.mark.parametrize("how", ["fifo", "directory", "symlink"])
def test_files_replaced(refs, tmp_path, how):
    base = refs["closed"]
    for kind, rel in _file_kinds(base).items():
        if kind == "sample_id coordinate":  # not read by Store.hidden (verify refuses it; the flips test it)
            continue
        s = tmp_path / f"r-{abs(hash(kind))}"
        shutil.copytree(base, s)
        target = s / rel
        if how == "fifo":
            target.unlink()
            os.mkfifo(target)
        elif how == "directory":
            target.unlink()
            target.mkdir()
        else:
            outside = tmp_path / f"outside-{abs(hash(kind))}"
            shutil.copy(base / rel, outside)
            target.unlink()
            target.symlink_to(outside)
        try:
            p = subprocess.run([sys.executable, "-c", REPLACE_CHILD, str(s)], capture_output=True, text=True,
                               timeout=60)
            out = p.stdout.split()
            ok = p.returncode == 0 and out[:2] == ["REFUSED", "0"] and out[2] in ("VERIFY-REFUSED", "VERIFY") \
                and "True" not in out
        except subprocess.TimeoutExpired:
            ok = False  # a hang
        _record("replaced file", f"{kind} -> {how}", ok)
        assert ok, (kind, how, p.stdout, p.stderr)
        shutil.rmtree(s)


# ----------------------------------------------------------------------------- the figures


def render() -> str:
    cmds: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    rows = []
    for (cmd, kind), (tried, surv, caught) in sorted(FIG.items()):
        c = cmds[cmd]
        c[0] += tried
        c[1] += surv
        c[2] += caught
        rows.append(f"| {cmd} | {kind} | {tried} | {surv} | {100 * surv / tried:.0f}% | {caught or ''} |")
    total = [sum(v[i] for v in FIG.values()) for i in range(3)]
    summary = [f"| {c} | {v[0]} | {v[1]} | {100 * v[1] / v[0]:.0f}% |" for c, v in sorted(cmds.items())]
    return "\n".join([
        "<!-- generated by tests/test_chaos.py (KEVO_CHAOS_WRITE=1 pytest tests/test_chaos.py); do not edit -->",
        f"Faults tried: {total[0]}, survived: {total[1]} ({100 * total[1] / max(total[0], 1):.0f}%).", "",
        "| command / fault | tried | survived | rate |", "|---|---|---|---|", *summary, "",
        "| command / fault | kind | tried | survived | rate | wrong data, caught only by verify |",
        "|---|---|---|---|---|---|", *rows,
        "<!-- end of generated figures -->",
    ])


def test_figures_are_in_the_docs():
    print("\n" + render())
    if {c for c, _ in FIG} != EXPECTED_ROWS:
        pytest.skip("only part of the suite ran: the figures are compared after a full run")
    text = render()
    doc = DOC.read_text() if DOC.exists() else ""
    start, end = "<!-- generated by tests/test_chaos.py", "<!-- end of generated figures -->"
    if os.environ.get("KEVO_CHAOS_WRITE"):
        head, _, rest = doc.partition(start)
        tail = rest.partition(end)[2] if rest else ""
        DOC.write_text(head + text + tail)
        doc = DOC.read_text()
    assert start in doc, f"{DOC} has no generated figures: run KEVO_CHAOS_WRITE=1 pytest tests/test_chaos.py"
    in_doc = start + doc.partition(start)[2].partition(end)[0] + end
    assert in_doc == text, "docs/integrity.md's figures differ from this run's: regenerate them (KEVO_CHAOS_WRITE=1)"
