"""StoreWriter: appends batches of samples to a store, one atomic commit per batch.

Commit protocol: every data file of a batch is written under a new name (Parquet parts named by
the commit number, whole hidden shards, the hidden tail), hashed, and only then is ``manifest.json``
replaced atomically. The manifest is the commit record: a crash before the rename leaves files
that no manifest names, which the next writer deletes before it resumes. Committed files are never
rewritten in place.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Set as AbstractSet
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import hidden as hid
from .errors import CorruptStoreError, SchemaError, StoreError
from .fs import LocalFS, is_url
from .lock import LOCK, StoreLock
from .manifest import HIDDEN_SHAPE_KEYS, MANIFEST, META_SECTIONS, Manifest, now_iso
from .schema import DERIVED_TABLES, KEYS, TABLES
from .tables import check_unique, conform, parquet_options, sort_by_key

# The shape of batches handed to write_batch: samples/tokens carry sample_key instead of sample_id.
SAMPLES_IN = pa.schema([f for f in TABLES["samples"] if f.name != "sample_id"])
TOKENS_IN = pa.schema(
    [f if f.name != "sample_id" else pa.field("sample_key", pa.string(), nullable=False, metadata=f.metadata)
     for f in TABLES["tokens"]]
)
# Compaction: rows per row group and per file of a compacted table.
ROW_GROUP_ROWS = 1 << 20
FILE_ROWS = 1 << 26
CHECKPOINT = hid.CHECKPOINT
CHECKPOINT_SECONDS = 10.0
"""How old the checkpoint may grow while commits make files obsolete (FORMAT.md, "Durability"): the
unflushed tails are fsynced and the checkpoint moved at most this often, so that the tails of a run of
commits are deleted from the page cache rather than flushed each time; an operating-system crash then
loses at most the commits of the last ``CHECKPOINT_SECONDS`` (they are computed again). 0: at every
commit that makes a file obsolete."""
# Tables whose parts, in commit order, are already globally sorted by key (ids grow with commits).
_MONOTONE = {"samples", "tokens", "layers", "topk"}


class _KeysView(AbstractSet):
    """Read-only view of the writer's committed keys."""

    def __init__(self, keys: set[str]):
        self._keys = keys

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"committed_keys({len(self._keys)})"


def _part_name(table: str, commit: int, kind: str = "part", k: int | None = None) -> str:
    suffix = f"-{k:03d}" if k is not None else ""
    return f"tables/{table}/{kind}-{commit:06d}{suffix}.parquet"


def write_parquet(fs: LocalFS, rel: str, table: pa.Table, name: str) -> dict[str, Any]:
    """Write one Parquet file, fsync it, and return its manifest entry."""
    fs.makedirs(os.path.dirname(rel))
    pq.write_table(table, fs.full(rel), row_group_size=ROW_GROUP_ROWS, **parquet_options(table.schema, name))
    fs.fsync_file(rel)
    sha, size = fs.sha256(rel)
    return {"sha256": sha, "size": size, "rows": table.num_rows}


def _validate_args(meta: dict | None, hidden_size: int | None, hidden_layers: list[int] | None,
                   hidden_dtype: str) -> None:
    """Refuse bad arguments before anything touches the disk."""
    if hidden_dtype not in hid.LOGICAL_DTYPES:
        raise StoreError(f"hidden_dtype must be one of {list(hid.LOGICAL_DTYPES)}, not {hidden_dtype!r}")
    extra = set(meta or {}) - set(META_SECTIONS)
    if extra:
        raise StoreError(f"unknown manifest section(s) {sorted(extra)} in meta; expected {list(META_SECTIONS)}")
    for sec, val in (meta or {}).items():
        if not isinstance(val, dict):
            raise StoreError(f"meta[{sec!r}] must be a dict, not {type(val).__name__}")
        try:
            json.dumps(val)
        except (TypeError, ValueError) as e:
            raise StoreError(f"meta[{sec!r}] cannot be stored in manifest.json ({e})") from None
    if hidden_size is not None:
        if int(hidden_size) <= 0:
            raise StoreError(f"hidden_size must be positive, not {hidden_size}")
        if hidden_layers is not None:
            hl = [int(x) for x in hidden_layers]
            if not hl or len(set(hl)) != len(hl) or min(hl) < 0:
                raise StoreError(f"hidden_layers must be distinct layer numbers >= 0, not {hidden_layers}")


