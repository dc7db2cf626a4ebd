"""Arrow-side helpers shared by the writer and the reader: input coercion and Parquet options."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import SchemaError
from .schema import KEYS

# Parquet: zstd everywhere; dictionaries for low-cardinality strings and ids; delta encoding for
# sorted integer keys; byte-stream-split for floats (puts exponent bytes together, which zstd likes).
ZSTD_LEVEL = 3
_DELTA = {"token_uid", "sample_id", "layer", "rank", "step", "position", "vocab_id", "char_start", "char_end",
          "word_index"}
_NO_DICT_STRINGS = {"annotations", "metrics", "prompt_text", "response", "message", "text", "sample_key"}


def parquet_options(schema: pa.Schema, table_name: str) -> dict[str, Any]:
    use_dict: list[str] = []
    enc: dict[str, str] = {}
    for f in schema:
        t = f.type
        if pa.types.is_floating(t):
            enc[f.name] = "BYTE_STREAM_SPLIT"
        elif pa.types.is_integer(t):
            if f.name in _DELTA and not (table_name == "topk" and f.name == "vocab_id"):
                enc[f.name] = "DELTA_BINARY_PACKED"
            else:
                use_dict.append(f.name)
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            if f.name not in _NO_DICT_STRINGS:
                use_dict.append(f.name)
        elif pa.types.is_dictionary(t):
            use_dict.append(f.name)
    return {
        "compression": "zstd",
        "compression_level": ZSTD_LEVEL,
        "use_dictionary": use_dict,
        "column_encoding": enc,
        "write_statistics": True,
        # CRC32 of every page: readers that check them (pyarrow: page_checksum_verification) fail
        # on a flipped bit instead of decoding wrong values (DuckDB does not check them; verify does)
        "write_page_checksum": True,
    }


def to_table(data: Any, what: str) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, dict):
        try:
            return pa.table({k: (v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v))
                             for k, v in data.items()})
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise SchemaError(f"{what}: cannot make an Arrow table from the given columns ({e})") from None
    if hasattr(data, "to_arrow"):  # polars
        return data.to_arrow()
    raise SchemaError(f"{what}: expected a pyarrow.Table, a RecordBatch or a dict of columns, "
                      f"got {type(data).__name__}")


def conform(data: Any, schema: pa.Schema, what: str) -> pa.Table:
    """Cast ``data`` to ``schema`` exactly: named columns, safe casts, nulls only where nullable."""
    t = to_table(data, what)
    names = set(schema.names)
    extra = [c for c in t.column_names if c not in names]
    if extra:
        raise SchemaError(f"{what}: unknown column(s) {extra}; the columns are {schema.names} "
                          "(see kevo_store/schema.py)")
    cols = []
    n = t.num_rows
    for f in schema:
        if f.name in t.column_names:
            col = t.column(f.name)
            if col.type != f.type:
                try:
                    col = col.cast(f.type, safe=True)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
                    raise SchemaError(f"{what}.{f.name}: cannot store {col.type} as {f.type} ({e})") from None
            if not f.nullable and col.null_count:
                raise SchemaError(f"{what}.{f.name}: {col.null_count} null value(s) in a column that cannot be null")
        else:
            if not f.nullable:
                raise SchemaError(f"{what}: missing required column '{f.name}'")
            col = pa.nulls(n, f.type)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema).combine_chunks()


def _packed_key(t: pa.Table, table_name: str) -> np.ndarray | None:
    """layers/topk: the key (token_uid, lens, layer[, rank]) packed into one int64, in key order."""
    if table_name not in ("layers", "topk"):
        return None
    uid = t.column("token_uid").to_numpy()
    lens = t.column("lens").combine_chunks()
    modes = pc.unique(lens).sort()
    code = pc.index_in(lens, value_set=modes).to_numpy().astype(np.int64)
    layer = t.column("layer").to_numpy().astype(np.int64)
    if uid.size and (uid.min() < 0 or uid.max() >= (1 << 62) // (len(modes) << 16 << 8)):
        return None
    if layer.size and (layer.min() < 0 or layer.max() >= 1 << 16):
        return None
    key = (uid * len(modes) + code) << 16 | layer
    if table_name == "topk":
        rank = t.column("rank").to_numpy().astype(np.int64)
        if rank.size and (rank.min() < 0 or rank.max() >= 1 << 8):
            return None
        key = key << 8 | rank
    return key


def sort_by_key(t: pa.Table, table_name: str) -> pa.Table:
    """Sort by the table's key. For layers and topk also refuse duplicate keys (an ingest bug that
    would double-count silently); input already in key order is detected and left untouched."""
    keys = KEYS.get(table_name)
    if not keys or t.num_rows < 2:
        return t
    packed = _packed_key(t, table_name)
    if packed is None:
        return t.sort_by([(k, "ascending") for k in keys])
    d = np.diff(packed)
    if not (d > 0).all():
        order = np.argsort(packed, kind="stable")
        t = t.take(pa.array(order))
        packed = packed[order]
        d = np.diff(packed)
    if (d == 0).any():
        i = int(np.flatnonzero(d == 0)[0])
        row = {k: t.column(k)[i].as_py() for k in keys}
        raise SchemaError(f"{table_name}: duplicate key {row} (every {', '.join(keys)} must appear once)")
    return t


def check_unique(values: pa.Array | pa.ChunkedArray, what: str) -> None:
    vc = pc.value_counts(values)
    dup = vc.filter(pc.greater(vc.field("counts"), 1))
    if len(dup):
        raise SchemaError(f"{what}: duplicate value {dup[0]['values'].as_py()!r}")
