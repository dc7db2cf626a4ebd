"""A local store whose files are not what its manifest says: FIFOs, directories, symbolic links out of
the store, wrong sizes. Reading one never hangs and never reads outside the store; it is refused with
one message naming the file (through the real `kevo` command, which a FIFO used to block forever)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import store_helpers as H

from tests.runner_helpers import KEVO

TIMEOUT = 60  # a hang is the failure: every command below answers in about a second


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    p = tmp_path_factory.mktemp("hostile") / "base.kevo"
    H.write_store(p, 3)
    return p


def _copy(base, tmp_path, name="s.kevo"):
    dst = tmp_path / name
    shutil.copytree(base, dst)
    return dst


def _run(*args):
    p = subprocess.run([KEVO, *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT)
    return p


def _one_line_refusal(p, *needles):
    assert p.returncode != 0, p.stdout
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _manifest(s):
    return json.loads((s / "manifest.json").read_text())


def _chunk(s):
    return next(str(p.relative_to(s)) for p in sorted((s / "hidden" / "hidden" / "c").rglob("0")) if p.is_file())


def _hidden_read(s):
    code = (f"import numpy as np, kevo_store as K; s = K.open_store({str(s)!r}); "
            "print(float(np.abs(s.hidden(np.arange(s.rows('tokens'))).astype('float32')).sum()))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)


def _fifo(path):
    os.remove(path)
    os.mkfifo(path)


KINDS = ["fifo", "directory", "symlink-out"]


def _replace(path, kind, tmp_path):
    if kind == "fifo":
        _fifo(path)
    elif kind == "directory":
        os.remove(path)
        os.mkdir(path)
    else:  # a link to a copy outside the store: same bytes, so only the link itself gives it away
        outside = tmp_path / ("outside-" + os.path.basename(path))
        shutil.copy(path, outside)
        os.remove(path)
        os.symlink(outside, path)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("what", ["parquet", "manifest", "index"])
def test_named_file_replaced_is_refused_by_sql_and_verify(base, tmp_path, kind, what):
    s = _copy(base, tmp_path)
    m = _manifest(s)
    rel = {"parquet": m["tables"]["layers"]["files"][0], "manifest": "manifest.json",
           "index": m["hidden"]["index"][0]}[what]
    _replace(s / rel, kind, tmp_path)
    word = {"fifo": "FIFO", "directory": "directory", "symlink-out": "symbolic link"}[kind]
    _one_line_refusal(_run("sql", s, "SELECT count(*) FROM samples"), rel, word)
    _one_line_refusal(_run("store", "verify", s), rel, word)


@pytest.mark.parametrize("kind", KINDS)
def test_hidden_chunk_replaced_is_refused_by_reads_and_verify(base, tmp_path, kind):
    s = _copy(base, tmp_path)
    rel = _chunk(s)
    _replace(s / rel, kind, tmp_path)
    p = _hidden_read(s)
    assert p.returncode != 0 and rel in p.stderr and "refused" in p.stderr, p.stdout + p.stderr
    v = _run("store", "verify", s)
    assert v.returncode != 0 and rel in v.stdout + v.stderr


def test_untouched_store_reads(base, tmp_path):
    """The checks above refuse only what they should."""
    s = _copy(base, tmp_path)
    assert _hidden_read(s).returncode == 0
    assert _run("sql", s, "SELECT count(*) FROM layers").returncode == 0
    assert _run("store", "verify", s).returncode == 0


@pytest.mark.parametrize("delta", [+7, -7])
def test_size_other_than_declared_is_refused_before_reading(base, tmp_path, delta):
    s = _copy(base, tmp_path)
    rel = _manifest(s)["tables"]["tokens"]["files"][0]
    data = (s / rel).read_bytes()
    (s / rel).write_bytes(data + b"\0" * delta if delta > 0 else data[:delta])
    line = _one_line_refusal(_run("sql", s, "SELECT count(*) FROM samples"), rel, "the manifest says")
    assert f"{len(data) + delta} bytes" in line


def test_missing_named_file_is_refused_at_open(base, tmp_path):
    s = _copy(base, tmp_path)
    rel = _manifest(s)["tables"]["samples"]["files"][0]
    os.remove(s / rel)
    _one_line_refusal(_run("sql", s, "SELECT 1"), rel, "missing")
