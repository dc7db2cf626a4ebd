"""`kevo eval amber --responses` (the real command) on the fixture, and its user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.amber_audit_helpers import faithful_env
from tests.amber_helpers import FIXTURE, make_amber_dir

KEVO = str(Path(sys.executable).parent / "kevo")


def _kevo(*args, cwd=None, env=None):
    return subprocess.run([KEVO, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120, env=env)


def _nltk_finds_nothing_env(tmp_path) -> dict:
    """NLTK_DATA at an empty folder; skips where NLTK's usual paths hold the data anyway."""
    empty = tmp_path / "no-nltk-data"
    empty.mkdir(exist_ok=True)
    env = {**os.environ, "NLTK_DATA": str(empty)}
    probe = subprocess.run([sys.executable, "-c", "from ingest.labels.nouns import NltkNouns; NltkNouns()"],
                           capture_output=True, text=True, env=env, timeout=120)
    if probe.returncode == 0:
        pytest.skip("NLTK's data is installed in one of NLTK's usual paths: the fallback cannot be shown here")
    return env


def test_eval_responses_json_and_table(tmp_path):
    root = make_amber_dir(tmp_path, images=False)
    r = _kevo("eval", "amber", "--responses", FIXTURE / "responses.json", "--data", root, "--json",
              "--nouns", "offline")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    # the same hand-worked numbers as tests/test_labels_amber.py::test_totals_match_the_hand_computed_official_numbers
    g = out["generative"]
    assert (g["CHAIR"], g["Cover"], g["Hal"], g["Cog"]) == (18.7, 31.2, 50.0, 5.0)
    assert g["counts"]["chair_num"] == 16.001 and g["n"] == 4
    off, norm = out["discriminative"]["official"], out["discriminative"]["normalised"]
    assert (off["all"]["accuracy"], off["all"]["f1"]) == (33.3, 40.0)
    assert (norm["all"]["accuracy"], norm["all"]["f1"]) == (83.3, 85.7)
    assert set(off) == {"all", "existence", "attribute", "state", "relation"}
    assert out["settings"]["nouns"] == "offline" and out["settings"]["similarity"] == "exact"
    assert "warning" not in r.stderr                   # offline on request: no fallback warning

    per = tmp_path / "per.jsonl"
    r = _kevo("eval", "amber", "--responses", FIXTURE / "responses.json", "--data", root, "--per-sample", per,
              "--nouns", "offline")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in per.read_text().splitlines()]
    assert [row["id"] for row in rows] == [1, 2, 3, 6, 1005, 1006, 8633, 13193, 13557, 15220]
    assert [(m["text"], m["label"]) for m in rows[1]["mentions"]][3:] == [("camera", "safe"), ("TV", "hallucinated"),
                                                                          ("pier", "hallucinated")]
    assert rows[4]["answer_normalised"] == "yes" and rows[4]["answer_official"] is None
    assert "CHAIR      18.7" in r.stdout and "Cog         5.0" in r.stdout
    assert "all" in r.stdout and "33.3" in r.stdout and "83.3" in r.stdout
    assert "nouns=offline (kevo's offline approximation)" in r.stdout.splitlines()[0]


def test_eval_default_runs_the_official_pipeline_where_nltk_data_is_found(tmp_path):
    env = faithful_env()
    root = make_amber_dir(tmp_path, images=False)
    r = _kevo("eval", "amber", "--responses", FIXTURE / "responses.json", "--data", root, env=env)
    assert r.returncode == 0, r.stderr
    import nltk

    head = r.stdout.splitlines()[0]
    assert f"nouns=nltk (the official NLTK pipeline, NLTK {nltk.__version__})" in head
    assert "warning" not in r.stderr
    # the hand-worked fixture numbers hold in the official pipeline too
    assert "CHAIR      18.7" in r.stdout and "Cog         5.0" in r.stdout
    out = json.loads(_kevo("eval", "amber", "--responses", FIXTURE / "responses.json", "--data", root, "--json",
                           env=env).stdout)
    assert (out["settings"]["nouns"], out["settings"]["nouns_requested"]) == ("nltk", "auto")


def test_eval_default_without_nltk_data_warns_with_the_measured_difference(tmp_path):
    from ingest.labels.nouns import OFFLINE_MEASURED

    env = _nltk_finds_nothing_env(tmp_path)
    root = make_amber_dir(tmp_path, images=False)
    r = _kevo("eval", "amber", "--responses", FIXTURE / "responses.json", "--data", root, env=env)
    assert r.returncode == 0, r.stderr
    assert "nouns=offline (kevo's offline approximation)" in r.stdout.splitlines()[0]
    warning = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1, r.stderr
    m = OFFLINE_MEASURED
    assert "NLTK data 'punkt_tab'" in warning[0] and "python -m nltk.downloader punkt_tab" in warning[0]
    assert f"on {m['differ']} of {m['responses']} audit responses" in warning[0]
    assert f"CHAIR {m['CHAIR']:+.1f}, Cover {m['Cover']:+.1f}" in warning[0]


