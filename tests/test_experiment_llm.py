"""`kevo experiment llm`: an LVLM's responses teacher-forced into a text-only LLM, compared token by token.

- Same vocabulary (the organism and its own decoder as a text-only LLM): every token pairs with the
  identical token; the per-token critical layers equal a recomputation from each store's layers.
- Different vocabularies (tiny LLaVA vs a tiny causal LM with another tokenizer): the output says
  the tokens are aligned by characters, and the pairs equal a character alignment computed here
  from the two stores' token spans.
"""

from __future__ import annotations

import csv
import json

from ingest.organism import world
from ingest.organism.train import WEIGHTS_DIR
from kevo_store import open_store
from tests.experiment_helpers import organism_llm
from tests.runner_helpers import kevo, make_images, tiny_model_dir


def _critical(store, tau=0.5):
    s = open_store(str(store))
    df = s.sql(f"SELECT token_uid, MIN(CASE WHEN top1_prob >= {tau} THEN layer END) AS c FROM layers "
               "WHERE lens = 'final_norm' GROUP BY token_uid")
    return dict(df.iter_rows())


def _spans(store):
    s = open_store(str(store))
    df = s.sql("SELECT s.sample_key, s.item_id, t.token_uid, t.char_start, t.char_end FROM tokens t "
               "JOIN samples s ON s.sample_id = t.sample_id WHERE t.role = 'generated' AND t.char_end > t.char_start "
               "ORDER BY t.token_uid")
    return df.to_dicts()


def test_llm_same_vocabulary_on_the_organism(tmp_path):
    data = world.write_world(tmp_path / "world", n_images=3, seed=1)
    lvlm = tmp_path / "organism.kevo"
    kevo("ingest", "amber", "--data", data, "--model", WEIGHTS_DIR, "--out", lvlm, "--max-new-tokens", "24",
         "--top-k", "3", "--batch-size", "3")
    llm = organism_llm(tmp_path / "organism-llm")
    out = tmp_path / "llm.kevo"
    r = kevo("experiment", "llm", lvlm, "--llm", llm, "--out", out)
    assert "same vocabulary" in r.stdout and "aligned by characters" not in r.stdout
    art = tmp_path / "llm.comparison"
    result = json.loads((art / "comparison.json").read_text())
    assert result["same_vocabulary"] and result["n_failed"] == 0 and result["n_scored"] == 3
    a, b = open_store(str(lvlm)), open_store(str(out))
    # the LLM scored exactly the LVLM's responses, forced, with the same prompt text-only
    sa = dict(a.sql("SELECT sample_key, response FROM samples").iter_rows())
    sb = b.sql("SELECT item_id, response, mode, prompt_text FROM samples").to_dicts()
    assert {x["item_id"]: x["response"] for x in sb} == sa
    assert {x["mode"] for x in sb} == {"forced"} and all("<image>" not in x["prompt_text"] for x in sb)
    with (art / "tokens.csv").open() as f:
        rows = list(csv.DictReader(f))
    spans_a = _spans(lvlm)
    assert len(rows) == len(spans_a) == result["n_aligned_tokens"] and {x["alignment"] for x in rows} == {"same"}
    ca, cb = _critical(lvlm), _critical(out)
    for x in rows:
        assert x["piece_a"] == x["piece_b"]
        assert (x["critical_layer_a"] or None) == (None if ca[int(x["uid_a"])] is None else str(ca[int(x["uid_a"])]))
        assert (x["critical_layer_b"] or None) == (None if cb[int(x["uid_b"])] is None else str(cb[int(x["uid_b"])]))
    assert (art / "comparison.png").stat().st_size > 5000
    assert {"comparison", "comparison_distribution", "comparison_js_prev"} <= set(b.tables)
    kevo("report", out, "-o", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert "LVLM against its LLM on the same tokens" in page and "critical layer / L (median)" in page


def test_llm_with_another_vocabulary_aligns_by_characters(tmp_path):
    images = make_images(tmp_path / "img", 2)
    lvlm = tmp_path / "llava.kevo"
    kevo("ingest", "folder", "--images", images, "--prompt", "Describe this image.", "--model",
         tiny_model_dir("llava"), "--out", lvlm, "--max-new-tokens", "8", "--top-k", "3")
    out = tmp_path / "lm.kevo"
    r = kevo("experiment", "llm", lvlm, "--llm", tiny_model_dir("causal_lm"), "--out", out)
    assert "the vocabularies differ" in r.stdout and "aligned by characters" in r.stdout
    result = json.loads((tmp_path / "lm.comparison" / "comparison.json").read_text())
    assert not result["same_vocabulary"]
    with (tmp_path / "lm.comparison" / "tokens.csv").open() as f:
        rows = [(int(x["uid_a"]), int(x["uid_b"]), x["alignment"]) for x in csv.DictReader(f)]
    # the character alignment, computed here: each LVLM token -> the LM token holding its first character
    a, b = _spans(lvlm), _spans(out)
    expect = []
    for t in a:
        holder = [u for u in b
                  if u["item_id"] == t["sample_key"] and u["char_start"] <= t["char_start"] < u["char_end"]]
        if holder:
            assert len(holder) == 1
            h = holder[0]
            same = (h["char_start"], h["char_end"]) == (t["char_start"], t["char_end"])
            expect.append((t["token_uid"], h["token_uid"], "same" if same else "chars"))
    assert rows == expect and len(rows) > 0
