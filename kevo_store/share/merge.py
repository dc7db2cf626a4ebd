"""``kevo store merge A B … --out C``: several stores into one, sample_id and token_uid renumbered.

The stores may be the per-node parts of one ingest (each node ingesting a share of the items, e.g.
with ``--ids``, ``--image-ids`` or ``--limit``, from its own copy of the model and with its own
batch size) or runs over different datasets with the same model. Samples are copied verbatim in
store order (A's, then B's, …; hidden states bit for bit) through the writer, so the result is
exactly what one ingest of A's inputs followed by B's would have written, and an interrupted merge
resumes when run again.

The copying is :func:`kevo_store.join.join_parts` (the runner's join of rank parts: one
implementation for both); this module decides whether the stores may be merged at all, with the
policy resume and join apply (``Manifest.identity_diff``). Refused unless ``force``: a different
model (weights fingerprint), lens, generation or capture settings, or the same dataset with other
settings or annotation files (numbers computed under different settings do not belong in one
table); paths, model names and batch sizes are provenance and may differ. Refused always: hidden
states of different shapes or dtypes and different vocabularies, which no flag can reconcile, and
stores read from a URL (pull them first). A sample key found in two stores is refused unless
``force`` (then the first store's sample is kept).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from kevo_store.errors import KevoError


class MergeError(KevoError):
    """Stores that cannot be merged (as asked)."""


def _vocab_digest(store) -> str:
    t = store.arrow("SELECT vocab_id, piece, text FROM vocab ORDER BY vocab_id")
    h = hashlib.sha256()
    for col in t.columns:
        h.update(repr(col.to_pylist()).encode())
    return h.hexdigest()


def compatibility(paths: Sequence[str | os.PathLike]) -> tuple[list[str], list[str], list[dict]]:
    """(forcible differences, hard differences, manifests) between the first store and each other.

    Forcible: what ``Manifest.identity_diff`` finds (the policy resume and join apply too), so
    stores of the same weights in other directories, or made with another batch size, merge.
    """
    from kevo_store.reader import open_store

    soft: list[str] = []
    hard: list[str] = []
    manifests: list[dict] = []
    first = None
    first_vocab = None
    for p in paths:
        with open_store(p) as s:
            m = s.manifest
            if m.partial:
                hard.append(f"{p} is a partial pull (it lacks "
                            f"{', '.join(sorted(m.omitted_tables)) or 'some hidden layers'})")
            vocab = _vocab_digest(s) if s.rows("vocab") else None
        manifests.append(m)
        if first is None:
            first, first_vocab = (p, m), vocab
            continue
        p0, m0 = first
        # named in the order their values are printed: the first store's, then this one's
        soft += [f"{p0} vs {p}: {d}" for d in m0.identity_diff(m)]
        hard += [f"{p0} vs {p}: {d} (hidden arrays of different shapes)" for d in m0.hidden_diff(m.get("hidden"))]
        if vocab is not None and first_vocab is not None and vocab != first_vocab:
            hard.append(f"{p0} vs {p}: the vocab tables differ (different tokenizers)")
    return soft, hard, manifests


def merged_meta(paths: Sequence[str | os.PathLike], manifests: list[dict], forced: list[str]) -> dict:
    """Manifest sections of the merged store: the first store's, datasets combined, provenance kept."""
    from kevo_store.manifest import META_SECTIONS

    meta = {sec: dict(manifests[0].get(sec) or {}) for sec in META_SECTIONS}
    datasets = [m.get("dataset") or {} for m in manifests]
    if any(d != datasets[0] for d in datasets[1:]):
        names = list(dict.fromkeys(str(d.get("name", "?")) for d in datasets))
        meta["dataset"] = {"name": "+".join(names), "datasets": datasets}
    meta["dataset"]["merged_from"] = [
        {"store": os.path.abspath(p), "dataset": (m.get("dataset") or {}).get("name"),
         "samples": m["tables"]["samples"]["rows"], "errors": m["tables"]["errors"]["rows"]}
        for p, m in zip(paths, manifests)
    ]
    if forced:
        meta["capture"]["merge_forced"] = forced
    return meta


