"""A hidden shard's tree digest (kevo_store.shards): what the writer records equals what a reader
recomputes from the file, on kevo's own shards and on shards Zarr itself writes (uncompressed and zstd),
and every single-byte change anywhere in a shard is found."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import store_helpers as H
import zarr

from kevo_store import open_store
from kevo_store import shards as sh
from kevo_store.fs import LocalFS


def _shard(tmp_path, valid: int, shard_tokens: int = 64, chunk_tokens: int = 16, d: int = 8):
    rng = np.random.default_rng(valid)
    block = np.zeros((shard_tokens, d), dtype="<f2")
    block[:valid] = rng.standard_normal((valid, d)).astype("<f2")
    fs = LocalFS(tmp_path)
    pieces = sh.shard_pieces(block, valid, chunk_tokens)
    ent = sh.write_file(fs, "s", pieces, digest=pieces.digest())
    return (tmp_path / "s").read_bytes(), ent


@pytest.mark.parametrize("valid", [64, 40, 17, 1])  # whole, partial (absent chunks), one row
def test_writer_digest_is_the_files_digest(tmp_path, valid):
    data, (digest, size) = _shard(tmp_path, valid)
    assert size == len(data) and digest.startswith("c32t:4:")
    assert sh.shard_digest(data, 4) == digest and sh.check_shard(data, digest) is None
    # the digest is the documented one: sha256 of the index, its crc32c, then every present chunk's crc32c
    index = np.frombuffer(data[-4 - 64: -4], dtype="<u8").reshape(4, 2)
    h = hashlib.sha256(data[-4 - 64:])
    for off, nb in index.tolist():
        if off != sh.MAX_U64:
            h.update(data[off + nb - 4: off + nb])
    assert digest == f"c32t:4:{h.hexdigest()}"


def test_every_single_byte_change_is_found(tmp_path):
    data, (digest, _) = _shard(tmp_path, 40)
    for i in range(len(data)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[i] ^= flip
            assert sh.check_shard(bytes(bad), digest) is not None, (i, flip)
    assert sh.check_shard(data[:-1], digest) is not None and sh.check_shard(data + b"\0", digest) is not None
    # a shard swapped for another valid shard of the same size is not this shard
    (tmp_path / "o").mkdir()
    other, _ = _shard(tmp_path / "o", 41)  # other values, the same absent chunks
    assert len(other) == len(data) and sh.check_shard(other, digest) == "tree digest mismatch"


@pytest.mark.parametrize("compressors", [None, "zstd"])
def test_digest_of_shards_zarr_writes(tmp_path, compressors):
    """The check reads any Zarr v3 shard with crc32c inner chunks and index, zstd-compressed or not."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    rng = np.random.default_rng(0)
    raw = rng.standard_normal((100, 2, 8)).astype("<f2")
    comp = [ZstdCodec(level=1), Crc32cCodec()] if compressors else [Crc32cCodec()]
    z = zarr.create_array(str(tmp_path / "z"), shape=raw.shape, shards=(64, 1, 8), chunks=(16, 1, 8), dtype=raw.dtype,
                          fill_value=0, compressors=comp, chunk_key_encoding={"name": "default", "separator": "/"})
    z[:] = raw
    files = sorted(p for p in (tmp_path / "z" / "c").rglob("*") if p.is_file())
    assert len(files) == 4
    for p in files:
        data = p.read_bytes()
        digest = sh.shard_digest(data, 4)
        assert sh.check_shard(data, digest) is None
        bad = bytearray(data)
        bad[len(bad) // 2] ^= 0x10
        assert sh.check_shard(bytes(bad), digest) is not None


def test_stores_index_tree_digests_and_still_accept_a_plain_sha256(tmp_path):
    """A store written now indexes its shards by tree digest (coordinate chunks by sha256); an index
    entry holding the file's plain sha256 (stores written before) still verifies, and still fails when
    a byte changes."""
    from kevo_store.verify import verify_store

    path = tmp_path / "a.kevo"
    H.write_store(path, 6)
    with open_store(path) as s:
        sec = s.manifest["hidden"]
    (rel,) = sec["index"]
    idx = json.loads((path / rel).read_bytes())["chunks"]
    shard_keys = [k for k in idx if k.startswith("hidden/")]
    assert shard_keys and all(idx[k][0].startswith(f"c32t:{H.SHARD_TOKENS // H.CHUNK_TOKENS}:") for k in shard_keys)
    assert all(len(v[0]) == 64 for k, v in idx.items() if not k.startswith("hidden/"))
    key = shard_keys[0]
    data = (path / "hidden" / key).read_bytes()
    assert sh.check_shard(data, hashlib.sha256(data).hexdigest()) is None
    bad = bytearray(data)
    bad[3] ^= 0x01
    assert sh.check_shard(bytes(bad), hashlib.sha256(data).hexdigest()) == "sha256 mismatch"
    assert verify_store(path).ok