class StoreWriter:
    """Creates or resumes a store and appends batches to it. Use as a context manager.

    Parameters
    ----------
    path: a local directory (created if missing). Remote stores are written locally and pushed.
    meta: the manifest sections ``model``, ``lens``, ``generation``, ``dataset``, ``capture``.
        On resume, what they say about the computation must equal the store's
        (``Manifest.identity_diff``: provenance such as paths and batch size may change); the
        sections are then updated with the new values.
    hidden_size: D; None stores no hidden states (when creating) or keeps the store's (when resuming).
    hidden_layers: the layers whose hidden states are kept (axis 1 of ``hidden``); None = 0..L
        with L = ``meta["model"]["n_layers"]``.
    hidden_dtype: "float16" or "bfloat16" (kept as uint16 bits).
    hidden_codec: "none" (the default: activations barely compress) or "zstd", for a new store.
    hidden_shard_tokens, hidden_chunk_tokens: the shard and inner-chunk lengths (tokens) of a new
        store's hidden array (kevo_store/shards.py's defaults when None).
    compact: on close, compact each table's per-batch parts into few files sorted by the key.
    """

    def __init__(self, path: str | os.PathLike, meta: dict[str, Any] | None = None, hidden_size: int | None = None,
                 hidden_layers: list[int] | None = None, hidden_dtype: str = "float16", *, compact: bool = True,
                 hidden_codec: str = "none", hidden_shard_tokens: int | None = None,
                 hidden_chunk_tokens: int | None = None):
        if is_url(path):
            raise StoreError(f"{path}: the writer writes local stores only; write locally, then `kevo store push`")
        if hidden_layers is not None:
            hidden_layers = list(hidden_layers)
        _validate_args(meta, hidden_size, hidden_layers, hidden_dtype)
        self.fs = fs = LocalFS(path)
        self.path = fs.root
        self.compact = compact
        self._broken: BaseException | None = None
        self._closed = False
        self.notices: list[str] = []
        """What opening the store did that its user should know (e.g. commits undone because hidden
        tails were lost in a system crash, whose samples are then run again)."""
        self._layout = {"codec": hidden_codec, "shard_tokens": hidden_shard_tokens,
                        "chunk_tokens": hidden_chunk_tokens}
        self._doomed: list[str] = []  # obsolete files the checkpoint may still name (see _settle)
        self._checkpoint_at = time.monotonic()
        if os.path.exists(fs.root) and not os.path.isdir(fs.root):
            raise StoreError(f"{fs.root} exists and is not a directory")
        if os.path.isdir(fs.root) and not fs.exists(MANIFEST) and not self._only_our_layout():
            raise StoreError(f"{fs.root} exists, is not empty and is not a kevo store (no manifest.json); "
                             "refusing to write into it")
        fs.makedirs("")
        self._lock = StoreLock(fs)
        self._lock.acquire()
        try:
            if not fs.exists(MANIFEST):
                if not self._only_our_layout():  # checked again under the lock
                    raise StoreError(f"{fs.root} is not empty and is not a kevo store; refusing to write into it")
                # a creation that crashed before its first manifest: nothing was committed
                for name in os.listdir(fs.root):
                    if name == LOCK:
                        continue
                    if os.path.isdir(fs.full(name)):
                        fs.rmtree(name)
                    else:
                        fs.remove(name)
            self._open(meta, hidden_size, hidden_layers, hidden_dtype)
        except BaseException:
            self._lock.release()
            raise

    def _only_our_layout(self) -> bool:
        """True if the directory holds nothing but what a kevo writer creates before its first commit."""
        names = [n for n in os.listdir(self.fs.root) if n != LOCK]
        return all(n in ("hidden", "tables", "derived") or n.startswith(f"{MANIFEST}.tmp-") for n in names)

    # ------------------------------------------------------------------ open / resume
    def _open(self, meta, hidden_size, hidden_layers, hidden_dtype) -> None:
        fs = self.fs
        if hidden_size is not None and hidden_layers is None:
            n_layers = ((meta or {}).get("model") or {}).get("n_layers")
            if n_layers is None:
                raise StoreError("hidden_layers not given and meta['model']['n_layers'] unknown: "
                                 "cannot tell which layers the hidden states cover")
            hidden_layers = list(range(int(n_layers) + 1))
        want_hidden = (hid.new_section(hidden_layers, hidden_size, hidden_dtype, **self._layout)
                       if hidden_size is not None else None)
        if fs.exists(MANIFEST):
            m = Manifest.load(fs)
            if m.partial:  # writing into a partial pull would mix kept and missing data
                raise StoreError(f"{fs.root} is a partial pull of {m['partial'].get('source', 'another store')}; "
                                 "it is read-only (pull the whole store to add to it)")
            if m["hidden"] and hid.is_v2(m["hidden"]):
                bad = hid.damaged_tails(fs, m["hidden"], m["files"])
                if bad:
                    m = self._roll_back(m, bad)
            self._check_resume(m, meta, want_hidden)
            self.manifest = m
            self._remove_orphans()
            self.hidden = hid.HiddenWriter(fs, m["hidden"]) if m["hidden"] else None
            if self.hidden:
                self.hidden.recover()
            if self.hidden and self.hidden.reopen_partial():
                # the closed store ended in a partial shard: its rows become a tail until the shard is whole
                self._commit({}, reopen=True)
            self._settle([], sync=True)  # the tails found (checked above) on disk: the checkpoint to return to
        else:
            m = Manifest.new(meta)
            self.manifest = m
            self.hidden = None
            if want_hidden:
                m["files"].update(hid.create(fs, want_hidden))
                m["hidden"] = want_hidden
                self.hidden = hid.HiddenWriter(fs, want_hidden)
            fs.write_atomic(MANIFEST, m.dump())
            self._settle([])
        self._committed_keys = self._load_keys(self.manifest)

    def _roll_back(self, m: Manifest, bad: list[str]) -> Manifest:
        """Hidden tails ``bad`` that ``m`` names are missing or damaged: what an operating-system crash
        or power failure leaves of tails not yet flushed. Return to the checkpoint (the last commit
        whose every file was fsynced); the samples committed after it are no longer committed, so a
        resumed run computes them again. Refused (CorruptStoreError) where there is no usable checkpoint."""
        fs, where = self.fs, self.fs.root
        lost = f"hidden tail(s) {', '.join(bad)} named by commit {m['commits']} are missing or damaged"
        try:
            data = fs.read_bytes(CHECKPOINT)
        except FileNotFoundError:
            raise CorruptStoreError(f"{where}: {lost}, and there is no checkpoint to return to; run "
                                    f"`kevo store verify {where}`") from None
        try:
            cp = json.loads(data)
            usable = cp.get("format") == m["format"] and int(cp["commits"]) < m["commits"]
        except (ValueError, TypeError, KeyError, AttributeError):
            usable = False
        if not usable:
            raise CorruptStoreError(f"{where}: {lost}, and its checkpoint {CHECKPOINT} is not a usable earlier "
                                    f"manifest; run `kevo store verify {where}`")
        before = self._load_keys(m)
        fs.write_atomic(MANIFEST, data)  # the commit point of the roll-back
        cp = Manifest.load(fs)
        if cp["hidden"] and hid.damaged_tails(fs, cp["hidden"], cp["files"]):
            raise CorruptStoreError(f"{where}: {lost}, and so are those of the checkpoint (commit "
                                    f"{cp['commits']}); run `kevo store verify {where}`")
        undone = len(before - self._load_keys(cp))
        self.notices.append(
            f"{where}: {lost} (not yet flushed to disk when the system stopped): returned to commit "
            f"{cp['commits']}, the last whose files were all on disk; the {undone} sample(s) committed after it "
            "are no longer in the store and are run again")
        return cp

    def _settle(self, obsolete: list[str], sync: bool = False) -> None:
        """After a commit: the files it made obsolete are deleted once no checkpoint can name them. The
        manifest becomes the checkpoint when all its files are on disk: at once if it names no unflushed
        tail; else its tails are fsynced first, when ``sync`` or when obsolete files are waiting and the
        checkpoint is ``CHECKPOINT_SECONDS`` old. Until then the obsolete files are kept (the
        checkpoint may name them), and deleted right after the next checkpoint."""
        self._doomed.extend(obsolete)
        if self.hidden is not None:
            due = sync or (self._doomed and time.monotonic() - self._checkpoint_at >= CHECKPOINT_SECONDS)
            if due and not self.hidden.durable:
                self.hidden.sync_tails()
            if not self.hidden.durable:
                return
            self.fs.write_atomic(CHECKPOINT, self.manifest.dump())
            self._checkpoint_at = time.monotonic()
        for rel in self._doomed:
            self.fs.remove(rel)
        self._doomed = []

    def _check_resume(self, m: Manifest, meta: dict | None, want_hidden: dict | None) -> None:
        """A resumed store must have been made by the same computation (``Manifest.identity_diff``)."""
        where = self.fs.root
        diff = m.identity_diff(meta or {}, same_dataset=True)
        if diff:
            shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
            raise StoreError(f"{where} was written by another run ({shown}; the store's value first); "
                             "write to a new store instead of mixing runs")
        for sec in META_SECTIONS:
            m.setdefault(sec, {}).update((meta or {}).get(sec) or {})
        if want_hidden is None:
            return  # no hidden arguments: keep what the store has (e.g. `kevo store compact`)
        have = m.get("hidden")
        if have is None:
            raise StoreError(f"{where}: hidden states were not captured in this store but are asked for now")
        for k in HIDDEN_SHAPE_KEYS:
            if have[k] != want_hidden[k]:
                raise StoreError(f"{where}: hidden.{k} is {have[k]!r} in the store, not {want_hidden[k]!r}")

    def _remove_orphans(self) -> None:
        """Delete the files of batches that crashed before their commit (anything the manifest does not name)."""
        named = set(self.manifest["files"])
        for top in ("tables", "derived"):
            for rel in self.fs.walk_files(top):
                if rel not in named:
                    self.fs.remove(rel)
        for name in os.listdir(self.fs.root):
            if ".tmp-" in name:
                self.fs.remove(name)

    def _load_keys(self, m: dict) -> set[str]:
        keys: set[str] = set()
        for t in ("samples", "errors"):
            files = m["tables"][t]["files"]
            if files:
                col = pq.read_table([self.fs.full(f) for f in files], columns=["sample_key"]).column(0)
                keys.update(col.to_pylist())
        return keys

    # ------------------------------------------------------------------ public API
    @property
    def committed_keys(self) -> AbstractSet[str]:
        """sample_key of every committed sample and error: skip these when resuming.

        A live read-only view (no copy per call, so ``key in w.committed_keys`` in a loop is cheap)."""
        return _KeysView(self._committed_keys)

    @property
    def n_samples(self) -> int:
        return self.manifest["tables"]["samples"]["rows"]

    @property
    def n_tokens(self) -> int:
        return self.manifest["next_token_uid"]

    def write_vocab(self, vocab: Any) -> bool:
        """Store the vocabulary once; returns False (and writes nothing) if the store has one."""
        self._usable()
        if self.manifest["tables"]["vocab"]["rows"]:
            return False
        t = sort_by_key(conform(vocab, TABLES["vocab"], "vocab"), "vocab")
        check_unique(t.column("vocab_id"), "vocab.vocab_id")
        self._guarded(lambda: self._commit({"vocab": t}))
        return True

    def write_batch(self, samples: Any = None, tokens: Any = None, layers: Any = None, topk: Any = None,
                    hidden: Any = None, errors: Any = None, capture_counts: dict | None = None) -> None:
        """Append one batch as one atomic commit (see ARCHITECTURE.md for the conventions).

        ``capture_counts``: nested dicts of integers added into the manifest's ``capture`` section in
        the same commit (e.g. ``{"float16_overflow": {"total": 3, "by_layer": {"12": 3}}}``)."""
        self._capture_counts = capture_counts
        self._usable()
        m = self.manifest
        tables: dict[str, pa.Table] = {}
        # --- samples: assign sample_id
        n_s = 0
        sample_keys: pa.Array | None = None
        if samples is not None:
            s = conform(samples, SAMPLES_IN, "samples")
            n_s = s.num_rows
            sample_keys = s.column("sample_key").combine_chunks()
            check_unique(sample_keys, "samples.sample_key")
            self._check_new(sample_keys.to_pylist(), "samples")
            ids = pa.array(np.arange(m["next_sample_id"], m["next_sample_id"] + n_s, dtype=np.int64))
            tables["samples"] = sort_by_key(
                conform(s.append_column(pa.field("sample_id", pa.int64(), nullable=False), ids), TABLES["samples"],
                        "samples"), "samples")
        # --- errors
        if errors is not None:
            e = conform(errors, TABLES["errors"], "errors")
            check_unique(e.column("sample_key"), "errors.sample_key")
            ek = e.column("sample_key").to_pylist()
            self._check_new(ek, "errors")
            if sample_keys is not None and set(ek) & set(sample_keys.to_pylist()):
                raise SchemaError(f"errors: sample {sorted(set(ek) & set(sample_keys.to_pylist()))[0]!r} is both "
                                  "a sample and an error in this batch")
            tables["errors"] = sort_by_key(e, "errors")
        # --- errors being retried: their old rows leave the table in this commit
        retry = getattr(self, "_retry", set())
        batch_keys = set(sample_keys.to_pylist() if sample_keys is not None else []) | set(
            tables["errors"].column("sample_key").to_pylist() if "errors" in tables else [])
        gone = retry & batch_keys
        replace_errors = None
        if gone:
            old_files = list(m["tables"]["errors"]["files"])
            old = pq.read_table([self.fs.full(f) for f in old_files], schema=TABLES["errors"])
            keep = old.filter(pc.invert(pc.is_in(old.column("sample_key"), pa.array(sorted(gone)))))
            parts = [keep] + ([tables["errors"]] if "errors" in tables else [])
            tables["errors"] = sort_by_key(pa.concat_tables(parts), "errors")
            replace_errors = old_files
        # --- tokens: map sample_key -> sample_id, offset token_uid
        n_t = 0
        base = m["next_token_uid"]
        if tokens is not None:
            t = conform(tokens, TOKENS_IN, "tokens")
            n_t = t.num_rows
            t = t.sort_by("token_uid")
            uid = t.column("token_uid").to_numpy()
            if n_t and not np.array_equal(uid, np.arange(n_t)):
                raise SchemaError("tokens.token_uid must be batch-local: exactly 0..n-1 for the batch's n tokens")
            if n_t and sample_keys is None:
                raise SchemaError("tokens given without samples: tokens must belong to samples of the same batch")
            if n_t:
                idx = pc.index_in(t.column("sample_key"), value_set=sample_keys)
                if idx.null_count:
                    bad = t.column("sample_key").filter(pc.is_null(idx))[0].as_py()
                    raise SchemaError(f"tokens.sample_key {bad!r} is not a sample of this batch")
                sid = pc.add(idx.cast(pa.int64()), m["next_sample_id"])
                t = t.set_column(t.schema.get_field_index("token_uid"), TABLES["tokens"].field("token_uid"),
                                 pc.add(t.column("token_uid"), base))
                t = t.drop_columns(["sample_key"]).append_column(TABLES["tokens"].field("sample_id"), sid)
            else:
                t = t.drop_columns(["sample_key"]).append_column(TABLES["tokens"].field("sample_id"),
                                                                 pa.array([], pa.int64()))
            tables["tokens"] = conform(t, TABLES["tokens"], "tokens")
        # --- layers / topk: offset token_uid
        for name, data in (("layers", layers), ("topk", topk)):
            if data is None:
                continue
            x = conform(data, TABLES[name], name)
            if x.num_rows:
                u = x.column("token_uid")
                lo, hi = pc.min(u).as_py(), pc.max(u).as_py()
                if lo < 0 or hi >= n_t:
                    raise SchemaError(f"{name}.token_uid {lo if lo < 0 else hi} is outside the batch's tokens "
                                      f"0..{n_t - 1}")
                x = x.set_column(0, TABLES[name].field("token_uid"), pc.add(u, base))
            tables[name] = sort_by_key(x, name)
        # --- hidden
        h = h_sid = None
        if self.hidden is not None:
            if hidden is None:
                if n_t:
                    raise SchemaError(f"hidden is missing: this store keeps hidden states for every token "
                                      f"({n_t} tokens in the batch)")
            else:
                sec = self.hidden.sec
                h = hid.to_storage(hidden, sec["logical_dtype"], (len(sec["layers"]), sec["hidden_size"]))
                if len(h) != n_t:
                    raise SchemaError(f"hidden has {len(h)} rows but the batch has {n_t} tokens")
                h_sid = tables["tokens"].column("sample_id").to_numpy() if n_t else np.empty(0, np.int64)
        elif hidden is not None:
            raise SchemaError("hidden given, but this store was created without hidden states (hidden_size=None)")
        self._guarded(lambda: self._commit(tables, hidden=h, hidden_sids=h_sid, n_tokens=n_t, n_samples=n_s,
                                           replace_errors=replace_errors))
        if replace_errors is not None:
            self._retry -= gone

    # ------------------------------------------------------------------ commit machinery
    def _usable(self) -> None:
        if self._closed:
            raise StoreError(f"{self.path}: the writer is closed")
        if self._broken is not None:
            raise StoreError(f"{self.path}: an earlier write failed ({self._broken}); reopen the store to resume")

    def retry_errors(self, keys: Any = None) -> list[str]:
        """Let committed errors be written again (all of them, or those in ``keys``): their keys leave
        ``committed_keys``, and each one's old error row leaves the errors table in the very commit that
        writes the sample again (as a sample, or as a new error), so no state holds it twice or not at all."""
        files = self.manifest["tables"]["errors"]["files"]
        have = set(pq.read_table([self.fs.full(f) for f in files], columns=["sample_key"]).column(0).to_pylist()) \
            if files else set()
        chosen = have if keys is None else have & set(keys)
        self._retry = set(chosen)
        self._committed_keys -= self._retry
        return sorted(chosen)

    def _check_new(self, keys: list[str], what: str) -> None:
        dup = [k for k in keys if k in self._committed_keys]
        if dup:
            raise SchemaError(f"{what}: sample_key {dup[0]!r} is already committed in {self.path} "
                              f"(skip writer.committed_keys when resuming)")

    def _guarded(self, fn) -> None:
        try:
            fn()
        except BaseException as e:
            self._broken = e
            raise

    def _commit(self, tables: dict[str, pa.Table], hidden: np.ndarray | None = None,
                hidden_sids: np.ndarray | None = None, n_tokens: int = 0, n_samples: int = 0,
                reopen: bool = False, replace_errors: list[str] | None = None) -> None:
        fs = self.fs
        old = self.manifest
        m = copy.deepcopy(old)
        commit = old["commits"] + 1
        written: list[str] = []
        obsolete: list[str] = []
        staged = False
        try:
            if replace_errors is not None:  # tables["errors"] is the whole new errors table
                for rel in replace_errors:
                    m["files"].pop(rel, None)
                m["tables"]["errors"] = {"files": [], "rows": 0}
                obsolete.extend(replace_errors)
            for name, t in tables.items():
                if t.num_rows == 0:
                    continue
                rel = _part_name(name, commit)
                written.append(rel)
                m["files"][rel] = write_parquet(fs, rel, t, name)
                m["tables"][name]["files"].append(rel)
                m["tables"][name]["rows"] += t.num_rows
            staged = self.hidden is not None and ((hidden is not None and len(hidden)) or reopen)
            if staged:
                if hidden is not None and len(hidden):
                    self.hidden.append(hidden, hidden_sids)
                sec, files, hid_obsolete = self.hidden.stage(commit)
                written.extend(files)
                m["files"].update(files)
                for rel in hid_obsolete:
                    m["files"].pop(rel, None)
                obsolete.extend(hid_obsolete)
                m["hidden"] = sec
            m["next_sample_id"] += n_samples
            m["next_token_uid"] += n_tokens
            _add_counts(m.setdefault("capture", {}), getattr(self, "_capture_counts", None) or {})
            self._capture_counts = None
            m["commits"] = commit
            m["state"] = "open"
            m["updated"] = now_iso()
            fs.write_atomic(MANIFEST, m.dump())  # the commit point
        except BaseException:
            if staged:  # the staged hidden buffer no longer matches the committed state
                self._broken = self._broken or StoreError("a commit failed while writing hidden states")
            for rel in written:  # best effort: these would be orphans anyway
                fs.remove(rel)
            raise
        self.manifest = m
        if staged:
            self.hidden.committed(m["hidden"])
        self._settle(obsolete, sync=reopen)
        for name in ("samples", "errors"):
            if name in tables:
                self._committed_keys.update(tables[name].column("sample_key").to_pylist())

    # ------------------------------------------------------------------ close / compaction
    def close(self, progress: str | None = None) -> None:
        """Compact the per-batch parts, write the last partial hidden chunk, release the lock.
        ``progress``: the description of a bar on stderr over the parts compacted (None: silent)."""
        if self._closed:
            return
        try:
            if self._broken is None:
                self._finalize(progress)
        finally:
            self._closed = True
            self._lock.release()

    def abort(self) -> None:
        """Release the lock without compacting; committed batches stay, the next writer resumes."""
        if not self._closed:
            self._closed = True
            self._lock.release()

    def _finalize(self, progress: str | None = None) -> None:
        from tqdm import tqdm

        fs = self.fs
        old = self.manifest
        m = copy.deepcopy(old)
        commit = old["commits"] + 1
        written: list[str] = []
        obsolete: list[str] = []
        try:
            if self.compact:
                # tables in parallel: Parquet decoding/encoding releases the GIL (layers and topk
                # dominate). Each table touches only its own manifest keys.
                from concurrent.futures import ThreadPoolExecutor

                n_parts = sum(len(self._parts_to_compact(name, m)) for name in TABLES)
                self._bar = tqdm(total=n_parts, unit="part", desc=progress, disable=progress is None or not n_parts,
                                 leave=True)
                with self._bar, ThreadPoolExecutor(max_workers=min(len(TABLES), os.cpu_count() or 1)) as ex:
                    futures = [ex.submit(self._compact_table, name, m, commit) for name in TABLES]
                errors = []
                for f in futures:
                    if f.exception() is not None:
                        errors.append(f.exception())
                        continue
                    new_files, gone = f.result()
                    written.extend(new_files)
                    obsolete.extend(gone)
                if errors:
                    raise errors[0]
            if self.hidden is not None:
                sec, files, gone = self.hidden.stage_close(commit)
                written.extend(files)
                m["files"].update(files)
                m["hidden"] = sec
                obsolete.extend(gone)
            for rel in obsolete:
                m["files"].pop(rel, None)
            m["commits"] = commit
            m["state"] = "closed"
            m["updated"] = now_iso()
            fs.write_atomic(MANIFEST, m.dump())
        except BaseException:
            for rel in written:
                fs.remove(rel)
            raise
        self.manifest = m
        if self.hidden is not None:
            self.hidden.committed(m["hidden"])
        self._settle(obsolete)
        fs.remove(CHECKPOINT)  # closed: every file on disk, nothing to return to

    @staticmethod
    def _parts_to_compact(name: str, m: dict) -> list[str]:
        """The files compaction rewrites: the per-batch parts of an id-keyed table (its compacted data
        files stay), every file of a small table; none where there is one file or fewer."""
        files = m["tables"][name]["files"]
        parts = [f for f in files if os.path.basename(f).startswith("part-")] if name in _MONOTONE else list(files)
        return parts if len(parts) > 1 else []

    def _compact_table(self, name: str, m: dict, commit: int) -> tuple[list[str], list[str]]:
        """Replace the table's per-batch parts by files of up to FILE_ROWS rows, sorted by the key.

        Returns (new files, files they replace). Parts of the id-keyed tables are already in key
        order when taken in commit order, so they are streamed; small tables are re-sorted whole."""
        entry = m["tables"][name]
        parts = self._parts_to_compact(name, m)
        if not parts:
            return [], []
        keep = [f for f in entry["files"] if f not in parts]
        schema = TABLES[name]
        opts = parquet_options(schema, name)
        new_files: list[str] = []
        writer: pq.ParquetWriter | None = None
        rows_in_file = 0

        def write(t: pa.Table) -> None:
            nonlocal writer, rows_in_file
            if writer is None:
                rel = _part_name(name, commit, "data", len(new_files))
                self.fs.makedirs(os.path.dirname(rel))
                new_files.append(rel)
                writer = pq.ParquetWriter(self.fs.full(rel), schema, **opts)
            writer.write_table(t, row_group_size=ROW_GROUP_ROWS)
            rows_in_file += t.num_rows
            if rows_in_file >= FILE_ROWS:
                writer.close()
                writer, rows_in_file = None, 0

        try:
            if name in _MONOTONE:
                pending: list[pa.Table] = []
                n_pending = 0
                for p in parts:
                    pending.append(self._read_part(p, m, schema))
                    self._bar.update(1)
                    n_pending += pending[-1].num_rows
                    if n_pending >= ROW_GROUP_ROWS:
                        write(pa.concat_tables(pending).combine_chunks())
                        pending, n_pending = [], 0
                if pending:
                    write(pa.concat_tables(pending).combine_chunks())
            else:
                write(sort_by_key(pa.concat_tables([self._read_part(p, m, schema) for p in parts]), name))
                self._bar.update(len(parts))
        finally:
            if writer is not None:
                writer.close()
        for rel in new_files:
            self.fs.fsync_file(rel)
            sha, size = self.fs.sha256(rel)
            m["files"][rel] = {"sha256": sha, "size": size,
                               "rows": pq.ParquetFile(self.fs.full(rel)).metadata.num_rows}
        entry["files"] = keep + new_files
        return new_files, parts

    def _read_part(self, rel: str, m: dict, schema: pa.Schema) -> pa.Table:
        """A committed part, checked against its manifest sha256 before it is rewritten: compaction
        must not give a damaged part a fresh, valid checksum (one read: hashed, then parsed in memory)."""
        data = self.fs.read_bytes(rel)
        ent = m["files"].get(rel) or {}
        if ent.get("sha256") and hashlib.sha256(data).hexdigest() != ent["sha256"]:
            raise CorruptStoreError(f"{self.fs.root}: {rel} fails its sha256 (damaged since it was committed); "
                                    f"compaction stopped, nothing was changed: run `kevo store verify {self.fs.root}`")
        return pq.read_table(pa.BufferReader(data), schema=schema)

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _add_counts(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict):
            _add_counts(dst.setdefault(k, {}), v)
        else:
            dst[k] = int(dst.get(k, 0)) + int(v)


