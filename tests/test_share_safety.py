"""A store from someone else is untrusted input: hostile manifests and objects are refused.

Each hostile store is a real store pushed to a real S3 API (moto on loopback, or a local
directory) and then altered the way an attacker (or a broken tool) would: paths that leave the
store, links, files the manifest does not name, files larger than declared, a format from the
future, array metadata asking for a pickle codec, a pickled "tail" file. Each must be refused
with one clear message, by `kevo store pull`, by `kevo sql` and by `open_store`, and nothing may
be written outside the destination or unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil

import numpy as np
import pytest

from kevo_store import open_store
from kevo_store.errors import FormatVersionError, KevoError
from kevo_store.manifest import check_format_version
from kevo_store.share.safety import (
    HashingSizeCap,
    UnsafeStoreError,
    check_file_entries,
    check_relpath,
    check_zarr_metadata,
    parse_manifest,
)
from tests.share_helpers import synth, write_sample_range

SHA = "0" * 64


# ------------------------------------------------------------------------------ unit checks


@pytest.mark.parametrize("rel", [
    "../evil", "tables/../../evil", "/etc/passwd", "~/.ssh/id_rsa", "C:/Windows/x", "tables\\..\\x", "a//b",
    "./tables/x", "tables/", "", "tables/x\x00.parquet", "manifest.json",
])
def test_relpath_refuses_escapes(rel):
    with pytest.raises(UnsafeStoreError, match="refused"):
        check_relpath(rel, "store")


@pytest.mark.parametrize("rel", ["tables/samples/part-000001.parquet", "hidden/c/0/3/0", "hidden/zarr.json",
                                 "derived/embeddings/embeddings-000004.parquet", "tables/x..y.parquet"])
def test_relpath_accepts_plain_paths(rel):
    assert check_relpath(rel, "store") == rel


def test_manifest_parsing_is_strict():
    with pytest.raises(UnsafeStoreError, match="duplicate key 'files'"):
        parse_manifest(b'{"format_version": 1, "files": {}, "files": {"../x": {}}}', "s")
    with pytest.raises(UnsafeStoreError, match="not valid JSON"):
        parse_manifest(b'{"format_version": NaN}', "s")
    with pytest.raises(UnsafeStoreError, match="not valid JSON"):
        parse_manifest(b"[" * 100_000 + b"]" * 100_000, "s")
    with pytest.raises(UnsafeStoreError, match="not a JSON object"):
        parse_manifest(b"[1, 2]", "s")
    with pytest.raises(FormatVersionError, match="format version 7.*upgrade kevo"):
        check_format_version({"format_version": 7}, "s")
    with pytest.raises(UnsafeStoreError, match="no valid format_version"):
        check_format_version({"format_version": "1"}, "s")
    with pytest.raises(UnsafeStoreError, match="differ only in case"):
        check_file_entries({"tables/A": {"sha256": SHA, "size": 1}, "tables/a": {"sha256": SHA, "size": 1}}, "s")
    with pytest.raises(UnsafeStoreError, match="invalid size"):
        check_file_entries({"tables/a": {"sha256": SHA, "size": -1}}, "s")
    with pytest.raises(UnsafeStoreError, match="invalid sha256"):
        check_file_entries({"tables/a": {"sha256": "abc", "size": 1}}, "s")


def test_size_cap_stops_at_the_first_extra_byte():
    cap = HashingSizeCap("tables/x", 4, "s")
    cap.update(b"abcd")
    cap.check(hashlib.sha256(b"abcd").hexdigest())
    with pytest.raises(UnsafeStoreError, match="larger than the 4 bytes"):
        cap.update(b"e")
    cap = HashingSizeCap("tables/x", 4, "s")
    cap.update(b"abce")
    with pytest.raises(UnsafeStoreError, match="fails its checksum"):
        cap.check(hashlib.sha256(b"abcd").hexdigest())


def test_zarr_metadata_must_be_plain_numbers():
    ok = {"zarr_format": 3, "node_type": "array", "data_type": "float16",
          "codecs": [{"name": "bytes"}, {"name": "zstd", "configuration": {"level": 1}}]}
    check_zarr_metadata(ok, "s")
    with pytest.raises(UnsafeStoreError, match="codec 'numcodecs.pickle'"):
        check_zarr_metadata({**ok, "codecs": [{"name": "numcodecs.pickle"}]}, "s")
    with pytest.raises(UnsafeStoreError, match="codec 'numcodecs.pickle'"):
        check_zarr_metadata({**ok, "codecs": [{"name": "sharding_indexed", "configuration": {
            "codecs": [{"name": "numcodecs.pickle"}], "index_codecs": [{"name": "bytes"}]}}]}, "s")
    with pytest.raises(UnsafeStoreError, match="data type"):
        check_zarr_metadata({**ok, "data_type": "object"}, "s")


# ------------------------------------------------------------------------------ hostile stores


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("safety") / "amber.kevo"
    write_sample_range(path, synth(n_samples=4, n_tokens=8), 0, 4)
    return path


@pytest.fixture
def hostile(s3, local_store):
    """A pushed store and a function that rewrites its manifest (as an attacker would)."""
    url = s3.url("x/amber.kevo")
    s3.run_kevo("store", "push", local_store, url, check=True)
    key = f"{s3.bucket}/x/amber.kevo/manifest.json"

    def edit(fn):
        m = json.loads(s3.fs.cat_file(key))
        fn(m)
        s3.fs.pipe_file(key, json.dumps(m).encode())
        return m

    return url, edit


def _refused_everywhere(s3, url, tmp_path, *needles):
    dest = tmp_path / "dest" / "pulled.kevo"
    p = s3.run_kevo("store", "pull", url, dest)
    assert p.returncode == 1, p.stdout
    for n in needles:
        assert n in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert not dest.exists()
    q = s3.run_kevo("sql", url, "SELECT count(*) FROM samples")
    assert q.returncode == 1 and "Traceback" not in q.stderr
    for n in needles:
        assert n in q.stderr, q.stderr
    with pytest.raises(KevoError):
        with open_store(url) as s:
            s.sql("SELECT count(*) FROM samples")
    return p.stderr


def test_path_traversal_is_refused(s3, hostile, tmp_path):
    url, edit = hostile
    # the attacker's object sits at the key the traversal names; a naive pull would write it
    # to DIR/../../escaped.txt
    evil = b"owned"
    s3.fs.pipe_file(f"{s3.bucket}/x/amber.kevo/../../escaped.txt", evil)

    def attack(m):
        rel = "../../escaped.txt"
        m["files"][rel] = {"sha256": hashlib.sha256(evil).hexdigest(), "size": len(evil), "rows": 0}
        m["tables"]["samples"]["files"].append(rel)

    edit(attack)
    _refused_everywhere(s3, url, tmp_path, "escapes the store", "../../escaped.txt")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path.parent / "escaped.txt").exists()


def test_absolute_path_is_refused(s3, hostile, tmp_path):
    url, edit = hostile
    edit(lambda m: m["files"].update({"/etc/passwd": {"sha256": SHA, "size": 1}}))
    _refused_everywhere(s3, url, tmp_path, "absolute path", "/etc/passwd")


def test_future_format_version_is_refused(s3, hostile, tmp_path):
    url, edit = hostile
    edit(lambda m: m.update(format_version=99))
    _refused_everywhere(s3, url, tmp_path, "format", "99", "upgrade kevo")


def test_file_the_manifest_does_not_name_is_refused(s3, hostile, tmp_path):
    url, _edit = hostile
    s3.fs.pipe_file(f"{s3.bucket}/x/amber.kevo/tables/samples/smuggled.parquet", b"PAR1 not really")
    p = s3.run_kevo("store", "pull", url, tmp_path / "p.kevo")
    assert p.returncode == 1 and "tables/samples/smuggled.parquet" in p.stderr and "does not name" in p.stderr
    assert not (tmp_path / "p.kevo").exists()
    v = s3.run_kevo("store", "verify", url)
    assert "smuggled.parquet" in v.stderr  # named in verify's report of the remote store


def test_object_larger_than_declared_is_refused(s3, hostile, local_store, tmp_path):
    url, _edit = hostile
    with open_store(local_store) as s:
        victim = s.manifest["tables"]["samples"]["files"][0]
    key = f"{s3.bucket}/x/amber.kevo/{victim}"
    s3.fs.pipe_file(key, s3.fs.cat_file(key) + b"\0" * 4096)
    p = s3.run_kevo("store", "pull", url, tmp_path / "p.kevo")
    assert p.returncode == 1 and victim in p.stderr and "larger than" in p.stderr
    # reading in place: the file is refused before DuckDB parses a byte of it
    q = s3.run_kevo("sql", url, "SELECT count(*) FROM samples")
    assert q.returncode == 1 and victim in q.stderr and "manifest declares" in q.stderr


def test_link_in_a_local_store_is_refused(local_store, tmp_path):
    copy = tmp_path / "copy.kevo"
    shutil.copytree(local_store, copy)
    secret = tmp_path / "secret.parquet"
    with open_store(copy) as s:
        victim = s.manifest["tables"]["samples"]["files"][0]
    shutil.copy(copy / victim, secret)  # same bytes: only the link itself can give it away
    os.remove(copy / victim)
    os.symlink(secret, copy / victim)
    with pytest.raises(UnsafeStoreError, match="symbolic link"):
        open_store(copy)
    from kevo_store.share.pull import pull

    with pytest.raises(UnsafeStoreError, match="symbolic link"):
        pull(str(copy), tmp_path / "pulled.kevo", progress=False)
    assert not (tmp_path / "pulled.kevo").exists()


def test_pickle_codec_in_the_array_metadata_is_refused(s3, hostile, tmp_path):
    url, _edit = hostile
    key = f"{s3.bucket}/x/amber.kevo/hidden/hidden/zarr.json"
    meta = json.loads(s3.fs.cat_file(key))
    meta["codecs"] = [{"name": "numcodecs.pickle", "configuration": {}}]
    s3.fs.pipe_file(key, json.dumps(meta).encode())
    p = s3.run_kevo("store", "pull", url, tmp_path / "p.kevo")
    assert p.returncode == 1 and "numcodecs.pickle" in p.stderr
    with open_store(url) as s:
        with pytest.raises(KevoError, match="refused: the hidden array uses codec 'numcodecs.pickle'"):
            s.hidden([0])


def test_a_pickled_tail_file_is_never_unpickled(s3, hostile, tmp_path):
    url, edit = hostile
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bio = io.BytesIO()
    np.savez(bio, hidden=np.array([Payload()], dtype=object), sample_id=np.array([Payload()], dtype=object))
    data = bio.getvalue()
    rel = "hidden/tail-000099.npz"
    s3.fs.pipe_file(f"{s3.bucket}/x/amber.kevo/{rel}", data)

    def attack(m):
        m["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        m["hidden"]["tails"] = [rel]
        m["hidden"]["zarr_rows"] = 0  # every row "lives" in the tail

    edit(attack)
    with open_store(url) as s:
        with pytest.raises(ValueError, match="allow_pickle=False"):
            s.hidden([0])
    # and a pulled copy: same refusal, no side effect either way
    s3.run_kevo("store", "pull", url, tmp_path / "p.kevo", check=True)
    with open_store(tmp_path / "p.kevo") as s:
        with pytest.raises(ValueError, match="allow_pickle=False"):
            s.hidden([0])
    assert not marker.exists()


def test_pickle_codec_in_a_local_store_is_refused_before_zarr_reads_it(local_store, tmp_path):
    copy = tmp_path / "copy.kevo"
    shutil.copytree(local_store, copy)
    meta = json.loads((copy / "hidden" / "hidden" / "zarr.json").read_text())
    meta["codecs"] = [{"name": "numcodecs.pickle", "configuration": {}}]
    (copy / "hidden" / "hidden" / "zarr.json").write_text(json.dumps(meta))
    with open_store(copy) as s:
        with pytest.raises(KevoError, match="refused: the hidden array uses codec 'numcodecs.pickle'"):
            s.hidden([0])
