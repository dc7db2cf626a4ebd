"""The named-query library: the same SQL text through DuckDB and Polars, parameters, and `kevo query`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest

import queries
from kevo_store import open_store
from kevo_store.errors import KevoError
from queries.library import SQL_DIR, QueryParamError, definition_defaults, list_fragments
from tests.queries_helpers import assert_frames_close

KEVO = [str(Path(sys.executable).with_name("kevo"))]  # the installed console script
NAMES = [q.name for q in queries.list_queries() if not q.tables]  # trace-* need kevo trace: test_trace_queries


def _kevo(*args, check=True):
    r = subprocess.run(KEVO + list(args), capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def test_the_library_lists_the_paper_s_analyses_and_no_fragment():
    for name in ("critical-layers", "stages", "mutation-events", "hallucination-contrast", "divergence-curves",
                 "top-candidates", "compare-stores"):
        assert name in NAMES
    fragments = {f.name for f in list_fragments()}
    assert {"critical_layer", "critical_layer_js", "mutation_events", "stages", "token_layers", "lens"} <= fragments
    assert not any(n.startswith("_") for n in NAMES)
    with pytest.raises(KevoError, match="no named query '_critical_layer'"):
        queries.load("_critical_layer")
    for q in queries.list_queries():
        assert q.description and q.source.startswith("-- name: " + q.name)
        assert "-- include:" not in q.sql  # every fragment expanded
        for p in q.params:
            assert p.description, (q.name, p.name)


def test_each_parameter_is_declared_once_in_the_sql():
    """A definition's parameters and defaults are written in one file: the fragment that defines them."""
    declared = {}
    for f in sorted(SQL_DIR.glob("*.sql")):
        for line in f.read_text().splitlines():
            m = re.match(r"--\s*param\s+(\w+)\s*:", line)
            if m:
                assert m.group(1) not in declared, (m.group(1), declared.get(m.group(1)), f.name)
                declared[m.group(1)] = f.name
    assert declared["tau"] == "_critical_layer.sql" and declared["min_held"] == "_mutation_events.sql"
    # and the parameters a query offers are the fragments' own objects
    defaults = definition_defaults()
    for q in queries.list_queries():
        for p in q.params:
            if p.name in defaults:
                assert p.default == defaults[p.name], (q.name, p.name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lens", ["final_norm", "raw"])
def test_duckdb_and_polars_agree(planted, other_seed, name, lens):  # noqa: F811
    """The same literal SQL through both engines gives the same rows (floats to float32 precision)."""
    path, _ = planted
    q = queries.load(name)
    params = {"lens": lens}
    if name == "top-candidates":
        params["token_uid"] = 4
    target = [path, path if lens == "raw" else other_seed[0]] if q.stores == 2 else path
    if q.stores == 2 and (lens == "raw" or name == "align-tokens"):  # align-tokens pairs only the same text
        target = [path, path]
    a = queries.run(target, name, engine="duckdb", **params)
    b = queries.run(target, name, engine="polars", **params)
    assert a.height > 0
    assert_frames_close(a, b)


def test_mutation_events_engines_agree_with_non_default_params(planted):  # noqa: F811
    path, _ = planted
    kw = {"tau": 0.6, "min_held": 2, "js_multiple": 3.0, "js_min": 0.02, "label": "correct"}
    assert_frames_close(queries.run(path, "mutation-events", **kw),
                        queries.run(path, "mutation-events", engine="polars", **kw))


@pytest.mark.parametrize("definition", ["emitted", "emitted_stays"])
@pytest.mark.parametrize("name", ["critical-layers", "critical-layer-distribution"])
def test_critical_layer_definitions_engines_agree(planted, name, definition):  # noqa: F811
    path, _ = planted
    kw = {"definition": definition, "lens": "raw", "label": "correct", "tau": 0.6}
    a = queries.run(path, name, **kw)
    assert a.height > 0
    assert_frames_close(a, queries.run(path, name, engine="polars", **kw))
    assert not a.equals(queries.run(path, name, lens="raw", label="correct", tau=0.6))  # top1 differs


def test_bound_sql_is_plain_sql_a_user_can_copy(planted):  # noqa: F811
    path, _ = planted
    b = queries.bind("critical-layers", tau=0.6)
    assert "$" not in b.sql and "0.6" in b.sql
    con = duckdb.connect()
    s = open_store(path)
    for t in ("tokens", "layers"):
        files = ", ".join(f"'{s.fs.full(f)}'" for f in s.manifest["tables"][t]["files"])
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet([{files}])")
    mine = con.sql(b.sql).pl()
    assert_frames_close(mine, queries.run(path, "critical-layers", tau=0.6))


def test_params_defaults_types_and_errors(planted):  # noqa: F811
    path, _ = planted
    r = queries.result(path, "mutation-events", tau="0.7", min_held="4")
    defaults = definition_defaults()
    assert r.params == {**{k: defaults[k] for k in ("lens", "role", "label", "definition", "js_multiple", "js_min")},
                        "tau": 0.7, "min_held": 4}
    assert isinstance(r.params["tau"], float) and isinstance(r.params["min_held"], int)
    with pytest.raises(QueryParamError, match="parameter tau must be float"):
        queries.bind("stages", tau="high")
    with pytest.raises(QueryParamError, match="has no parameter 'nope'.*parameters: lens"):
        queries.bind("stages", nope=1)
    with pytest.raises(QueryParamError, match="definition must be one of top1, emitted, emitted_stays; got 'x'"):
        queries.bind("critical-layers", definition="x")
    assert queries.load("critical-layer-distribution").param("definition").choices == (
        "top1", "emitted", "emitted_stays")
    with pytest.raises(QueryParamError, match="needs the parameter token_uid"):
        queries.bind("top-candidates")
    with pytest.raises(Exception, match="no named query 'stagez'"):
        queries.load("stagez")
    with pytest.raises(Exception, match="has no lens 'logit'"):
        queries.run(path, "stages", lens="logit")
    # quotes in a string parameter stay inside the literal
    evil = "x' OR '1'='1"
    assert "'x'' OR ''1''=''1'" in queries.bind("mutation-events", label=evil).sql
    assert open_store(path).sql(queries.bind("mutation-events", label=evil).sql).height == 0
    # the library binds any label as a literal (it selects nothing); the CLI's check refuses it by name
    assert queries.run(path, "mutation-events", label=evil).height == 0
    from queries.engine import run_bound

    with pytest.raises(KevoError, match="no token of .* has that label; labels present: correct, hallucinated"):
        run_bound(queries.bind("mutation-events", label=evil), path, check_label=True)


def test_header_choices_grammar(tmp_path):
    from queries.library import parse

    q = parse("-- name: x\n-- param d: str = 'a' in (a, b)  -- pick one (in words)\nSELECT $d", tmp_path / "x.sql")
    assert q.param("d").choices == ("a", "b") and q.param("d").description == "pick one (in words)"
    with pytest.raises(ValueError, match="default of d is not one of"):
        parse("-- name: x\n-- param d: str = 'c' in (a, b)\nSELECT $d", tmp_path / "x.sql")
    with pytest.raises(ValueError, match="'in \\(...\\)' is for str parameters"):
        parse("-- name: x\n-- param d: int = 1 in (1, 2)\nSELECT $d", tmp_path / "x.sql")


def test_cli_list_and_show_sql():
    r = _kevo("query", "--list")
    lines = r.stdout.strip().splitlines()
    every = [q.name for q in queries.list_queries()]
    assert len(lines) == len(every)
    assert [ln.split()[0] for ln in lines] == every
    r = _kevo("query", "stages", "--show-sql", "-p", "tau=0.55")
    assert "0.55" in r.stdout and "$tau" not in r.stdout and r.stdout.startswith("-- name: stages")


def test_cli_params_lists_what_the_query_file_and_its_fragments_declare():
    """`kevo query NAME --params`: every parameter with the default the SQL declares, as a tool reads it
    (the experiments take tau and lens from here instead of restating them)."""
    for name in ("mutation-events", "critical-layer-distribution", "top-candidates"):
        q = queries.load(name)
        doc = json.loads(_kevo("query", name, "--params", "--format", "json").stdout)
        assert list(doc) == [p.name for p in q.params]
        assert {k: v["default"] for k, v in doc.items()} == {p.name: p.default for p in q.params}
    doc = json.loads(_kevo("query", "mutation-events", "--params", "--format", "json").stdout)
    assert doc["tau"]["default"] == definition_defaults()["tau"] and doc["definition"]["choices"][0] == "top1"
    text = _kevo("query", "top-candidates", "--params").stdout
    assert re.search(r"^token_uid\s+int \(required\)", text, re.M)


def test_cli_formats_record_params(planted, tmp_path):  # noqa: F811
    path, truth = planted
    r = _kevo("query", "mutation-events", path, "--hallucinated", "--format", "json")
    doc = json.loads(r.stdout)
    assert doc["query"] == "mutation-events" and doc["params"]["label"] == "hallucinated"
    assert doc["stores"] == [str(open_store(path).path)]
    assert {row["label"] for row in doc["rows"]} == {"hallucinated"}
    out = tmp_path / "c.parquet"
    _kevo("query", "critical-layers", path, "-p", "tau=0.6", "--format", "parquet", "-o", str(out))
    meta = json.loads(pq.read_schema(out).metadata[b"kevo.query"])
    assert meta["params"]["tau"] == 0.6
    assert pl.read_parquet(out).height == 360
    csv = tmp_path / "c.csv"
    _kevo("query", "stages", path, "--format", "csv", "-o", str(csv))
    assert pl.read_csv(csv).height == 360
    assert json.loads((tmp_path / "c.csv.params.json").read_text())["params"] == queries.bind("stages").params
    r = _kevo("query", "critical-layers", path)
    assert r.stdout.startswith("# critical-layers  lens='final_norm'") and "critical_layer_js" in r.stdout
    r = _kevo("query", "compare-stores", path, path, "--format", "json")
    assert json.loads(r.stdout)["rows"][0]["token_agreement"] == 1.0


@pytest.mark.parametrize("args, msg", [
    (["query", "stagez", "X"], "no named query 'stagez'"),
    (["query", "top-candidates", "{store}"], "needs the parameter token_uid"),
    (["query", "stages", "{store}", "-p", "lens=logit"], "has no lens 'logit'"),
    (["query", "stages", "{store}", "-p", "tau=abc"], "parameter tau must be float"),
    (["query", "critical-layer-distribution", "{store}", "-p", "definition=emited"],
     "parameter definition must be one of top1, emitted, emitted_stays; got 'emited'"),
    (["query", "stages", "/nonexistent/x.kevo"], "/nonexistent/x.kevo"),
    (["query", "compare-stores", "{store}"], "compares two stores"),
])
def test_cli_user_errors(planted, args, msg):  # noqa: F811
    path, _ = planted
    r = _kevo(*[a.replace("{store}", path) for a in args], check=False)
    assert r.returncode != 0
    assert re.search(re.escape(msg), r.stderr), r.stderr
    assert "Traceback" not in r.stderr


def test_kevo_query_imports_neither_torch_nor_matplotlib(planted):  # noqa: F811
    path, _ = planted
    code = ("import sys; from click.testing import CliRunner; from kevo_store.cli import main; "
            f"r = CliRunner().invoke(main, ['query', 'stages', {path!r}, '--format', 'csv']); "
            "assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'openTSNE', 'transformers') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_fragments_expand_to_plain_sql(tmp_path, monkeypatch):
    """The include mechanism on a toy library: expansion, parameters, 'as' suffixes, and its errors."""
    from queries import library

    monkeypatch.setattr(library, "SQL_DIR", tmp_path)
    (tmp_path / "_base.sql").write_text(
        "-- fragment: base\n-- description: rows above a floor\n-- param floor: int = 2  -- the floor\n"
        "src AS (SELECT x FROM range(10) t(x) WHERE x >= $floor)\n")
    (tmp_path / "_top.sql").write_text(
        "-- fragment: top\n-- description: the largest row\n-- reads: src\n-- include: base\n"
        "-- param k: int = 1  -- how many\n"
        "best AS (SELECT x FROM src ORDER BY x DESC LIMIT $k)\n")
    (tmp_path / "q.sql").write_text("-- name: q\n-- description: d\nWITH\n-- include: top\n"
                                    "SELECT (SELECT COUNT(*) FROM src) AS n, (SELECT MIN(x) FROM best) AS lo\n")
    q = library.load("q")
    assert [p.name for p in q.params] == ["floor", "k"] and q.fragments == ("top", "base")
    assert [f.name for f in library.list_fragments()] == ["base", "top"]
    assert [x.name for x in library.list_queries()] == ["q"]
    b = library.bind("q", floor=5, k=2)
    assert duckdb.sql(b.sql).fetchall() == [(5, 8)]  # the bound text is plain SQL
    # 'as': one copy per suffix, every CTE of the fragment renamed
    (tmp_path / "two.sql").write_text("-- name: two\n-- description: d\nWITH\n-- include: base as a\n"
                                      "-- include: base as b\nSELECT (SELECT COUNT(*) FROM src_a) + "
                                      "(SELECT COUNT(*) FROM src_b) AS n\n")
    assert duckdb.sql(library.bind("two").sql).fetchall() == [(16,)]
    # a fragment included plainly and, through another, with a suffix: both copies are there
    (tmp_path / "mix.sql").write_text("-- name: mix\n-- description: d\nWITH\n-- include: base\n"
                                      "-- include: top as a\nSELECT (SELECT COUNT(*) FROM src) AS n, "
                                      "(SELECT MIN(x) FROM best_a) AS lo, (SELECT COUNT(*) FROM src_a) AS m\n")
    assert duckdb.sql(library.bind("mix", floor=4).sql).fetchall() == [(6, 9, 6)]
    # ... and a fragment first included on its own under a suffix, then again through another
    (tmp_path / "mix2.sql").write_text("-- name: mix2\n-- description: d\nWITH\n-- include: base as a\n"
                                       "-- include: top as a\nSELECT (SELECT MIN(x) FROM best_a) AS lo\n")
    assert duckdb.sql(library.bind("mix2", floor=4, k=3).sql).fetchall() == [(7,)]
    bad = {
        "-- name: e1\n-- description: d\nWITH\n-- include: nope\nSELECT 1\n": "no fragment 'nope'",
        "-- name: e2\n-- description: d\n-- param floor: int = 3  -- again\nWITH\n-- include: base\nSELECT 1\n":
            "parameter floor is declared here and by a fragment",
        "-- name: e3\n-- description: d\nWITH\n-- include: base\nsrc AS (SELECT 1 AS x)\nSELECT 1\n":
            r"CTE names defined twice.*\['src'\]",
    }
    for text, msg in bad.items():
        (tmp_path / "e.sql").write_text(text.replace(text.split("\n")[0], "-- name: e"))
        with pytest.raises(ValueError, match=msg):
            library.load("e")
    (tmp_path / "_loop.sql").write_text("-- fragment: loop\n-- description: d\n-- include: loop\nz AS (SELECT 1)\n")
    (tmp_path / "e.sql").write_text("-- name: e\n-- description: d\nWITH\n-- include: loop\nSELECT 1\n")
    with pytest.raises(ValueError, match="fragments include each other: loop -> loop"):
        library.load("e")
    (tmp_path / "_loop.sql").write_text("-- fragment: loop\n-- description: d\nz AS (SELECT $nope)\n")
    with pytest.raises(ValueError, match=r"_loop.sql: undeclared parameters \['nope'\]"):
        library.load("e")


def test_citations_of_docs_analyses_name_its_sections():
    """Code cites docs/analyses.md by section heading; every cited heading exists there."""
    root = Path(__file__).resolve().parents[1]
    headings = set(re.findall(r"^## (.+)$", (root / "docs" / "analyses.md").read_text(), re.M))
    assert {"Logit lens", "Critical layer", "Mutation events", "Stages", "Hallucination link",
            "Cross-image clustering", "Skip experiments", "Store guarantees"} <= headings
    cited = []
    for f in [*root.glob("queries/**/*.py"), *root.glob("queries/sql/*.sql"), *root.glob("ingest/**/*.py")]:
        cited += re.findall(r'docs/analyses\.md(?:,|\s*\()\s*"([^"]+)"', f.read_text())
    assert cited and set(cited) <= headings, set(cited) - headings