def _committed_derived(fs: LocalFS, m: Manifest, name: str) -> tuple[Any, dict[str, Any]]:
    """The committed version of derived table ``name`` (None if none) and its params, each file
    checked against the manifest's sha256 first."""
    entry = (m.get("derived") or {}).get(name)
    if not entry:
        return None, {}
    parts = []
    for rel in entry.get("files", []):
        with fs.open(rel, "rb") as f:
            data = f.read()
        sha = hashlib.sha256(data).hexdigest()
        if sha != m["files"][rel]["sha256"]:
            raise CorruptStoreError(f"{fs.full(rel)}: sha256 {sha[:12]}... differs from the manifest's "
                             f"{m['files'][rel]['sha256'][:12]}...: the derived table {name!r} is damaged; "
                             f"`kevo store verify` it")
        parts.append(pq.read_table(pa.BufferReader(data)))
    return (pa.concat_tables(parts) if parts else None), dict(entry.get("params") or {})


def write_derived_table(path: str | os.PathLike, name: str, table: Any, params: dict[str, Any] | None = None) -> None:
    """Store a result computed from the store (e.g. ``embeddings``) as table ``name``, replacing any earlier one.

    Known names (schema.DERIVED_TABLES) are checked against their schema; other names keep the
    table's own schema. ``params`` (the parameters that produced it) go to the manifest's "derived".
    """
    write_derived_tables(path, {name: (table, params)})


