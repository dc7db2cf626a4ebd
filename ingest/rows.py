"""One sample's capture -> rows of the store's tables (samples, tokens, layers, topk) and hidden states.

Token uids are batch-local (0..n-1 over the batch, in order); the writer offsets them. Layers and
top-k rows come out in the tables' key order (token_uid, lens, layer[, rank]).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ingest.datasets.base import Dataset, DatasetItem
from ingest.spans import pieces, token_char_spans
from kevo_store import schema
from kevo_store.units import json_default


@dataclass
class Prepared:
    """An item ready for capture: its image decoded and its prompt templated."""

    item: DatasetItem
    image: Any
    image_sha256: str | None
    prompt_text: str


@dataclass
class BatchRows:
    """The rows of one batch, accumulated sample by sample, written in one commit."""

    samples: list[dict] = field(default_factory=list)
    tokens: list[pa.Table] = field(default_factory=list)
    layers: list[pa.Table] = field(default_factory=list)
    topk: list[pa.Table] = field(default_factory=list)
    hidden: list[np.ndarray] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    n_tokens: int = 0
    n_generated: int = 0
    first_traceback: str | None = None
    fp16_overflow: dict[int, int] = field(default_factory=dict)  # layer -> values stored as inf


class LabelError(Exception):
    """The dataset's labeler failed for a sample (the cause is chained)."""
    pass


def add_sample(rows: BatchRows, p: Prepared, cap, adapter, dataset: Dataset) -> None:
    """Turn one SampleCapture into rows (batch-local token_uids continue from the rows so far)."""
    item = p.item
    tok = adapter.tokenizer
    gen_ids = np.asarray(cap.generated_ids, dtype=np.int64)
    response = cap.response
    role = np.asarray(cap.role).astype(str)
    token_id = np.asarray(cap.token_id, dtype=np.int32)
    step = np.asarray(cap.step, dtype=np.int32)
    position = np.asarray(cap.position, dtype=np.int32)
    n = len(token_id)
    is_gen = role == "generated"
    char_start = np.full(n, -1, np.int32)
    char_end = np.full(n, -1, np.int32)
    starts, ends = token_char_spans(tok, gen_ids.tolist(), response)
    gen_rows = np.flatnonzero(is_gen)
    # generated rows are in step order; step s is the s-th generated token
    char_start[gen_rows] = np.asarray(starts, np.int32)[step[gen_rows]]
    char_end[gen_rows] = np.asarray(ends, np.int32)[step[gen_rows]]
    piece = pieces(tok, token_id.tolist())

    cols: dict[str, Any] = {
        "token_uid": np.arange(rows.n_tokens, rows.n_tokens + n, dtype=np.int64),
        "sample_key": [item.key] * n,
        "step": step,
        "position": position,
        "role": role.tolist(),
        "token_id": token_id,
        "piece": piece,
        "char_start": pa.array(char_start, mask=~is_gen),
        "char_end": pa.array(char_end, mask=~is_gen),
    }
    # the model's greedy choice agrees with the token: by construction when it generated the response
    match = np.ones(n, bool) if getattr(cap, "greedy_match", None) is None else np.asarray(cap.greedy_match, bool)
    cols["greedy_match"] = pa.array(match, pa.bool_(), mask=~is_gen)
    for name in ("patch_row", "patch_col"):  # -1 = not an image token / no grid: null
        v = np.asarray(getattr(cap, name), dtype=np.int16)
        cols[name] = pa.array(v, pa.int16(), mask=v < 0)

    if getattr(dataset, "prompt_labeler", None) is not None:
        try:
            flagged = dataset.prompt_labeler(item, np.asarray(cap.input_ids).tolist(), adapter)
        except Exception as e:
            raise LabelError(str(e)) from e
        if flagged is not None:
            flagged = set(int(x) for x in flagged)
            cols["is_constraint"] = pa.array([None if g else int(q) in flagged for g, q in zip(is_gen, position)],
                                             pa.bool_())

    metrics = None
    if dataset.labeler is not None:
        gen_table = pa.table({
            "step": pa.array(step[gen_rows], pa.int32()),
            "token_id": pa.array(token_id[gen_rows], pa.int32()),
            "piece": pa.array([piece[i] for i in gen_rows], pa.string()),
            "char_start": pa.array(char_start[gen_rows], pa.int32()),
            "char_end": pa.array(char_end[gen_rows], pa.int32()),
        })
        try:
            extra, metrics = dataset.labeler(item, response, gen_table)
            for name, values in (extra or {}).items():
                if name not in schema.TOKENS.names or name in cols:
                    raise ValueError(f"labeler returned column {name!r}, which is not a labelable tokens column")
                values = list(values)
                if len(values) != len(gen_rows):
                    raise ValueError(f"labeler column {name!r} has {len(values)} values for {len(gen_rows)} tokens")
                full = [None] * n
                for r, v in zip(gen_rows.tolist(), values):
                    full[r] = v
                cols[name] = pa.array(full, schema.TOKENS.field(name).type)
            if metrics is not None:
                metrics = json.dumps(metrics, sort_keys=True, default=json_default)
        except Exception as e:
            raise LabelError(str(e)) from e

    tokens = _table(cols, schema.TOKENS, exclude=("sample_id",), extra=[pa.field("sample_key", pa.string())])
    uids = cols["token_uid"]
    rows.layers.append(_layers_table(cap.lens, uids))
    t = _topk_table(cap.lens, uids)
    if t is not None:
        rows.topk.append(t)
    if cap.hidden is not None:
        rows.hidden.append(np.asarray(cap.hidden))
    over = getattr(cap, "fp16_overflow", None)
    if over is not None:
        for layer, n_over in zip(cap.hidden_layers, np.asarray(over).tolist()):
            rows.fp16_overflow[layer] = rows.fp16_overflow.get(layer, 0) + int(n_over)
    rows.tokens.append(tokens)
    rows.samples.append({
        "sample_key": item.key,
        "dataset": item.dataset,
        "item_id": item.item_id,
        "image_id": item.image_name,
        "image_sha256": p.image_sha256,
        "prompt": item.prompt,
        "prompt_text": p.prompt_text,
        "response": response,
        "n_prompt_tokens": int(cap.n_prompt_tokens),
        "n_generated": int(len(gen_ids)),
        "stop_reason": cap.stop_reason,
        "annotations": json.dumps(item.annotations, sort_keys=True, default=json_default),
        "metrics": metrics,
        "mode": getattr(cap, "mode", "generated"),
    })
    rows.n_tokens += n
    rows.n_generated += int(len(gen_ids))