def test_eval_similarity_table_changes_the_numbers(tmp_path):
    root = make_amber_dir(tmp_path, images=False)
    table = tmp_path / "sim.json"
    table.write_text(json.dumps({"words": ["pier", "bridge"], "similarity": [[1, 0.9], [0.9, 1]]}))
    r = _kevo("eval", "amber", "--responses", FIXTURE / "responses.json", "--data", root, "--json",
              "--similarity", table)
    assert r.returncode == 0, r.stderr
    g = json.loads(r.stdout)["generative"]
    # "pier" is now similar to id 2's truth "bridge": one hallucination fewer (2 of 16 mentions)
    assert g["CHAIR"] == round(2 / 16.001 * 100, 1) and g["Cover"] == 31.2


def test_eval_user_errors(tmp_path):
    root = make_amber_dir(tmp_path, images=False)
    bad = tmp_path / "bad.json"
    bad.write_text('[\n{"id": 1, "response": "A dog."},\n{"id": 2, "response": "oops}\n]')
    r = _kevo("eval", "amber", "--responses", bad, "--data", root)
    assert r.returncode != 0 and "bad.json: malformed JSON at line 3" in r.stderr and "record 2" in r.stderr
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"id": 1, "response": "x"}, {"id": 99999, "response": "y"}]))
    r = _kevo("eval", "amber", "--responses", wrong, "--data", root)
    assert r.returncode != 0 and "wrong.json, record 2: id 99999 is out of range" in r.stderr
    shape = tmp_path / "shape.json"
    shape.write_text(json.dumps([{"id": 1, "text": "x"}]))
    r = _kevo("eval", "amber", "--responses", shape, "--data", root)
    assert r.returncode != 0 and "shape.json, record 1: expected" in r.stderr
    r = _kevo("eval", "amber", "--responses", wrong)
    assert r.returncode != 0 and "--data" in r.stderr
    r = _kevo("eval", "amber")
    assert r.returncode != 0 and "STORE or --responses" in r.stderr
    r = _kevo("eval", "amber", tmp_path / "no-store")
    assert r.returncode != 0 and "no-store" in r.stderr and "Traceback" not in r.stderr


def test_eval_nltk_without_its_data_names_the_resource(tmp_path):
    env = _nltk_finds_nothing_env(tmp_path)
    root = make_amber_dir(tmp_path, images=False)
    r = _kevo("eval", "amber", "--responses", FIXTURE / "responses.json", "--data", root, "--nouns", "nltk",
              env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    msg = r.stderr.strip().splitlines()[-1]
    assert "NLTK data 'punkt_tab'" in msg and "python -m nltk.downloader punkt_tab" in msg, msg
    assert "*" not in msg and str(env["NLTK_DATA"]) in msg


def test_nltk_message_with_colour_codes_names_the_resource():
    """Some NLTK versions wrap the resource name in terminal colour codes inside a banner of asterisks."""
    from ingest.labels.nouns import nltk_missing_message

    banner = ("\n" + "*" * 70 + "\n  Resource \x1b[93maveraged_perceptron_tagger_eng\x1b[0m not found.\n"
              "  Please use the NLTK Downloader to obtain the resource:\n\n  >>> import nltk\n"
              "  >>> nltk.download('averaged_perceptron_tagger_eng')\n  \n  For more information see: "
              "https://www.nltk.org/data.html\n\n  Attempted to load \x1b[93mtaggers/averaged_perceptron_tagger_eng/"
              "\x1b[0m\n\n  Searched in:\n    - '/root/nltk_data'\n" + "*" * 70 + "\n")
    msg = nltk_missing_message(LookupError(banner))
    assert msg.startswith("NLTK data 'averaged_perceptron_tagger_eng' (taggers/averaged_perceptron_tagger_eng/) "
                          "not found"), msg
    assert "python -m nltk.downloader averaged_perceptron_tagger_eng " in msg and "\x1b" not in msg and "*" not in msg


def test_eval_empty_responses(tmp_path):
    root = make_amber_dir(tmp_path, images=False)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps([{"id": 1, "response": ""}, {"id": 1005, "response": ""}]))
    r = _kevo("eval", "amber", "--responses", empty, "--data", root, "--json", "--nouns", "offline")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    # no mention, no coverage; Hal = 100 - 1/1.001*100 = 0.1 (the official 0.001 start shows)
    assert (out["generative"]["CHAIR"], out["generative"]["Cover"], out["generative"]["Hal"]) == (0.0, 0.0, 0.1)
    assert out["discriminative"]["official"]["all"]["accuracy"] == 0.0
