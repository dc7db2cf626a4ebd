"""A flipped byte in a Parquet page: every page carries a CRC32, the readers that check them
(pyarrow: compaction, merge/join) fail instead of passing wrong values on, compaction refuses to give
a damaged part a fresh checksum, and `verify` names the file. DuckDB (`kevo sql`) does not check page
CRCs: docs/integrity.md says so; `kevo store verify` is the full check."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import store_helpers as H

from kevo_store import StoreWriter
from kevo_store.errors import CorruptStoreError
from kevo_store.verify import verify_store


def _data_region(path):
    """Byte range of the column chunks (after the magic, before the footer)."""
    md = pq.ParquetFile(path).metadata
    lo = min(md.row_group(r).column(c).data_page_offset for r in range(md.num_row_groups)
             for c in range(md.num_columns))
    hi = max(md.row_group(r).column(c).data_page_offset + md.row_group(r).column(c).total_compressed_size
             for r in range(md.num_row_groups) for c in range(md.num_columns))
    return lo, hi


def _flip(path, pos, bit=0x10):
    data = bytearray(path.read_bytes())
    data[pos] ^= bit
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    p = tmp_path_factory.mktemp("pq") / "s.kevo"
    H.write_store(p, 3)
    return p


def test_every_flip_in_a_page_fails_the_checked_read(store, tmp_path):
    m = json.loads((store / "manifest.json").read_text())
    rng = np.random.default_rng(7)
    tried = failed = 0
    for table in ("layers", "tokens", "samples"):
        rel = m["tables"][table]["files"][0]
        want = pq.read_table(store / rel)
        lo, hi = _data_region(store / rel)
        for pos in rng.integers(lo, hi, 12):
            f = tmp_path / "f.parquet"
            shutil.copy(store / rel, f)
            _flip(f, int(pos))
            tried += 1
            try:
                got = pq.read_table(f, page_checksum_verification=True)
            except (OSError, pa.ArrowException):
                failed += 1
                continue
            # a flip outside every page's CRC (page header statistics) may still decode: then the data
            # must be the original's
            assert got.equals(want), f"{table} byte {pos}: wrong data without an error"
    assert tried == 36 and failed >= tried // 2  # most bytes are page bodies, under a CRC


def test_compaction_refuses_a_damaged_part(tmp_path):
    path = tmp_path / "open.kevo"
    H.write_store(path, 3, close=False)._lock.release()  # an interrupted run: parts, no compaction
    m = json.loads((path / "manifest.json").read_text())
    part = next(f for f in m["tables"]["layers"]["files"] if "part-" in f)
    lo, hi = _data_region(path / part)
    _flip(path / part, (lo + hi) // 2)
    before = (path / "manifest.json").read_bytes()
    w = StoreWriter(path, meta=H.META, hidden_size=H.HIDDEN)
    with pytest.raises(CorruptStoreError, match=part):
        w.close()
    assert (path / "manifest.json").read_bytes() == before  # nothing laundered into a new checksum
    rep = verify_store(path)
    assert not rep.ok and any(part in p for p in rep.problems)
