"""MultEdit on the embedded organism (the shipped weights), measured as `kevo edit eval` store comparisons:
the README's co-occurrence hallucination ("There is a car, a tree ..." for an image with no tree)
edited away, with efficacy on the request, generalisation on templated paraphrases of its question,
specificity on unrelated yes/no questions (exact tokens) and on the caption set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.organism.train import WEIGHTS_DIR

KEVO = Path(sys.executable).parent / "kevo"

pytestmark = pytest.mark.timeout(1200)


def _kevo(*args, cwd=None, check=True):
    r = subprocess.run([str(KEVO), *map(str, args)], capture_output=True, text=True, timeout=900, cwd=cwd)
    if check:
        assert r.returncode == 0, f"kevo {' '.join(map(str, args))}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    """12 test images (seed 0: the captions of images 1 and 3 name a tree after a car, and miss a cup),
    the requests `kevo edit hallucinations` makes of them, `kevo edit` of MLP block 1 (where the demo's
    causal trace finds the object written: `--from-trace` on its store picks block 1) with the released
    defaults otherwise, and `kevo edit eval` on the requests, their paraphrases, 24 unrelated questions
    and the 12 captions."""
    from ingest.trace.questions import constraint_questions

    d = tmp_path_factory.mktemp("edit-organism")
    _kevo("organism", "world", "--out", d / "world", "--n-images", 12)
    _kevo("ingest", "amber", "--data", d / "world", "--task", "generative", "--model", WEIGHTS_DIR,
          "--out", d / "cap.kevo", "--hidden", "none")
    _kevo("edit", "hallucinations", d / "cap.kevo", "--trigger", "car", "--partner", "tree",
          "--images", d / "world" / "image", "--out", d / "requests.jsonl")
    _kevo("edit", "--model", WEIGHTS_DIR, "--requests", d / "requests.jsonl", "--out", d / "edited", "--layer", 1)
    # unrelated: the world's existence and colour questions about every object but the car
    rows = [json.loads(x) for x in constraint_questions(d / "world" / "data", d / "all.jsonl").read_text().splitlines()]
    unrelated = [r for r in rows if r["constraint"] != "car"][:24]
    (d / "unrelated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in unrelated))
    _kevo("edit", "eval", "--original", WEIGHTS_DIR, "--edited", d / "edited", "--requests", d / "requests.jsonl",
          "--unrelated", d / "unrelated.jsonl", "--unrelated-images", d / "world" / "image",
          "--captions", d / "world", "--out", d / "eval")
    return d, json.loads((d / "eval" / "comparison.json").read_text())


def test_the_request_is_the_readme_hallucination(edited):
    d, _ = edited
    reqs = [json.loads(x) for x in (d / "requests.jsonl").read_text().splitlines()]
    assert [(r["id"], r["prefix"], r["constraint"], r["target"]) for r in reqs] == [
        ("1", "There is a car and a", "car", "cup"), ("3", "There is a car, a", "car", "cup")]
    rec = json.loads((d / "edited" / "edit.json").read_text())
    assert rec["layer"] == 1 and rec["lam"] == 0.01 and 0 < rec["weight_delta_norm"] < rec["weight_norm"]


def test_efficacy_the_target_becomes_the_answer(edited):
    """Request 1 ("There is a car and a" -> cup): the cup becomes the greedy word. Request 3 ("There is
    a car, a" -> cup) asks for a word the organism never writes there (its captions list objects in a
    fixed order, and image 3's ball comes before the cup): it stays out of reach, and the table says so."""
    _, c = edited
    assert c["efficacy"]["original"]["n"] == c["efficacy"]["edited"]["n"] == 2
    rows = {m: {r["id"]: r for r in c["per_request"][m] if not r.get("paraphrase")} for m in ("original", "edited")}
    before, after = rows["original"]["1"], rows["edited"]["1"]
    assert before["rank_target"] > 1 and after["rank_target"] == 1, (before, after)
    assert after["p_target"] > before["p_target"] + 0.3, (before, after)
    assert rows["original"]["3"]["p_target"] < 0.01 and rows["edited"]["3"]["p_target"] < 0.01


def test_generalisation_on_templated_paraphrases(edited):
    """The request has no paraphrases of its own: kevo edit eval rewrites its question ("Describe this
    image." -> "... picture.", "... photo.", "Describe the scene.", "Please answer: ..."); the key is
    read in the answer prefix, after the question, so every rewrite changes what the key sees."""
    _, c = edited
    assert c["generalisation"]["original"]["n"] == c["generalisation"]["edited"]["n"] == 8
    rows = {m: [r for r in c["per_request"][m] if r.get("paraphrase") and r["id"] == "1"]
            for m in ("original", "edited")}
    assert {r["rewrite"] for r in rows["edited"]} == {"image-word", "lead-in"}
    assert "Describe the scene." in {r["question"] for r in rows["edited"]}
    mean = {m: sum(r["p_target"] for r in rs) / len(rs) for m, rs in rows.items()}
    assert all(r["rank_target"] == 1 for r in rows["edited"]) and mean["edited"] > mean["original"] + 0.2, mean
    assert set(c["generalisation_by_rewrite"]["edited"]) == {"image-word", "lead-in"}


def test_specificity_unrelated_answers_keep_their_tokens(edited):
    """The unrelated questions, ingested by both models into ordinary stores: every greedy answer is
    the same, token for token; the two stores cannot be merged (other weights), and merge says so."""
    from kevo_store import open_store

    d, c = edited
    s = c["specificity"]["edited"]
    assert s["n"] == 24 and s["unchanged_rate"] == 1.0 and s["changed"] == []
    q = ("SELECT s.sample_key, t.step, t.token_id FROM tokens t JOIN samples s USING (sample_id) "
         "WHERE t.role = 'generated' ORDER BY s.sample_key, t.step")
    a = open_store(str(d / "eval" / "original-unrelated.kevo")).sql(q)
    b = open_store(str(d / "eval" / "edited-unrelated.kevo")).sql(q)
    assert a.height >= 24 and a.equals(b)
    r = _kevo("store", "merge", d / "eval" / "original-unrelated.kevo", d / "eval" / "edited-unrelated.kevo",
              "--out", d / "merged.kevo", check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert "model.fingerprint.files.model.safetensors" in r.stderr, r.stderr  # names the weights that differ
    assert not (d / "merged.kevo" / "manifest.json").exists()


def test_captions_before_and_after(edited):
    """The caption set through both models: the edited caption loses its tree; CHAIR and the share of
    captions left as they were are reported (a single edit of a 7 MB model is not surgical)."""
    from kevo_store import open_store

    d, c = edited
    cap = c["captions"]
    assert {"CHAIR", "Cover", "Hal", "Cog"} <= set(cap["original"]) and {"CHAIR", "Cover"} <= set(cap["edited"])
    u = cap["edited"]["unchanged"]
    assert u["n"] == 12 and 0.5 <= u["unchanged_rate"] < 1.0
    (changed,) = [x for x in u["changed"] if x["key"] == "amber:1"]
    assert "tree" in changed["before"] and "tree" not in changed["after"] and "cup" in changed["after"]
    resp = open_store(str(d / "eval" / "edited-captions.kevo")).sql(
        "SELECT response FROM samples WHERE sample_key = 'amber:1'")["response"][0]
    assert resp == changed["after"]


def test_the_edited_directory_ingests_like_any_model(edited):
    """`kevo ingest vqa --model EDITED_DIR`: an ordinary model directory; the store records it with its
    own weights fingerprint, and its answers are those kevo edit eval stored for the edited model."""
    from kevo_store import open_store

    d, _ = edited
    out = d / "by-cli.kevo"
    _kevo("ingest", "vqa", "--questions", d / "unrelated.jsonl", "--images", d / "world" / "image",
          "--model", d / "edited", "--out", out, "--hidden", "none", "--max-new-tokens", 32)
    mine, theirs = open_store(str(out)), open_store(str(d / "eval" / "edited-unrelated.kevo"))
    orig = open_store(str(d / "eval" / "original-unrelated.kevo"))
    assert Path(mine.model["path"]).resolve() == (d / "edited").resolve()
    assert mine.model["fingerprint"]["sha256"] == theirs.model["fingerprint"]["sha256"]
    assert mine.model["fingerprint"]["sha256"] != orig.model["fingerprint"]["sha256"]
    q = "SELECT sample_key, response FROM samples ORDER BY sample_key"
    assert mine.sql(q).equals(theirs.sql(q))
