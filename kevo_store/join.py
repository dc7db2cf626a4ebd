"""Join part stores (one per ingest rank) into one store, in a given sample order.

A multi-process ingest writes one part store per rank; rank 0 then calls :func:`join_parts` with
the dataset's keys in item order. The joined store is written with :class:`StoreWriter`, so its
format is the writer's, and samples are committed in that order: sample_id and token_uid come out
exactly as a one-process run over the same items would give them. Samples are copied verbatim
(hidden states bit for bit); only sample_id and token_uid are renumbered.

Resumable like any ingest: keys already committed to the target are skipped, so a join that crashed
can simply be run again. A key found in several parts (a re-run with a different number of ranks)
is taken from the first part that has it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import hidden as hid
from .errors import CorruptStoreError, StoreError
from .fs import LocalFS
from .manifest import Manifest
from .writer import StoreWriter


@dataclass
class JoinStats:
    parts: int
    samples: int
    errors: int
    tokens: int
    skipped: int

    def __str__(self) -> str:
        return (f"{self.samples} samples, {self.errors} errors, {self.tokens} tokens from {self.parts} parts"
                + (f" ({self.skipped} already joined)" if self.skipped else ""))


class _Part:
    """Read-only view of one committed part store (what its manifest names, nothing else)."""

    def __init__(self, path: str):
        self.path = path
        self.fs = LocalFS(path)
        self.m = Manifest.load(self.fs)
        self.samples = self.table("samples")
        self.errors = self.table("errors")
        self.hidden = hid.HiddenReader(self.fs, self.m["hidden"]) if self.m.get("hidden") else None
        self.sample_id_of = dict(zip(self.samples.column("sample_key").to_pylist(),
                                     self.samples.column("sample_id").to_pylist()))
        self.error_row_of = {k: i for i, k in enumerate(self.errors.column("sample_key").to_pylist())}
        self._ntok: dict[int, int] | None = None

    def n_tokens(self, key: str) -> int:
        """Token rows of the sample ``key`` (to size commits)."""
        if self._ntok is None:
            files = self.files("tokens")
            sid = (pq.read_table(files, columns=["sample_id"], page_checksum_verification=True).column(0).to_numpy()
                   if files
                   else np.zeros(0, np.int64))
            ids, counts = np.unique(sid, return_counts=True)
            self._ntok = dict(zip(ids.tolist(), counts.tolist()))
        return int(self._ntok.get(self.sample_id_of[key], 0))

    def files(self, table: str) -> list[str]:
        return [self.fs.full(f) for f in self.m["tables"][table]["files"]]

    def table(self, name: str, filters: Any = None) -> pa.Table:
        from .schema import TABLES

        files = self.files(name)
        if not files:
            return TABLES[name].empty_table()
        try:
            return pq.read_table(files, filters=filters, schema=TABLES[name], page_checksum_verification=True)
        except (OSError, pa.ArrowException) as e:  # a page that fails its CRC, a damaged footer
            raise CorruptStoreError(f"{self.fs.root}: table '{name}' cannot be read ({str(e).splitlines()[0]}); "
                                    f"run `kevo store verify {self.fs.root}`") from None

    def token_rows(self, name: str, lo: int, hi: int, uids: np.ndarray) -> pa.Table:
        t = self.table(name, filters=[("token_uid", ">=", lo), ("token_uid", "<=", hi)])
        return t.filter(pc.is_in(t.column("token_uid"), pa.array(uids)))


def join_parts(parts: Sequence[str | os.PathLike], out: str | os.PathLike, keys: Sequence[str] | None = None, *,
               samples_per_commit: int = 64, tokens_per_commit: int = 1 << 16, check: bool = True,
               meta: dict[str, Any] | None = None, progress: str | None = None) -> JoinStats:
    """Copy every sample and error of ``parts`` into the store ``out``, ordered by ``keys``.

    Keys of ``keys`` that no part holds are ignored; keys the parts hold that ``keys`` lacks come
    last, in part order. Commits are made every ``samples_per_commit`` samples or
    ``tokens_per_commit`` tokens, whichever comes first.

    This is also the implementation of ``kevo store merge``: merge applies the same policy
    (``Manifest.identity_diff``) itself, naming every difference and honouring ``--force``, then
    calls this with ``check=False`` and ``meta`` (the merged manifest sections, e.g. several datasets).
    ``progress``: the description of a bar on stderr over the samples copied (None: silent).
    """
    ps = [_Part(str(p)) for p in parts]
    if not ps:
        raise StoreError(f"join into {out}: no part stores given")
    first = ps[0].m
    for p in ps[1:] if check else []:
        diff = first.identity_diff(p.m, same_dataset=True)
        if diff:
            secs = ", ".join(f"'{s}'" for s in dict.fromkeys(d.split(".", 1)[0] for d in diff))
            raise StoreError(f"cannot join {p.path} and {ps[0].path}: their {secs} sections differ "
                             f"({'; '.join(diff[:4])})")
        if first.hidden_diff(p.m.get("hidden")):
            raise StoreError(f"cannot join {p.path} and {ps[0].path}: they keep hidden states of different "
                             f"layers or shapes ({'; '.join(first.hidden_diff(p.m.get('hidden')))})")

    where: dict[str, tuple[int, str]] = {}
    for i, p in enumerate(ps):
        for k in p.sample_id_of:
            where.setdefault(k, (i, "sample"))
        for k in p.error_row_of:
            where.setdefault(k, (i, "error"))
    order = [k for k in dict.fromkeys(keys or []) if k in where]
    seen = set(order)
    order += [k for k in where if k not in seen]

    hsec = first.get("hidden")
    meta = meta or first.meta
    stats = JoinStats(parts=len(ps), samples=0, errors=0, tokens=0, skipped=0)
    with StoreWriter(out, meta=meta, hidden_size=hsec["hidden_size"] if hsec else None,
                     hidden_layers=list(hsec["layers"]) if hsec else None,
                     hidden_dtype=hsec["logical_dtype"] if hsec else "float16") as w:
        done = w.committed_keys
        todo = [k for k in order if k not in done]
        stats.skipped = len(order) - len(todo)
        vocab = ps[0].table("vocab")
        if vocab.num_rows:
            w.write_vocab(vocab)
        group: list[str] = []
        n_tok = 0
        from tqdm import tqdm

        with tqdm(total=len(order), initial=stats.skipped, unit="sample", desc=progress,
                  disable=progress is None, leave=True) as bar:
            for k in todo:
                group.append(k)
                i, kind = where[k]
                if kind == "sample":
                    n_tok += ps[i].n_tokens(k)
                if len(group) >= samples_per_commit or n_tok >= tokens_per_commit:
                    _copy_group(w, ps, where, group, stats)
                    bar.update(len(group))
                    group, n_tok = [], 0
            if group:
                _copy_group(w, ps, where, group, stats)
                bar.update(len(group))
        if progress is not None:
            w.close(progress=f"{progress}: compact")
    return stats


def _copy_group(w: StoreWriter, ps: list[_Part], where: dict, group: list[str], stats: JoinStats) -> None:
    # one read per part and table for the whole group, then the rows are laid out in key order
    by_part: dict[int, list[str]] = {}
    for k in group:
        i, kind = where[k]
        if kind == "sample":
            by_part.setdefault(i, []).append(k)
    part_tokens: dict[int, pa.Table] = {}
    part_hidden: dict[int, np.ndarray] = {}
    for i, keys in by_part.items():
        p = ps[i]
        sids = [p.sample_id_of[k] for k in keys]
        t = p.table("tokens", filters=[("sample_id", "in", sids)]).sort_by("token_uid")
        part_tokens[i] = t
        if p.hidden is not None and t.num_rows:
            h = p.hidden.read(t.column("token_uid").to_numpy())
            if p.hidden.sec["logical_dtype"] == "bfloat16":
                h = hid.float32_to_bf16_bits(h)  # exact: the values are bfloat16 numbers
            part_hidden[i] = h

    samples, tokens, layers, topk, hidden, errors = [], [], [], [], [], []
    offset = 0
    remap: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}  # part -> (old uids, new uids)
    for k in group:
        i, kind = where[k]
        p = ps[i]
        if kind == "error":
            errors.append(p.errors.slice(p.error_row_of[k], 1))
            continue
        sid = p.sample_id_of[k]
        samples.append(p.samples.filter(pc.equal(p.samples.column("sample_id"), sid)).drop_columns(["sample_id"]))
        pt = part_tokens[i]
        rows = np.flatnonzero(pt.column("sample_id").to_numpy() == sid)
        t = pt.take(pa.array(rows, pa.int64()))
        old = t.column("token_uid").to_numpy()
        new = np.arange(offset, offset + len(old), dtype=np.int64)
        offset += len(old)
        remap.setdefault(i, ([], []))[0].append(old)
        remap[i][1].append(new)
        t = t.set_column(t.schema.get_field_index("token_uid"), "token_uid", pa.array(new))
        tokens.append(t.drop_columns(["sample_id"]).append_column("sample_key", pa.array([k] * len(old), pa.string())))
        if i in part_hidden:
            hidden.append(part_hidden[i][rows])
    for i, (olds, news) in remap.items():
        old = np.concatenate(olds)
        new = np.concatenate(news)
        if not len(old):
            continue
        srt = np.argsort(old)
        old_s, new_s = old[srt], new[srt]
        for name, acc in (("layers", layers), ("topk", topk)):
            t = ps[i].token_rows(name, int(old_s[0]), int(old_s[-1]), old_s)
            if t.num_rows:
                u = t.column("token_uid").to_numpy()
                acc.append(t.set_column(0, "token_uid", pa.array(new_s[np.searchsorted(old_s, u)])))

    def cat(ts):
        return pa.concat_tables(ts) if ts else None

    w.write_batch(samples=cat(samples), tokens=cat(tokens), layers=cat(layers), topk=cat(topk),
                  hidden=np.concatenate(hidden) if hidden else None, errors=cat(errors))
    stats.samples += len(samples)
    stats.errors += len(errors)
    stats.tokens += offset
