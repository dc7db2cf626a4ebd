"""`kevo sql` and `Store.con` read the stores they opened and nothing else: no other files, no writes
(COPY, even into the store), no ATTACH/CREATE, no extensions. `--output` still exports and
`--allow-external` gives DuckDB back unconfined; `kevo embed --tokens` takes one predicate."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import polars as pl
import pytest
import store_helpers as H

from kevo_store import open_store
from kevo_store.errors import KevoError, QueryError
from kevo_store.verify import verify_store
from tests.runner_helpers import KEVO


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    p = tmp_path_factory.mktemp("confined") / "c.kevo"
    H.write_store(p, 2)
    return p


def _sql(*args):
    return subprocess.run([KEVO, "sql", *map(str, args)], capture_output=True, text=True, timeout=120)


def _refused(p, *needles):
    assert p.returncode != 0, p.stdout
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_reading_other_files_is_refused(store, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("a,b\n1,2\n")
    for q in (f"SELECT * FROM read_csv('{secret}')", f"SELECT * FROM read_text('{secret}')",
              f"SELECT * FROM glob('{tmp_path}/*')", "SELECT * FROM read_csv('/etc/passwd')"):
        _refused(_sql(store, q), "disabled by configuration")


@pytest.mark.parametrize("stmt", ["COPY (SELECT 1 AS a) TO '{out}'", "ATTACH '{db}' AS x", "CREATE TABLE t AS SELECT 1",
                                  "INSTALL httpfs", "LOAD httpfs", "EXPORT DATABASE '{tmp}/exp'",
                                  "SELECT 1; COPY (SELECT 1) TO '{out}'"])
def test_statements_that_write_are_refused(store, tmp_path, stmt):
    q = stmt.format(out=tmp_path / "out.csv", db=tmp_path / "x.duckdb", tmp=tmp_path)
    _refused(_sql(store, q), "refused")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_copy_into_the_store_is_refused_and_the_store_stays_whole(store, tmp_path):
    s = tmp_path / "s.kevo"
    shutil.copytree(store, s)
    victim = s / json.loads((s / "manifest.json").read_text())["tables"]["samples"]["files"][0]
    q = f"COPY (SELECT 1 AS a) TO '{victim}' (FORMAT parquet, USE_TMP_FILE false)"
    _refused(_sql(s, q), "COPY")
    with open_store(s) as st:  # the Python API: same connection rules
        with pytest.raises(QueryError, match="COPY"):
            st.con.execute(q)
        with pytest.raises(QueryError, match="COPY"):
            st.sql(q)
        with pytest.raises(QueryError, match="CREATE"):
            st.con.sql("CREATE OR REPLACE VIEW samples AS SELECT 42 AS sample_id")
        with pytest.raises(Exception, match="disabled by configuration"):
            st.con.execute("SELECT * FROM read_csv('/etc/passwd')").fetchall()
        with pytest.raises(Exception, match="external access"):
            st.con.execute("SET enable_external_access = true")
        st.con.execute("SET threads = 1")  # harmless settings still work
        assert st.sql("SELECT count(*) AS n FROM samples")["n"][0] == st.rows("samples")
    assert verify_store(s).ok


def test_output_still_exports_and_matches_the_query(store, tmp_path):
    q = "SELECT sample_id, sample_key FROM samples ORDER BY sample_id"
    with open_store(store) as st:
        want = st.sql(q)
    for fmt in ("csv", "parquet", "json"):
        out = tmp_path / f"r.{fmt}"
        p = _sql(store, q, "--format", fmt, "--output", out)
        assert p.returncode == 0, p.stderr
        got = {"csv": pl.read_csv, "parquet": pl.read_parquet, "json": pl.read_json}[fmt](out)
        assert got["sample_key"].to_list() == want["sample_key"].to_list()
        p = _sql(store, q, "--format", fmt, "--output", out)  # overwriting an existing export works too
        assert p.returncode == 0, p.stderr
    _refused(_sql(store, q, "--format", "csv", "--output", store / "tables" / "x.csv"), "inside the store")


def test_allow_external_gives_duckdb_back(store, tmp_path):
    out = tmp_path / "mine.csv"
    p = _sql(store, "--allow-external", f"COPY (SELECT count(*) AS n FROM tokens) TO '{out}'")
    assert p.returncode == 0, p.stderr
    assert pl.read_csv(out)["n"][0] == open_store(store).rows("tokens")


def test_missing_sql_file_is_named(store):
    _refused(_sql(store, "nowhere/q.sql"), "SQL file not found: nowhere/q.sql")


def test_embed_tokens_is_one_predicate(store):
    from queries.embed import select_tokens

    with open_store(store) as st:
        uids = select_tokens(st, "step = 0")
        want = st.sql("SELECT token_uid FROM tokens WHERE step = 0 ORDER BY token_uid")["token_uid"].to_numpy()
        assert np.array_equal(uids, want)
        assert len(select_tokens(st, "step = 0 -- a comment")) == len(want)
        for bad in ("true; COPY (SELECT 1) TO '/tmp/x.csv'", "1=1) UNION ALL (SELECT token_uid FROM layers",
                    "true) OR (true"):
            with pytest.raises(KevoError, match="not one SQL predicate"):
                select_tokens(st, bad)
