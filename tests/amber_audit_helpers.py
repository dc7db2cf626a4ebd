"""The official AMBER pipeline's data and a regression set made with the official evaluator (outside the repository).

- ``../shared/nltk_data``: NLTK's punkt_tab, averaged_perceptron_tagger_eng and WordNet 3.0, the data
  the official ``inference.py`` needs (a user installs them with ``nltk.download``).
- ``../shared/amber-audit``: 1,004 responses and the official evaluator's per-response counts
  (``inference.py`` unmodified, NLTK 3.10.4, exact matching), with ``../shared/amber/data``'s annotations.

A clone has neither: every user of these helpers skips, saying which folder is missing.

    python -m tests.amber_audit_helpers     # offline and nltk modes against the official counts
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
NLTK_DATA = SHARED / "nltk_data"
AUDIT = SHARED / "amber-audit"
AMBER_DATA = SHARED / "amber" / "data"
OFFICIAL = AUDIT / "official-nltk3.10.4-exact.per_response.jsonl"
COUNTS = ("chair_score", "chair_num", "safe_cover_score", "safe_cover_num", "hallu_cover_score", "hallu_cover_num",
          "non_hallu_score")


def require_nltk_data() -> Path:
    """../shared/nltk_data, where NLTK is importable and the folder present (else skip)."""
    pytest.importorskip("nltk", reason="nltk is not installed (pip install 'kevo[amber]')")
    if not (NLTK_DATA / "taggers").is_dir():
        pytest.skip(f"{NLTK_DATA} is absent: the official pipeline's NLTK data is not available here")
    return NLTK_DATA


def faithful_env() -> dict:
    """A subprocess environment in which `kevo` finds NLTK's data (skips where it cannot)."""
    return {**os.environ, "NLTK_DATA": str(require_nltk_data())}


def require_audit() -> tuple[list[dict], dict[int, dict]]:
    """(responses, official per-response counts by id), or skip."""
    for p in (AUDIT / "responses-1004.json", OFFICIAL, AMBER_DATA / "annotations.json"):
        if not p.is_file():
            pytest.skip(f"{p} is absent: the AMBER audit set (official evaluator's counts) is not available here")
    responses = json.loads((AUDIT / "responses-1004.json").read_text(encoding="utf-8"))
    official = {r["id"]: r for r in map(json.loads, OFFICIAL.read_text(encoding="utf-8").splitlines())}
    return responses, official


def counts_of(metrics: dict) -> dict:
    """kevo's per-sample metrics as the official evaluator's accumulators."""
    out = {k: metrics[k] for k in COUNTS[:-1]}
    out["non_hallu_score"] = 0 if metrics["hallucinated"] else 1
    return out


def run_audit(nouns: str) -> dict:
    """kevo in mode ``nouns`` on the audit set, compared response by response with the official counts.

    ``differ``: responses whose counts differ; ``differ_mentions``: whose in-vocabulary nouns (in order) differ."""
    from ingest.eval import amber_pairs_from_responses, evaluate_amber

    responses, official = require_audit()
    pairs = amber_pairs_from_responses(responses, AMBER_DATA, AUDIT / "responses-1004.json")
    per: list[dict] = []
    result = evaluate_amber(pairs, AMBER_DATA, nouns, per_sample=per)
    differ, differ_mentions = [], []
    for row in per:
        ref = official[row["id"]]
        mine = counts_of(row)
        theirs = {k: int(ref[k]) for k in COUNTS}
        mentions = [m["object"] for m in row["mentions"]]
        if mine != theirs:
            differ.append({"id": row["id"], "kevo": mine, "official": theirs})
        if mentions != ref["nouns_in_vocab"]:
            differ_mentions.append({"id": row["id"], "kevo": mentions, "official": ref["nouns_in_vocab"]})
    return {"result": result, "differ": differ, "differ_mentions": differ_mentions, "n": len(per),
            "official_totals": official_totals(official)}


def official_totals(official: dict[int, dict]) -> dict:
    """CHAIR / Cover / Hal / Cog from the official accumulators (denominators starting at 0.001, as metrics.txt)."""
    s = {k: sum(r[k] for r in official.values()) for k in (*COUNTS, "non_hallu_num")}
    return {"CHAIR": round(s["chair_score"] / (s["chair_num"] + 0.001) * 100, 1),
            "Cover": round(s["safe_cover_score"] / (s["safe_cover_num"] + 0.001) * 100, 1),
            "Hal": round(100 - s["non_hallu_score"] / (s["non_hallu_num"] + 0.001) * 100, 1),
            "Cog": round(s["hallu_cover_score"] / (s["hallu_cover_num"] + 0.001) * 100, 1)}


def deltas(audit: dict) -> dict:
    """kevo minus official, in points, per metric."""
    g = audit["result"]["generative"]
    return {k: round(g[k] - audit["official_totals"][k], 1) for k in ("CHAIR", "Cover", "Hal", "Cog")}


if __name__ == "__main__":  # pragma: no cover - a measurement, for the docs
    os.environ.setdefault("NLTK_DATA", str(NLTK_DATA))
    for mode in ("offline", "nltk"):
        a = run_audit(mode)
        g = a["result"]["generative"]
        print(f"{mode:8} responses differing {len(a['differ'])}/{a['n']}  "
              + "  ".join(f"{k} {g[k]:.1f} ({d:+.1f})" for k, d in deltas(a).items()),
              f"official {a['official_totals']}")
