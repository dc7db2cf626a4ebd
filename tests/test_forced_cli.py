"""`kevo ingest amber --responses` end to end on the organism, through the real command.

A generated store's own responses, forced back into the same model, give the same store: every
table column by column (labels, spans, metrics included), floats to rounding, hidden states to
float16 rounding; samples.mode says which is which. Bad response files: one message each.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ingest.organism import world
from ingest.organism.train import WEIGHTS_DIR
from kevo_store.cli import main
from tests.runner_helpers import kevo, store_content

INGEST = ("--max-new-tokens", "40", "--batch-size", "8", "--top-k", "5")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    d = tmp_path_factory.mktemp("forced")
    data = world.write_world(d / "world", n_images=5, seed=1)
    store = d / "gen.kevo"
    kevo("ingest", "amber", "--data", data, "--model", WEIGHTS_DIR, "--out", store, *INGEST)
    return d, data, store


def _responses(store, path, fmt="json"):
    from kevo_store import open_store

    s = open_store(str(store))
    rows = [{"id": int(i), "response": r} for i, r in s.sql("SELECT item_id, response FROM samples ORDER BY sample_id")
            .iter_rows()]
    if fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_forced_store_equals_the_generated_store(generated):
    d, data, store = generated
    _responses(store, d / "responses.jsonl", fmt="jsonl")
    out = d / "forced.kevo"
    r = kevo("ingest", "amber", "--data", data, "--model", WEIGHTS_DIR, "--out", out, *INGEST,
             "--responses", d / "responses.jsonl")
    assert "teacher forcing: scoring 5 given responses" in r.stderr
    a, b = store_content(store), store_content(out)
    assert a["samples"].num_rows == 5 and a["tokens"].num_rows > 20
    assert set(a["samples"]["mode"].to_pylist()) == {"generated"}
    assert set(b["samples"]["mode"].to_pylist()) == {"forced"}
    sa, sb = a["samples"].drop(["mode"]), b["samples"].drop(["mode"])
    assert sa.equals(sb)  # responses, metrics (AMBER counts), stop reasons, prompts
    assert a["tokens"].equals(b["tokens"])  # labels, spans, pieces, greedy_match (all true)
    tok = b["tokens"].to_pydict()
    match = [g for g, role in zip(tok["greedy_match"], tok["role"]) if role == "generated"]
    assert match and all(match)
    for table in ("layers", "topk"):
        ta, tb = a[table], b[table]
        assert ta.column_names == tb.column_names and ta.num_rows == tb.num_rows
        for c in ta.column_names:
            x, y = ta[c].to_numpy(zero_copy_only=False), tb[c].to_numpy(zero_copy_only=False)
            if x.dtype.kind == "f":
                np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5, err_msg=f"{table}.{c}")
            else:
                np.testing.assert_array_equal(y, x, err_msg=f"{table}.{c}")
    assert (a["hidden"].view(np.uint16) == b["hidden"].view(np.uint16)).mean() > 0.99
    np.testing.assert_allclose(b["hidden"].astype(np.float32), a["hidden"].astype(np.float32), rtol=2e-3, atol=2e-3)
    m = json.loads((out / "manifest.json").read_text())
    gen = m.get("meta", m)["generation"]
    assert gen["decoding"] == "teacher-forced" and gen["responses"]["n"] == 5
    # resuming the forced store with greedy decoding is refused
    p = kevo("ingest", "amber", "--data", data, "--model", WEIGHTS_DIR, "--out", out, *INGEST, check=False)
    assert p.returncode == 1 and "generation.decoding: 'teacher-forced' vs 'greedy'" in p.stderr


def test_bad_response_files(generated):
    d, data, _ = generated
    cases = {
        "missing": ([{"id": 99, "response": "There is a cat."}], "record 1: id 99 is not an item of dataset amber"),
        "empty": ([{"id": 1, "response": "There is a cat."}, {"id": 2, "response": " "}],
                  "record 2: the response of id 2 is empty"),
        "duplicate": ([{"id": 1, "response": "a"}, {"id": 1, "response": "b"}], "id 1 already has a response"),
        "shape": ([{"id": 1, "text": "a"}], "expected {\"id\": <int or str>, \"response\": <str>}"),
    }
    for name, (records, message) in cases.items():
        f = d / f"{name}.json"
        f.write_text(json.dumps(records))
        out = d / f"{name}.kevo"
        # the root `kevo` command in-process (these refusals come before any model is loaded)
        p = CliRunner().invoke(main, ["ingest", "amber", "--data", str(data), "--model", str(WEIGHTS_DIR),
                                      "--out", str(out), "--responses", str(f)])
        assert p.exit_code == 1, (name, p.output)
        err = p.stderr.strip().splitlines()[-1]
        assert err.startswith("kevo: error: --responses ") and message in err, (name, err)
        assert not (out / "manifest.json").exists()  # refused before anything was written


def test_response_the_tokenizer_cannot_round_trip_is_that_samples_error(generated):
    d, data, _ = generated
    f = d / "unknown_word.json"
    f.write_text(json.dumps([{"id": 1, "response": "There is a xylophone on the snow."},
                             {"id": 2, "response": "There is a fish on the snow."}]))
    out = d / "unknown_word.kevo"
    kevo("ingest", "amber", "--data", data, "--model", WEIGHTS_DIR, "--out", out, *INGEST, "--responses", f)
    c = store_content(out)
    assert c["samples"]["item_id"].to_pylist() == ["2"]
    err = c["errors"].to_pylist()
    assert len(err) == 1 and err[0]["item_id"] == "1" and err[0]["stage"] == "prepare"
    assert "cannot round-trip the response" in err[0]["message"] and "xylophone" in err[0]["message"]
