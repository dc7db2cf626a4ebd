"""Round trip of every table and of the hidden array, bit-exact, through the real writer and reader."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import store_helpers as H
import zarr

from kevo_store import (
    KEYS,
    TABLES,
    SchemaError,
    StoreError,
    StoreWriter,
    open_store,
    open_stores,
    write_derived_table,
)
from kevo_store.hidden import bf16_bits_to_float32, float32_to_bf16_bits
from kevo_store.verify import verify_store


def expected(n_batches: int, hidden_dtype: str = "float16", start: int = 0):
    """The store's content computed independently from the batches: ids assigned, uids offset, sorted."""
    return expected_from([H.batch(b, hidden_dtype=hidden_dtype) for b in range(start, n_batches)])


def expected_from(batches: list[dict]):
    out = {k: [] for k in ("samples", "tokens", "layers", "topk", "errors")}
    hid = []
    sid = uid = 0
    for bt in batches:
        if "samples" not in bt:  # an errors-only batch
            out["errors"].append(bt["errors"].cast(TABLES["errors"]))
            continue
        s = bt["samples"]
        keys = s.column("sample_key").to_pylist()
        s = s.append_column("sample_id", pa.array(np.arange(sid, sid + len(keys)), pa.int64()))
        cols = {f.name: (s.column(f.name) if f.name in s.column_names else pa.nulls(s.num_rows, f.type))
                for f in TABLES["samples"]}  # columns a batch leaves out are stored as nulls
        out["samples"].append(pa.table(cols).cast(TABLES["samples"]))
        t = bt["tokens"]
        pos = {k: i for i, k in enumerate(keys)}
        t = t.append_column("sample_id", pa.array([sid + pos[k] for k in t.column("sample_key").to_pylist()],
                                                  pa.int64()))
        t = t.set_column(0, "token_uid", pc.add(t.column("token_uid"), uid)).drop_columns(["sample_key"])
        cols = {f.name: (t.column(f.name) if f.name in t.column_names else pa.nulls(t.num_rows, f.type))
                for f in TABLES["tokens"]}
        out["tokens"].append(pa.table(cols).cast(TABLES["tokens"]))
        for name in ("layers", "topk"):
            x = bt[name]
            x = x.set_column(0, "token_uid", pc.add(x.column("token_uid"), uid))
            cols = {f.name: (x.column(f.name) if f.name in x.column_names else pa.nulls(x.num_rows, f.type))
                    for f in TABLES[name]}
            out[name].append(pa.table(cols).cast(TABLES[name]))
        if "errors" in bt:
            out["errors"].append(bt["errors"].cast(TABLES["errors"]))
        hid.append(bt["hidden"])
        sid += len(keys)
        uid += bt["tokens"].num_rows
    res = {k: pa.concat_tables(v).sort_by([(c, "ascending") for c in KEYS[k]]).combine_chunks()
           for k, v in out.items()}
    res["vocab"] = H.vocab_table().cast(TABLES["vocab"])
    return res, np.concatenate(hid)


def read_all(path) -> dict[str, pa.Table]:
    s = open_store(path)
    out = {}
    for name, schema in TABLES.items():
        order = ", ".join(KEYS[name])
        t = s.arrow(f"SELECT * FROM {name} ORDER BY {order}")
        out[name] = t.cast(schema).combine_chunks()
    s.close()
    return out


def assert_tables_equal(got: pa.Table, want: pa.Table, name: str) -> None:
    assert got.num_rows == want.num_rows, name
    for f in want.schema:
        g, w = got.column(f.name).combine_chunks(), want.column(f.name).combine_chunks()
        if pa.types.is_floating(f.type):  # bit-exact, nulls in the same places
            assert g.is_null().equals(w.is_null()), f"{name}.{f.name} nulls"
            gn = g.fill_null(0).to_numpy(zero_copy_only=False).view(np.uint32)
            wn = w.fill_null(0).to_numpy(zero_copy_only=False).view(np.uint32)
            np.testing.assert_array_equal(gn, wn, err_msg=f"{name}.{f.name}")
        else:
            assert g.equals(w), f"{name}.{f.name} differs"


