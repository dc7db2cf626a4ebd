"""`kevo store verify`: check a store against its manifest and name everything that is wrong."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import shards as sh
from .fs import LocalFS, StoreFS
from .hidden import HIDDEN_DIR, V1_CHUNK_TOKENS, expected_keys, is_v2, load_tail
from .localcheck import kind_problem
from .lock import LOCK
from .manifest import Manifest
from .schema import DERIVED_TABLES, TABLES
from .share.remote import store_fs


@dataclass
class VerifyReport:
    path: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked_files: int = 0
    checked_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _parquet_schema_problem(rel: str, got: pa.Schema, want: pa.Schema, table: str = "") -> str | None:
    from .schema import LEGACY_TYPES

    def t(f: pa.Field) -> pa.DataType:  # an older store's narrower type counts as the current one
        return want.field(f.name).type if f.type in LEGACY_TYPES.get((table, f.name), ()) else f.type

    got_t = [(f.name, t(f)) for f in got]
    want_t = [(f.name, f.type) for f in want]
    if got_t != want_t:
        diff = [f"{n}: {t}" for n, t in got_t if (n, t) not in want_t] or [n for n, _ in want_t if n not in got.names]
        return f"{rel}: schema differs from format v1 ({', '.join(map(str, diff[:4]))})"
    return None


def verify_store(path: str | os.PathLike | StoreFS, checksums: bool = True) -> VerifyReport:
    """Check sizes and sha256 of every file, Parquet footers, row counts, schemas, the hidden array
    (shape against tokens, chunk index) and the keys. Manifest problems raise StoreError.

    A partial pull is checked against what it kept: everything it kept must be whole; the tables and
    hidden layers it left out on purpose (``Manifest.omitted_files``) are a note, not a problem."""
    fs = store_fs(path)
    m = Manifest.load(fs)
    rep = VerifyReport(fs.root)
    P = rep.problems.append
    files = m["files"]
    damaged: set[str] = set()
    omitted = m.omitted_files(files)
    if m.partial:
        rep.notes.append(f"partial pull: {m.partial_summary()} (files of what was left out are not checked)")
    # --- every named file: present, right size, right sha256
    for rel, ent in files.items():
        if rel in omitted:
            continue
        if not fs.exists(rel):
            P(f"{rel}: missing (named by the manifest)")
            damaged.add(rel)
            continue
        size = fs.size(rel)
        if size != ent["size"]:
            P(f"{rel}: size {size} bytes, manifest says {ent['size']} (truncated or overwritten)")
            damaged.add(rel)
            continue
        if checksums:
            sha, _ = fs.sha256(rel)
            if sha != ent["sha256"]:
                P(f"{rel}: sha256 mismatch (corrupted): {sha[:16]}... != manifest {ent['sha256'][:16]}...")
                damaged.add(rel)
                continue
        rep.checked_files += 1
        rep.checked_bytes += size
    # --- tables: footers, schemas, row counts
    entries = [(name, m["tables"].get(name), schema) for name, schema in TABLES.items()]
    entries += [(name, d, DERIVED_TABLES.get(name)) for name, d in (m.get("derived") or {}).items()]
    for name, ent, schema in entries:
        if name in m.omitted_tables:
            continue
        if ent is None:
            P(f"manifest: table '{name}' is missing")
            continue
        total = 0
        for rel in ent["files"]:
            if rel not in files:
                P(f"{rel}: listed for table '{name}' but has no checksum entry")
                continue
            if rel in damaged:
                continue
            try:
                pf = pq.ParquetFile(fs.open(rel, "rb"))
                n = pf.metadata.num_rows
                got = pf.schema_arrow
            except Exception as e:  # noqa: BLE001 - any footer failure is corruption
                P(f"{rel}: not a readable Parquet file ({type(e).__name__}: {e})")
                continue
            if files[rel].get("rows") is not None and n != files[rel]["rows"]:
                P(f"{rel}: {n} rows, manifest says {files[rel]['rows']}")
            if schema is not None:
                prob = _parquet_schema_problem(rel, got, schema, name)
                if prob:
                    P(prob)
            total += n
        if not any(r in damaged for r in ent["files"]) and total != ent["rows"]:
            P(f"table '{name}': {total} rows in its files, manifest says {ent['rows']}")
    n_tokens = m["tables"]["tokens"]["rows"]
    if m.get("next_token_uid", n_tokens) != n_tokens:
        P(f"manifest: next_token_uid {m.get('next_token_uid')} != tokens rows {n_tokens}")
    # --- hidden
    h = m.get("hidden")
    if h and m.hidden_layers_present():
        _verify_hidden(fs, m, h, n_tokens, checksums, damaged, rep)
    # --- keys and references, if the tables are readable (and were all pulled)
    if not rep.problems and not m.omitted_tables & set(TABLES):
        _verify_keys(fs, m, rep)
    # --- notes
    named = set(files)
    orphans = [r for top in ("tables", "derived") for r in fs.walk_files(top) if r not in named]
    if orphans:
        rep.notes.append(f"{len(orphans)} file(s) not named by the manifest (left by an interrupted writer; "
                         f"ignored, and removed by the next writer), e.g. {orphans[0]}")
    if fs.exists(LOCK):
        try:
            who = json.loads(fs.read_bytes(LOCK))
            rep.notes.append(f"a writer holds the lock: pid {who.get('pid')} on {who.get('host')} "
                             f"since {who.get('since')}")
        except ValueError:
            rep.notes.append("a lock file is present")
    if m.get("state") != "closed":
        rep.notes.append("the store is open (a writer has not closed it: parts are not compacted yet)")
    return rep


def _verify_structure_v1(fs: StoreFS, m: dict, h: dict, P) -> bool:
    nl, d, zr = len(h["layers"]), h["hidden_size"], h["zarr_rows"]
    try:
        meta = json.loads(fs.read_bytes(f"{HIDDEN_DIR}/zarr.json"))
        shape = meta["shape"]
        chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
        dtype = meta["data_type"]
    except Exception as e:  # noqa: BLE001
        P(f"{HIDDEN_DIR}/zarr.json: unreadable Zarr metadata ({type(e).__name__}: {e})")
        return False
    if list(shape[1:]) != [nl, d]:
        P(f"{HIDDEN_DIR}/zarr.json: shape {shape}, expected (rows, {nl}, {d})")
    if shape[0] < zr or (m.get("state") == "closed" and shape[0] != h["rows"]):
        P(f"{HIDDEN_DIR}/zarr.json: {shape[0]} rows, but the manifest commits {zr} rows to the array"
          f"{' (closed store: must equal the token count)' if m.get('state') == 'closed' else ''}")
    if list(chunks) != [V1_CHUNK_TOKENS, 1, d]:
        P(f"{HIDDEN_DIR}/zarr.json: chunks {chunks}, expected [{V1_CHUNK_TOKENS}, 1, {d}]")
    if dtype != h["dtype"]:
        P(f"{HIDDEN_DIR}/zarr.json: data type {dtype}, manifest says {h['dtype']}")
    return True


def _verify_structure_v2(fs: StoreFS, m: dict, h: dict, P) -> bool:
    nl, d, zr, st = len(h["layers"]), h["hidden_size"], h["zarr_rows"], h["shard_tokens"]
    closed = m.get("state") == "closed"
    try:
        metas = {rel: json.loads(fs.read_bytes(rel)) for rel in sh.meta_files()}
    except Exception as e:  # noqa: BLE001
        P(f"{HIDDEN_DIR}: unreadable Zarr metadata ({type(e).__name__}: {e})")
        return False
    if metas[f"{HIDDEN_DIR}/zarr.json"].get("node_type") != "group":
        P(f"{HIDDEN_DIR}/zarr.json: not the group's metadata (an interrupted `kevo store upgrade`? run it again)")
    want = {sh.ARRAY: ([nl, d], [st, 1, d], h["dtype"], sh.array_codecs(h)),
            "token_uid": ([], [st], "int64", None), "sample_id": ([], [st], "int64", None)}
    for name, (rest, chunks, dtype, codecs) in want.items():
        rel = f"{HIDDEN_DIR}/{name}/zarr.json"
        meta = metas[rel]
        try:
            shape, got_chunks = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"]
        except (KeyError, TypeError):
            P(f"{rel}: malformed Zarr metadata")
            continue
        if list(shape[1:]) != rest:
            P(f"{rel}: shape {shape}, expected (rows{''.join(f', {x}' for x in rest)})")
        if shape[0] < zr or (closed and shape[0] != h["rows"]):
            P(f"{rel}: {shape[0]} rows, but the manifest commits {zr} rows to the array"
              f"{' (closed store: must equal the token count)' if closed else ''}")
        if list(got_chunks) != chunks:
            P(f"{rel}: chunks {got_chunks}, expected {chunks}")
        if meta.get("data_type") != dtype:
            P(f"{rel}: data type {meta.get('data_type')}, expected {dtype}")
        if codecs is not None and meta.get("codecs") != codecs:
            P(f"{rel}: codecs {meta.get('codecs')}, expected {codecs}")
    from .errors import KevoError
    from .hidden import open_v2_array

    for name in (*want, sh.LAYER):  # and Zarr itself accepts each one (no unknown keys, valid values)
        try:
            open_v2_array(fs, name)
        except KevoError as e:
            P(str(e))
    return True


def _verify_hidden(fs: StoreFS, m: dict, h: dict, n_tokens: int, checksums: bool, damaged: set, rep) -> None:
    P = rep.problems.append
    v2 = is_v2(h)
    nl, d = len(h["layers"]), h["hidden_size"]
    if h["rows"] != n_tokens:
        P(f"hidden: {h['rows']} rows, but the store has {n_tokens} tokens")
    zr = h["zarr_rows"]
    if not (_verify_structure_v2 if v2 else _verify_structure_v1)(fs, m, h, P):
        return
    tail_rows = h["rows"] - zr
    tails = (h.get("tails") or []) if v2 else ([h["tail"]] if h.get("tail") else [])
    if tails:
        got = 0
        for rel in tails:
            if rel in damaged:
                got = None
                break
            try:
                if v2:
                    t, sid = load_tail(rel, fs.read_bytes(rel))
                    if sid.shape != (len(t),):
                        P(f"{rel}: {len(sid)} sample ids for {len(t)} rows")
                else:
                    t = np.load(io.BytesIO(fs.read_bytes(rel)), allow_pickle=False)
                if t.shape[1:] != (nl, d):
                    P(f"{rel}: shape {t.shape}, expected (rows, {nl}, {d})")
                got += len(t)
            except Exception as e:  # noqa: BLE001
                P(f"{rel}: unreadable ({type(e).__name__}: {e})")
                got = None
                break
        if got is not None and got != tail_rows:
            P(f"hidden: the tail files hold {got} rows, expected {tail_rows}")
    elif tail_rows:
        P(f"hidden: {tail_rows} rows are neither in the array nor in a tail file")
    index: dict[str, list] = {}
    for rel in h.get("index", []):
        if rel in damaged:
            continue
        try:
            index.update(json.loads(fs.read_bytes(rel))["chunks"])
        except Exception as e:  # noqa: BLE001
            P(f"{rel}: unreadable chunk index ({type(e).__name__}: {e})")
    if any(rel in damaged for rel in h.get("index", [])):
        return
    what = "hidden shard" if v2 else "hidden chunk"

    def check(key: str) -> tuple[str | None, int]:
        """(problem or None, bytes checked) for one file; run in threads (hashing releases the GIL)."""
        rel = f"{HIDDEN_DIR}/{key}"
        ent = index.get(key)
        if ent is None:
            return f"{rel}: {what} has no checksum in the chunk index", 0
        if isinstance(fs, LocalFS):  # a link reads outside the store, a FIFO would block the hash
            kind = kind_problem(fs.full(rel), rel)
            if kind:
                return f"{rel}: {what} refused: {kind}", 0
        if not fs.exists(rel):
            return f"{rel}: {what} missing", 0
        size = fs.size(rel)
        if size != ent[1]:
            return f"{rel}: {what} is {size} bytes, index says {ent[1]} (truncated)", 0
        problem = sh.file_ok(fs, rel, ent[0]) if checksums else None
        if problem:
            return f"{rel}: {what} does not match its checksum in the chunk index (corrupted: {problem})", 0
        return None, size

    from concurrent.futures import ThreadPoolExecutor

    bad = 0
    keys = expected_keys(h)
    if m.partial:  # only the files of the layers a partial pull kept
        left_out = m.omitted_files([f"{HIDDEN_DIR}/{k}" for k in keys])
        keys = [k for k in keys if f"{HIDDEN_DIR}/{k}" not in left_out]
    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as ex:
        for problem, size in ex.map(check, keys):
            if problem:
                bad += 1
                if bad <= 20:
                    P(problem)
            else:
                rep.checked_files += 1
                rep.checked_bytes += size
    if bad > 20:
        P(f"hidden: {bad} damaged files in all (the first 20 are listed)")
    if v2 and not bad and checksums and zr:
        _verify_coords(fs, m, h, P)


def _verify_coords(fs: StoreFS, m: dict, h: dict, P) -> None:
    """The coordinates say what the store says: token_uid = the row, sample_id = tokens.sample_id."""
    from .hidden import open_v2_array

    zr = h["zarr_rows"]
    try:
        uid = np.asarray(open_v2_array(fs, "token_uid")[:zr])
        sid = np.asarray(open_v2_array(fs, "sample_id")[:zr])
        layer = np.asarray(open_v2_array(fs, sh.LAYER)[:])
    except Exception as e:  # noqa: BLE001
        P(f"{HIDDEN_DIR}: coordinates unreadable ({type(e).__name__}: {e})")
        return
    if not np.array_equal(uid, np.arange(zr)):
        P(f"{HIDDEN_DIR}/token_uid: not the row numbers 0..{zr - 1}")
    if layer.tolist() != list(h["layers"]):
        P(f"{HIDDEN_DIR}/layer: {layer.tolist()}, the manifest says {h['layers']}")
    files = m["tables"]["tokens"]["files"]
    if "tokens" in m.omitted_tables or not files:
        return
    try:
        t = pq.read_table([fs.open(f, "rb") for f in files], columns=["token_uid", "sample_id"]).sort_by("token_uid")
    except Exception:  # noqa: BLE001 - reported with the table
        return
    want = t.column("sample_id").to_numpy()[:zr]
    if len(want) == zr and not np.array_equal(sid, want):
        first = int(np.flatnonzero(sid != want)[0])
        P(f"{HIDDEN_DIR}/sample_id: row {first} says sample {int(sid[first])}, tokens says {int(want[first])}")


def _verify_keys(fs: StoreFS, m: dict, rep) -> None:
    from .reader import Store

    P = rep.problems.append
    s = Store(fs)
    try:
        one = s.con.execute
        n_t = m["tables"]["tokens"]["rows"]
        lo, hi, nd = one("SELECT min(token_uid), max(token_uid), count(DISTINCT token_uid) FROM tokens").fetchone()
        if n_t and (lo != 0 or hi != n_t - 1 or nd != n_t):
            P(f"tokens.token_uid is not dense 0..{n_t - 1} (min {lo}, max {hi}, {nd} distinct)")
        n_s, nd = one("SELECT count(*), count(DISTINCT sample_key) FROM samples").fetchone()
        if nd != n_s:
            P(f"samples.sample_key has {n_s - nd} duplicate(s)")
        (n,) = one("SELECT count(*) FROM samples s JOIN errors e USING (sample_key)").fetchone()
        if n:
            P(f"{n} sample_key(s) are both in samples and in errors")
        (n,) = one("SELECT count(*) FROM tokens t ANTI JOIN samples s USING (sample_id)").fetchone()
        if n:
            P(f"{n} token(s) refer to a sample_id that is not in samples")
        for t in ("layers", "topk"):
            lo, hi = one(f"SELECT min(token_uid), max(token_uid) FROM {t}").fetchone()
            if lo is not None and (lo < 0 or hi >= n_t):
                P(f"{t}.token_uid outside the tokens table (min {lo}, max {hi}, tokens {n_t})")
            n_layers = m.get("model", {}).get("n_layers")
            if n_layers is not None:
                lo, hi = one(f"SELECT min(layer), max(layer) FROM {t}").fetchone()
                if lo is not None and (lo < 0 or hi > n_layers):
                    P(f"{t}.layer outside 0..{n_layers} (min {lo}, max {hi})")
    finally:
        s.close()