def _table(cols: dict, sch: pa.Schema, exclude=(), extra=()) -> pa.Table:
    fields = [f for f in sch if f.name not in exclude] + list(extra)
    n = len(next(iter(cols.values())))
    arrays = []
    for f in fields:
        if f.name in cols:
            v = cols[f.name]
            arrays.append(v.cast(f.type) if isinstance(v, pa.Array) else pa.array(v, f.type))
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


LENS_COLUMNS = ("p_out", "logit_out", "rank_out", "top1_id", "top1_prob", "entropy", "js_prev", "js_final",
                "kl_final", "js_dola")


def _layers_table(lens: dict, uids: np.ndarray) -> pa.Table:
    """(token, lens, layer) rows in the table's key order, from {mode: ingest.lens.LensResult}."""
    modes = sorted(lens)  # key order: 'final_norm' < 'raw'
    n = len(uids)
    n_l = lens[modes[0]].p_out.shape[1]
    shape = (n, len(modes), n_l)
    layer = np.broadcast_to(np.arange(n_l, dtype=np.int16)[None, None, :], shape).ravel()
    cols: dict[str, Any] = {
        "token_uid": np.broadcast_to(uids[:, None, None], shape).ravel(),
        "lens": pa.array(np.broadcast_to(np.array(modes, dtype=object)[None, :, None], shape).ravel(), pa.string()),
        "layer": layer,
    }
    for c in LENS_COLUMNS:
        values = [getattr(lens[m], c) for m in modes]
        if any(v is None for v in values):
            continue  # js_dola unless --dola: null
        ft = schema.LAYERS.field(c).type
        stacked = np.stack([np.asarray(v) for v in values], axis=1).ravel()
        if pa.types.is_floating(ft):
            stacked = stacked.astype(np.float32)
            # NaN marks "no value" (js_prev/js_dola at layer 0): store null
            cols[c] = pa.array(stacked, ft, mask=np.isnan(stacked)) if schema.LAYERS.field(c).nullable \
                else pa.array(stacked, ft)
        else:
            cols[c] = pa.array(stacked.astype(ft.to_pandas_dtype()), ft)
    return _table(cols, schema.LAYERS)


def _topk_table(lens: dict, uids: np.ndarray) -> pa.Table | None:
    """(token, lens, layer, rank) rows in the table's key order."""
    modes = sorted(lens)
    ids = np.stack([np.asarray(lens[m].topk_ids) for m in modes], axis=1)  # (n, M, L+1, k)
    probs = np.stack([np.asarray(lens[m].topk_probs) for m in modes], axis=1)
    shape = ids.shape
    k = shape[-1]
    if k == 0 or ids.size == 0:
        return None
    cols = {
        "token_uid": np.broadcast_to(uids[:, None, None, None], shape).ravel(),
        "lens": pa.array(np.broadcast_to(np.array(modes, dtype=object)[None, :, None, None], shape).ravel(),
                         pa.string()),
        "layer": np.broadcast_to(np.arange(shape[2], dtype=np.int16)[None, None, :, None], shape).ravel(),
        "rank": np.broadcast_to(np.arange(1, k + 1, dtype=np.int32)[None, None, None, :], shape).ravel(),
        "vocab_id": ids.astype(np.int32).ravel(),
        "prob": probs.astype(np.float32).ravel(),
    }
    return _table(cols, schema.TOPK)


def write_rows(writer, rows: BatchRows) -> None:
    """One atomic commit: concatenate the batch's per-sample tables (token_uids are already batch-local)."""
    samples = pa.Table.from_pylist(rows.samples, schema=_samples_in_schema()) if rows.samples else None
    tokens = pa.concat_tables(rows.tokens) if rows.tokens else None
    layers = pa.concat_tables(rows.layers) if rows.layers else None
    topk = pa.concat_tables(rows.topk) if rows.topk else None
    hidden = np.concatenate(rows.hidden, axis=0) if rows.hidden else None
    errors = pa.Table.from_pylist(rows.errors, schema=schema.ERRORS) if rows.errors else None
    if samples is None and errors is None:
        return
    counts = None
    if any(rows.fp16_overflow.values()):  # committed with the batch, so a resumed run's total stays right
        counts = {"float16_overflow": {"total": sum(rows.fp16_overflow.values()),
                                       "by_layer": {str(k): v for k, v in rows.fp16_overflow.items() if v}}}
    writer.write_batch(samples=samples, tokens=tokens, layers=layers, topk=topk, hidden=hidden, errors=errors,
                       **({"capture_counts": counts} if counts else {}))


def _samples_in_schema() -> pa.Schema:
    return pa.schema([f for f in schema.SAMPLES if f.name != "sample_id"])