@pytest.mark.parametrize("hidden_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("close", [True, False], ids=["closed", "open"])
def test_round_trip_every_table_and_hidden(tmp_path, hidden_dtype, close):
    path = tmp_path / "rt.kevo"
    H.write_store(path, 6, hidden_dtype=hidden_dtype, close=close)
    if not close:  # a store whose writer has not closed: still readable, parts not yet compacted
        import os
        os.remove(path / ".lock")
    want, want_h = expected(6, hidden_dtype)
    got = read_all(path)
    for name in TABLES:
        assert_tables_equal(got[name], want[name], name)
    s = open_store(path)
    # the Parquet files keep the exact schema of schema.py, and are sorted by the key
    for name, ent in s.manifest["tables"].items():
        for rel in ent["files"]:
            pf = pq.read_table(path / rel)
            assert pf.schema.equals(TABLES[name], check_metadata=False), rel
            keys = [(k, "ascending") for k in KEYS[name]]
            assert pf.equals(pf.sort_by(keys)), f"{rel} is not sorted by {KEYS[name]}"
    if close:
        assert all("part-" not in f for t in ("tokens", "layers", "topk") for f in s.manifest["tables"][t]["files"])
    n = want["tokens"].num_rows
    assert n % 64 != 0  # the test covers a partial last chunk
    h = s.hidden(np.arange(n))
    if hidden_dtype == "float16":
        assert h.dtype == np.float16
        np.testing.assert_array_equal(h.view(np.uint16), want_h.view(np.uint16))
    else:
        assert h.dtype == np.float32
        np.testing.assert_array_equal(h.view(np.uint32), want_h.astype(np.uint32) << 16)
    # selections: unsorted, repeated uids, a layer subset, spanning the array and the tail
    rng = np.random.default_rng(1)
    uids = rng.integers(0, n, 50)
    uids[:3] = [n - 1, 0, n - 1]
    sub = s.hidden(uids, layers=[3, 1])
    full = s.hidden(np.arange(n))
    np.testing.assert_array_equal(sub.view(np.uint16 if hidden_dtype == "float16" else np.uint32),
                                  full[uids][:, [3, 1]].view(np.uint16 if hidden_dtype == "float16" else np.uint32))
    # the Zarr array is readable as plain Zarr v3, with its logical dtype recorded
    z = zarr.open_array(str(path / "hidden" / "hidden"), mode="r")
    assert z.shards == (H.SHARD_TOKENS, 1, H.HIDDEN) and z.chunks == (H.CHUNK_TOKENS, 1, H.HIDDEN)
    assert z.attrs["logical_dtype"] == hidden_dtype
    assert z.dtype == (np.float16 if hidden_dtype == "float16" else np.uint16)
    if close:
        assert z.shape == (n, H.N_LAYERS + 1, H.HIDDEN)
        np.testing.assert_array_equal(np.asarray(z[:]).view(np.uint16), want_h.view(np.uint16))
    assert verify_store(path).ok
    s.close()


def test_bf16_conversion_matches_round_to_nearest_even():
    import torch  # the reference: torch's own float32 -> bfloat16 cast

    x = np.random.default_rng(0).normal(size=10000).astype(np.float32) * 100
    x[:4] = [0.0, -0.0, np.inf, -np.inf]
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(float32_to_bf16_bits(x), ref)
    np.testing.assert_array_equal(bf16_bits_to_float32(ref), torch.from_numpy(ref.view(np.int16)).view(
        torch.bfloat16).float().numpy())


def test_reopen_closed_store_appends_without_rewriting_chunks(tmp_path):
    """Close after 3 batches (partial last chunk), reopen, add 3 more: same content as one run."""
    a, b = tmp_path / "a.kevo", tmp_path / "b.kevo"
    H.write_store(a, 6)
    H.write_store(b, 3)
    m3 = json.loads((b / "manifest.json").read_text())
    assert m3["hidden"]["rows"] % 64 and m3["state"] == "closed"
    H.write_store(b, 6)
    for name in TABLES:
        assert_tables_equal(read_all(b)[name], read_all(a)[name], name)
    sa, sb = open_store(a), open_store(b)
    n = sa.rows("tokens")
    np.testing.assert_array_equal(sa.hidden(np.arange(n)).view(np.uint16), sb.hidden(np.arange(n)).view(np.uint16))
    rep = verify_store(b)
    assert rep.ok, rep.problems
    assert not any("not named" in x for x in rep.notes)


def test_committed_keys_resume_and_no_duplicates(tmp_path):
    path = tmp_path / "k.kevo"
    H.write_store(path, 2, close=False).abort()
    with StoreWriter(path, meta=H.META, hidden_size=H.HIDDEN) as w:
        keys = w.committed_keys
        assert keys == ({f"synthetic:{b}-{i}" for b in range(2) for i in range(3)}
                        | {f"synthetic:{b}-err" for b in range(2)})
        with pytest.raises(SchemaError, match="already committed"):
            w.write_batch(**H.batch(1))
    with StoreWriter(path, meta=H.META, hidden_size=H.HIDDEN) as w:  # a failed batch leaves nothing behind
        assert w.n_samples == 6
        assert w.write_vocab(H.vocab_table()) is False


def test_bad_batches_are_refused_with_the_culprit_named(tmp_path):
    path = tmp_path / "bad.kevo"
    bt = H.batch(0)
    cases = [
        (dict(bt, tokens=bt["tokens"].append_column("colour", pa.array(["red"] * bt["tokens"].num_rows))),
         r"tokens: unknown column\(s\) \['colour'\]"),
        (dict(bt, layers=bt["layers"].drop_columns(["p_out"])), "layers: missing required column 'p_out'"),
        (dict(bt, tokens=bt["tokens"].set_column(0, "token_uid", pc.add(bt["tokens"].column("token_uid"), 1))),
         "batch-local"),
        (dict(bt, hidden=bt["hidden"][:-1]), "hidden has .* rows but the batch has"),
        (dict(bt, hidden=bt["hidden"][:, :2]), r"hidden has shape"),
        (dict(bt, topk=bt["topk"].set_column(3, "rank", pa.array([2**40] * bt["topk"].num_rows))),
         r"topk.rank: cannot store int64 as int32"),
        (dict(bt, layers=bt["layers"].set_column(0, "token_uid", pa.array([10**6] * bt["layers"].num_rows))),
         "outside the batch's tokens"),
        (dict(bt, topk=pa.concat_tables([bt["topk"], bt["topk"].slice(5, 1)])),
         r"topk: duplicate key \{'token_uid': \d+, 'lens': '\w+', 'layer': \d+, 'rank': \d+\}"),
    ]
    with StoreWriter(path, meta=H.META, hidden_size=H.HIDDEN) as w:
        for kwargs, msg in cases:
            w2 = w  # every refusal happens before anything is written, so the writer stays usable
            with pytest.raises(SchemaError, match=msg):
                w2.write_batch(**kwargs)
        w.write_batch(**bt)
    assert verify_store(path).ok
    assert open_store(path).rows("samples") == 3


def test_store_without_hidden_and_meta_mismatch(tmp_path):
    path = tmp_path / "nh.kevo"
    bt = H.batch(0)
    bt.pop("hidden")
    with StoreWriter(path, meta=H.META) as w:
        w.write_batch(**bt)
    s = open_store(path)
    assert s.hidden_layers == [] and s.rows("layers") == bt["layers"].num_rows
    with pytest.raises(Exception, match="holds no hidden states"):
        s.hidden([0])
    other = json.loads(json.dumps(H.META))
    other["model"]["id"] = "other/model"
    with pytest.raises(StoreError, match="model.id"):
        StoreWriter(path, meta=other)
    with pytest.raises(StoreError, match="hidden states were not captured"):
        StoreWriter(path, meta=H.META, hidden_size=H.HIDDEN)
    assert not (path / ".lock").exists()  # a refused open releases the lock


def test_derived_update_merges_with_what_is_committed_under_the_lock(tmp_path):
    """An update function sees the version committed when the lock is held, not when the caller
    started: rows another command committed in between are kept (kevo embed / kevo trace add runs
    to one table this way), and a damaged committed file is refused, not merged."""
    from kevo_store import CorruptStoreError, write_derived_tables

    path = tmp_path / "d.kevo"
    H.write_store(path, 2)

    def run(eid, n):
        return pa.table({"embedding_id": [eid] * n, "token_uid": list(range(n)), "layer": [1] * n,
                         "x": [float(i) for i in range(n)], "y": [0.0] * n})

    def add(eid, n):
        def update(old, params):
            runs = {**params.get("runs", {}), eid: n}
            if old is None:
                return run(eid, n), {"runs": runs}
            kept = old.filter(pc.not_equal(old["embedding_id"], eid))
            return pa.concat_tables([kept, run(eid, n).cast(old.schema)]), {"runs": runs}
        return update

    write_derived_tables(path, {"embeddings": add("a", 2)})
    pending = add("b", 3)  # a command computes its rows ...
    write_derived_tables(path, {"embeddings": add("c", 1)})  # ... while another one commits its own
    write_derived_tables(path, {"embeddings": pending})
    s = open_store(path)
    got = s.sql("SELECT embedding_id, count(*) AS n FROM embeddings GROUP BY 1 ORDER BY 1")
    assert got.rows() == [("a", 2), ("b", 3), ("c", 1)]
    assert s.manifest["derived"]["embeddings"]["params"]["runs"] == {"a": 2, "c": 1, "b": 3}
    rel = s.manifest["derived"]["embeddings"]["files"][0]
    _flip_middle_byte(path / rel)
    with pytest.raises(CorruptStoreError, match="sha256 .* differs from the manifest"):
        write_derived_tables(path, {"embeddings": add("d", 1)})


def _flip_middle_byte(p):
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


def test_write_into_non_store_directory_is_refused(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    (d / "cat.jpg").write_bytes(b"x")
    with pytest.raises(StoreError, match="not a kevo store"):
        StoreWriter(d, meta=H.META)
    assert (d / "cat.jpg").read_bytes() == b"x"


def test_derived_table_written_back_and_exposed(tmp_path):
    path = tmp_path / "d.kevo"
    H.write_store(path, 2)
    emb = pa.table({"embedding_id": ["e1"] * 4, "token_uid": [3, 1, 2, 0], "layer": [5, 5, 5, 5],
                    "x": [0.5, 1.5, 2.5, 3.5], "y": [1.0, 2.0, 3.0, 4.0]})
    write_derived_table(path, "embeddings", emb, {"method": "openTSNE", "perplexity": 30})
    s = open_store(path)
    got = s.sql("SELECT token_uid, x FROM embeddings ORDER BY token_uid")
    assert got["token_uid"].to_list() == [0, 1, 2, 3] and got["x"].to_list() == [3.5, 1.5, 2.5, 0.5]
    assert s.manifest["derived"]["embeddings"]["params"]["perplexity"] == 30
    write_derived_table(path, "embeddings", emb.slice(0, 2), {"perplexity": 5})  # replaces the previous one
    s = open_store(path)
    assert s.rows("embeddings") == 2 and s.sql("SELECT count(*) AS n FROM embeddings")["n"][0] == 2
    assert len(list((path / "derived" / "embeddings").iterdir())) == 1
    assert verify_store(path).ok
    with pytest.raises(SchemaError, match="embeddings: missing required column 'x'"):
        write_derived_table(path, "embeddings", emb.drop_columns(["x"]), {})
    with pytest.raises(StoreError, match="derived table name"):
        write_derived_table(path, "layers", emb, {})


def test_open_stores_two_runs(tmp_path):
    H.write_store(tmp_path / "a.kevo", 2)
    H.write_store(tmp_path / "b.kevo", 3)
    m = open_stores([tmp_path / "a.kevo", tmp_path / "b.kevo"])
    df = m.sql("SELECT (SELECT count(*) FROM a.samples) AS na, (SELECT count(*) FROM b.samples) AS nb")
    assert df.row(0) == (6, 9)
    j = m.sql("SELECT count(*) AS n FROM a.layers x JOIN b.layers y USING (token_uid, lens, layer) "
              "WHERE x.p_out = y.p_out")
    assert j["n"][0] == open_store(tmp_path / "a.kevo").rows("layers")  # the first 2 batches are identical
    assert m["b"].rows("samples") == 9


@pytest.mark.parametrize("hidden_dtype,n_batches", [("float16", 5), ("bfloat16", 6), ("float16", 6)])
def test_writer_shards_are_byte_identical_to_zarr_own(tmp_path, hidden_dtype, n_batches):
    """The writer encodes shards itself (speed); the files must be exactly what zarr would write,
    partial final shard and partial inner chunk included."""
    from zarr.codecs import Crc32cCodec

    path = tmp_path / "z.kevo"
    H.write_store(path, n_batches, hidden_dtype=hidden_dtype)
    s = open_store(path)
    n = s.rows("tokens")
    # 5 batches = 256 tokens (whole shards only); 6 = 301 (a partial final shard and inner chunk)
    assert n == 256 or (n % H.SHARD_TOKENS and n % H.CHUNK_TOKENS)
    raw = np.asarray(zarr.open_array(str(path / "hidden" / "hidden"), mode="r")[:])
    ref = tmp_path / "ref"
    z = zarr.create_array(str(ref), shape=raw.shape, shards=(H.SHARD_TOKENS, 1, H.HIDDEN),
                          chunks=(H.CHUNK_TOKENS, 1, H.HIDDEN), dtype=raw.dtype, fill_value=0,
                          compressors=[Crc32cCodec()], chunk_key_encoding={"name": "default", "separator": "/"},
                          config={"write_empty_chunks": True})
    z[:] = raw
    mine = sorted(p.relative_to(path / "hidden" / "hidden") for p in (path / "hidden" / "hidden" / "c").rglob("*")
                  if p.is_file())
    theirs = sorted(p.relative_to(ref) for p in (ref / "c").rglob("*") if p.is_file())
    assert mine == theirs and len(mine) == -(-n // H.SHARD_TOKENS) * (H.N_LAYERS + 1)
    for rel in mine:
        assert (path / "hidden" / "hidden" / rel).read_bytes() == (ref / rel).read_bytes(), rel
    s.close()


def test_bad_writer_arguments_touch_nothing(tmp_path):
    path = tmp_path / "never.kevo"
    with pytest.raises(StoreError, match=r"meta\['model'\] cannot be stored in manifest.json"):
        StoreWriter(path, meta={"model": {"id": object()}})
    with pytest.raises(StoreError, match="hidden_layers must be distinct"):
        StoreWriter(path, meta=H.META, hidden_size=8, hidden_layers=[0, 1, 1])
    with pytest.raises(StoreError, match="unknown manifest section"):
        StoreWriter(path, meta={"modle": {}})
    assert not path.exists()


def test_random_schedule_of_batches_closes_and_reopens(tmp_path):
    """Batches of many sizes (empty, errors only, crossing and filling chunks), closed and reopened at
    random points: the store equals the batches, and every intermediate state verifies."""
    rng = np.random.default_rng(7)
    path = tmp_path / "sched.kevo"
    given = []  # exactly what was handed to write_batch, in order
    kinds = set()
    b = 0
    for _session in range(4):
        with StoreWriter(path, meta=H.META, hidden_size=H.HIDDEN) as w:
            w.write_vocab(H.vocab_table())
            for _ in range(int(rng.integers(1, 4))):
                kind = int(rng.integers(0, 3))
                kinds.add(kind)
                if kind == 0:  # errors only
                    bt = {"errors": H.batch(b)["errors"]}
                elif kind == 1:  # a sample that generated no token, with an empty hidden array
                    full = H.batch(b, n_samples=1, with_error=False)
                    bt = {k: (v.slice(0, 0) if k in ("tokens", "layers", "topk") else v) for k, v in full.items()}
                    bt["hidden"] = full["hidden"][:0]
                else:
                    bt = H.batch(b, n_samples=int(rng.integers(1, 9)))
                w.write_batch(**bt)
                given.append(bt)
                b += 1
        rep = verify_store(path)
        assert rep.ok, rep.problems
    want, want_h = expected_from(given)
    got = read_all(path)
    for name in TABLES:
        assert_tables_equal(got[name], want[name], name)
    s = open_store(path)
    n = s.rows("tokens")
    assert n == len(want_h) and kinds == {0, 1, 2}
    np.testing.assert_array_equal(s.hidden(np.arange(n)).view(np.uint16), want_h.view(np.uint16))


def test_manifest_accessors_and_file_url(tmp_path):
    path = tmp_path / "acc.kevo"
    H.write_store(path, 2)
    s = open_store(f"file://{path}")
    assert s.n_layers == H.N_LAYERS and s.lens_modes == list(H.LENSES)
    assert s.hidden_layers == list(range(H.N_LAYERS + 1)) and s.model["id"] == "test/tiny"
    assert set(s.tables) == set(TABLES) and s.rows("topk") == s.sql("SELECT count(*) AS n FROM topk")["n"][0]
    # without the optional manifest fields, the accessors fall back to the data
    bt = H.batch(0)
    bt.pop("hidden")
    with StoreWriter(tmp_path / "bare.kevo") as w:
        w.write_batch(**bt)
    b = open_store(tmp_path / "bare.kevo")
    assert b.n_layers == H.N_LAYERS and b.lens_modes == sorted(H.LENSES)


@pytest.mark.parametrize("close", [True, False])
def test_direct_shard_reads_equal_zarr_reads(tmp_path, close):
    """Store.hidden reads uncompressed local shards itself (one preadv per run of chunks, every crc32c
    checked); the same rows, layers and order as Zarr's own decoding, for any selection: whole shards,
    scattered rows, several layers, a closed store's partial last shard."""
    from kevo_store.fs import LocalFS
    from kevo_store.hidden import HiddenReader

    path = tmp_path / "s.kevo"
    H.write_store(path, 6, close=close)
    m = open_store(path).manifest
    r = HiddenReader(LocalFS(path), m["hidden"], m["files"])
    zr = m["hidden"]["zarr_rows"]
    rng = np.random.default_rng(3)
    picks = [np.arange(zr), rng.choice(zr, 40, replace=False), np.arange(H.SHARD_TOKENS, zr),
             np.sort(rng.choice(zr, 7, replace=False))[::-1]]
    for uids in picks:
        for layers in ([1], [0, 2], None):
            lidx = r._lidx(layers)
            got = r.read_stored(uids, layers)
            order = np.argsort(uids, kind="stable")
            uniq, inv = np.unique(uids[order], return_inverse=True)
            want = np.empty_like(got)
            want[order] = HiddenReader._select(r.arr, uniq, lidx)[inv]
            assert got.tobytes() == want.tobytes()
