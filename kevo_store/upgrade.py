"""`kevo store upgrade`: rewrite a format v1 store as format v2 (kevo reads both; it extends only v2).

Only the hidden states change (the tables are the same in both formats): the v1 array's rows, array
and tail, are read chunk by chunk (each checked against its sha256), written as v2 shards one block
of shards at a time (memory: one shard's rows of every layer), and then one commit switches the
manifest to v2. Until that commit the store is the v1 store it was (the new files are not named by
its manifest, and v1's files are untouched); after it, the group's own ``hidden/zarr.json`` replaces
v1's array metadata and v1's files are deleted. Interrupted anywhere, running it again finishes it.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from . import shards as sh
from .errors import StoreError
from .fs import LocalFS, is_url
from .hidden import HIDDEN_DIR, HiddenReader, HiddenWriter, is_v2, new_section
from .lock import StoreLock
from .manifest import MANIFEST, Manifest, now_iso
from .schema import FORMAT_VERSION


@dataclass
class UpgradeResult:
    path: str
    from_version: int
    upgraded: bool  # False: it was format v2 already (any unfinished step finished)
    rows: int


def upgrade_store(path: str | os.PathLike) -> UpgradeResult:
    if is_url(path):
        raise StoreError(f"{path}: upgrade a local store (pull it, upgrade, push it)")
    fs = LocalFS(path)
    if not fs.exists(MANIFEST):
        raise StoreError(f"{fs.root} is not a kevo store (no {MANIFEST})")
    lock = StoreLock(fs, "upgrade")
    lock.acquire()
    try:
        m = Manifest.load(fs)
        if m.partial:
            raise StoreError(f"{fs.root} is a partial pull; upgrade the whole store, then pull again")
        h = m.get("hidden")
        v = int(m["format_version"])
        if v >= FORMAT_VERSION and (not h or is_v2(h)):
            if h:
                _finish(fs, m)
            return UpgradeResult(fs.root, v, False, int(h["rows"]) if h else 0)
        m2 = copy.deepcopy(m)
        commit = m["commits"]
        if h:
            sec, files, commit = _rewrite_hidden(fs, m)
            for rel in list(h.get("index") or []) + ([h["tail"]] if h.get("tail") else []):
                m2["files"].pop(rel, None)
            m2["files"].update(files)
            m2["hidden"] = sec
        m2["format_version"] = FORMAT_VERSION
        m2["commits"] = commit + 1
        m2["updated"] = now_iso()
        fs.write_atomic(MANIFEST, m2.dump())  # the commit point: from here on the store is format v2
        if h:
            _finish(fs, m2)
        return UpgradeResult(fs.root, v, True, int(h["rows"]) if h else 0)
    finally:
        lock.release()


def _rewrite_hidden(fs: LocalFS, m: Manifest) -> tuple[dict, dict, int]:
    """Write the v1 hidden rows as a v2 group beside v1's files; returns (section, files, last commit)."""
    h = m["hidden"]
    rows = int(h["rows"])
    sec = new_section(h["layers"], h["hidden_size"], h["logical_dtype"])
    for name in (sh.ARRAY, *sh.COORDS, sh.LAYER):  # what an interrupted run left
        fs.rmtree(f"{HIDDEN_DIR}/{name}")
    files: dict[str, dict] = {}
    commit = m["commits"] + 1
    HiddenWriter._write_index_to(fs, commit, sh.create_group(fs, sec, group_meta=False), sec, files)
    sid = _sample_ids(fs, m, rows)
    reader = HiddenReader(fs, h, m.get("files"))
    w = HiddenWriter(fs, sec)
    block = sec["shard_tokens"]  # one row of shards at a time: memory = one shard of every layer
    n_full = rows - rows % sec["shard_tokens"]
    for lo in range(0, n_full, block):
        hi = min(lo + block, n_full)
        w.append(reader.read_stored(np.arange(lo, hi)), sid[lo:hi])
        commit += 1
        new, f, _ = w.stage(commit)
        files.update(f)
        w.committed(new)
    if rows > n_full:
        w.append(reader.read_stored(np.arange(n_full, rows)), sid[n_full:rows])
    commit += 1
    new, f, gone = w.stage_close(commit)
    files.update(f)
    for rel in gone:
        files.pop(rel, None)
    return new, files, commit


def _sample_ids(fs: LocalFS, m: Manifest, rows: int) -> np.ndarray:
    tf = m["tables"]["tokens"]["files"]
    if not tf:
        return np.empty(0, np.int64)
    t = pq.read_table([fs.full(f) for f in tf], columns=["token_uid", "sample_id"]).sort_by("token_uid")
    uid = t.column("token_uid").to_numpy()
    if len(uid) != rows or not np.array_equal(uid, np.arange(rows)):
        raise StoreError(f"{fs.root}: the tokens table does not cover hidden rows 0..{rows - 1}; "
                         f"run `kevo store verify {fs.root}`")
    return t.column("sample_id").to_numpy().astype(np.int64)


def _finish(fs: LocalFS, m: Manifest) -> None:
    """After the commit: the group's metadata over v1's array metadata, then v1's files removed."""
    import json

    try:
        node = json.loads(fs.read_bytes(f"{HIDDEN_DIR}/zarr.json")).get("node_type")
    except (FileNotFoundError, ValueError):
        node = None
    if node != "group":
        sh.write_group_meta(fs)
    fs.rmtree(f"{HIDDEN_DIR}/c")  # v1 chunks
    fs.rmtree(f"{HIDDEN_DIR}/index")  # v1 index parts (v2's live in hidden/hidden/index)
    named = set(m["files"])
    for name in fs.listdir(HIDDEN_DIR):
        if name.startswith("tail-") and f"{HIDDEN_DIR}/{name}" not in named:
            fs.remove(f"{HIDDEN_DIR}/{name}")