def replace_run(new: pa.Table, run: str, params: dict[str, Any], keep) -> Any:
    """An ``update`` for :func:`write_derived_tables` that adds one run to a shared derived table:
    the committed rows where ``keep(table)`` (a boolean pyarrow expression result) is true stay,
    ``new`` is appended, and ``params["runs"][run]`` records this run's parameters next to the
    other runs'. ``kevo embed`` (one embedding_id) and ``kevo trace`` (one run name) use it."""

    def update(old, old_params):
        merged = {"runs": {**(old_params.get("runs") or {}), run: params}}
        if old is None or not old.num_rows:
            return new, merged
        old = old.cast(new.schema) if old.schema != new.schema else old
        kept = old.filter(keep(old))
        return (pa.concat_tables([kept, new]) if kept.num_rows else new), merged

    return update


def write_derived_tables(path: str | os.PathLike, tables: dict[str, Any]) -> None:
    """Store several derived tables ``{name: (table, params)}`` in one commit: every file is written
    and fsynced first, then one manifest replacement names them all, so a crash or an error leaves
    either all of them (each replacing its earlier version) or none (the store as it was).

    A value may instead be a function ``update(current, current_params) -> (table, params)``, called
    under the store's lock with the table's committed version (a pyarrow Table, checked against
    the manifest's sha256; None when there is none) and its params: a command that adds its rows to
    a shared table (``kevo embed``, ``kevo trace``) merges with what is committed at that moment,
    so two such commands never drop each other's rows."""
    from .tables import to_table

    for name in tables:
        if not name.isidentifier() or name in TABLES:
            raise StoreError(f"derived table name {name!r} must be an identifier other than {list(TABLES)}")
    if is_url(path):  # stores at a URL are read-only
        raise StoreError(f"{path} is a remote store, read-only: `kevo store pull` it and write the "
                         f"{', '.join(repr(n) for n in tables)} table(s) into the local copy")
    fs = LocalFS(path)
    m = Manifest.load(fs)
    lock = StoreLock(fs, purpose=f"write_derived_table {', '.join(tables)}")
    lock.acquire()
    written: list[str] = []
    try:
        m = Manifest.load(fs)
        named = set(m["files"])  # files of an earlier derived write that died before its commit
        for rel in fs.walk_files("derived"):
            if rel not in named:
                fs.remove(rel)
        commit = m["commits"] + 1
        obsolete: list[str] = []
        try:
            for name, value in tables.items():
                table, params = value(*_committed_derived(fs, m, name)) if callable(value) else value
                t = conform(table, DERIVED_TABLES[name], name) if name in DERIVED_TABLES else to_table(table, name)
                if name in KEYS:
                    t = sort_by_key(t, name)
                rel = f"derived/{name}/{name}-{commit:06d}.parquet"
                fs.makedirs(f"derived/{name}")
                written.append(rel)
                pq.write_table(t, fs.full(rel), row_group_size=ROW_GROUP_ROWS, **parquet_options(t.schema, name))
                fs.fsync_file(rel)
                sha, size = fs.sha256(rel)
                old = m.setdefault("derived", {}).get(name)
                m["derived"][name] = {"files": [rel], "rows": t.num_rows, "params": params or {}, "created": now_iso()}
                m["files"][rel] = {"sha256": sha, "size": size, "rows": t.num_rows}
                for f in (old or {}).get("files", []):
                    if f != rel:
                        m["files"].pop(f, None)
                        obsolete.append(f)
            m["commits"] = commit
            m["updated"] = now_iso()
            fs.write_atomic(MANIFEST, m.dump())
        except BaseException:
            for rel in written:
                if fs.exists(rel):
                    fs.remove(rel)
            raise
        if obsolete and m.get("hidden") and hid.is_v2(m["hidden"]):
            # an open store's checkpoint may name the replaced files: this commit becomes the checkpoint
            for rel in m["hidden"].get("tails") or []:
                fs.fsync_file(rel)
            fs.write_atomic(CHECKPOINT, m.dump())
        for f in obsolete:
            fs.remove(f)
    finally:
        lock.release()