def merge_stores(stores: Sequence[str | os.PathLike], out: str | os.PathLike, *, force: bool = False,
                 samples_per_commit: int = 64, progress: bool = False):
    """Merge ``stores`` (local paths) into the new or resumed store ``out``; returns JoinStats."""
    from kevo_store.fs import is_url
    from kevo_store.join import join_parts
    from kevo_store.reader import open_store

    if len(stores) < 2:
        raise MergeError("merge needs at least two stores")
    for p in stores:
        if is_url(p):
            raise MergeError(f"{p}: merge reads local stores; `kevo store pull` it first")
    out_p = Path(out).absolute()
    for p in stores:
        if Path(p).absolute() == out_p:
            raise MergeError(f"--out {out} is one of the inputs; merge into a new store")
    if (out_p / "manifest.json").exists():
        # only an interrupted merge of these very stores is resumed; never append to another store
        with open_store(out_p) as o:
            was = [d.get("store") for d in (o.manifest.get("dataset") or {}).get("merged_from", [])]
        if was != [os.path.abspath(p) for p in stores]:
            raise MergeError(f"--out {out} already exists and is not an interrupted merge of these stores; "
                             "merge into a new store")
    soft, hard, manifests = compatibility(stores)
    if hard:
        raise MergeError("cannot merge: " + "; ".join(hard))
    if soft and not force:
        shown = "; ".join(soft[:6]) + (f"; and {len(soft) - 6} more" if len(soft) > 6 else "")
        raise MergeError(f"the stores were made with different settings: {shown}. "
                         "Numbers computed under different settings do not belong in one table; "
                         "pass --force to merge anyway (the differences are recorded in the manifest)")
    keys_seen: dict[str, str] = {}
    dups: list[str] = []
    order: list[str] = []
    for p in stores:
        with open_store(p) as s:
            ks = s.arrow("SELECT sample_key FROM samples ORDER BY sample_id").column(0).to_pylist()
            ks += s.arrow("SELECT sample_key FROM errors").column(0).to_pylist()
        for k in ks:
            if k in keys_seen:
                dups.append(f"{k!r} (in {keys_seen[k]} and {p})")
            else:
                keys_seen[k] = os.fspath(p)
                order.append(k)
    if dups and not force:
        raise MergeError(f"{len(dups)} sample key(s) are in more than one store, e.g. {dups[0]}; the inputs "
                         "overlap. Pass --force to keep the first store's copy")
    meta = merged_meta(stores, manifests, soft)
    stats = join_parts([os.fspath(p) for p in stores], out, keys=order, check=False, meta=meta,
                       samples_per_commit=samples_per_commit,
                       progress=f"merge -> {Path(out).name}" if progress else None)
    carry_derived(stores, out, keys_seen)
    return stats


_UID_RANK = ("SELECT s.sample_key, t.token_uid, row_number() OVER (PARTITION BY t.sample_id ORDER BY t.token_uid) "
             "AS r FROM tokens t JOIN samples s ON s.sample_id = t.sample_id")


def carry_derived(stores: Sequence[str | os.PathLike], out: str | os.PathLike, source_of: dict[str, str]) -> None:
    """Derived tables keyed by token_uid (``embeddings``) follow their tokens into the merged store.

    A sample's tokens keep their order in the merge, so (sample_key, rank within the sample) maps an
    input's token_uid to the merged one. Only rows of samples the merge took from that input are kept
    (with --force and overlapping keys, the first store's copy). When several inputs have the same
    derived table, each input's ids are prefixed with its alias, as their coordinates are not comparable."""
    import pyarrow as pa

    from kevo_store.reader import alias_for, open_store
    from kevo_store.writer import write_derived_table

    found: dict[str, list[tuple[str, object, dict]]] = {}
    for p in stores:
        with open_store(p) as s:
            for name, d in (s.manifest.get("derived") or {}).items():
                t = s.arrow(f'SELECT * FROM "{name}"')
                if "token_uid" not in t.column_names:
                    continue
                found.setdefault(name, []).append((os.fspath(p), (t, s.arrow(_UID_RANK)), d.get("params") or {}))
    if not found:
        return
    with open_store(out) as o:
        new = o.arrow(_UID_RANK).to_pandas().set_index(["sample_key", "r"])["token_uid"]
    for name, items in found.items():
        tables, params = [], []
        for p, (t, ranks), prm in items:
            rk = ranks.to_pandas()
            rk = rk[rk["sample_key"].map(source_of).eq(p)]  # the samples the merge took from this input
            idx = dict(zip(rk["token_uid"], zip(rk["sample_key"], rk["r"])))
            old = t.column("token_uid").to_pylist()
            keep = [i for i, u in enumerate(old) if u in idx]
            t = t.take(pa.array(keep, pa.int64()))
            uids = [int(new.loc[idx[old[i]]]) for i in keep]
            t = t.set_column(t.schema.get_field_index("token_uid"), "token_uid", pa.array(uids, pa.int64()))
            if len(items) > 1 and "embedding_id" in t.column_names:
                ids = [f"{alias_for(p)}:{v}" for v in t.column("embedding_id").to_pylist()]
                t = t.set_column(t.schema.get_field_index("embedding_id"), "embedding_id", pa.array(ids))
            tables.append(t)
            params.append({"store": os.path.abspath(p), "params": prm})
        write_derived_table(out, name, pa.concat_tables(tables, promote_options="default"),
                            {"merged_from": params})
