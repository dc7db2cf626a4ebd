"""kevo's AMBER modes against the official evaluator's own per-response counts on 1,004 responses.

The reference (../shared/amber-audit) is the output of the benchmark's unmodified ``inference.py``
(NLTK 3.10.4, exact matching); the faithful mode must reproduce every count, and the offline mode's
measured difference (the number its warning states) must be what it really is today.
"""

from __future__ import annotations

import pytest

from ingest.labels.nouns import OFFLINE_MEASURED
from tests.amber_audit_helpers import deltas, require_audit, require_nltk_data, run_audit


def test_faithful_mode_equals_the_official_evaluator_on_every_response(monkeypatch):
    require_audit()
    monkeypatch.setenv("NLTK_DATA", str(require_nltk_data()))
    import nltk

    if not nltk.__version__.startswith("3.10."):
        pytest.skip(f"the official counts were made with NLTK 3.10.4 (its tokenizer changes between versions); "
                    f"this is NLTK {nltk.__version__}")
    audit = run_audit("auto")
    assert audit["result"]["settings"]["nouns"] == "nltk"      # auto finds NLTK_DATA: the official pipeline
    assert audit["n"] == 1004
    assert audit["differ"] == []                                # every count of every response
    assert audit["differ_mentions"] == []                       # and every mention, in order
    g = audit["result"]["generative"]
    # the evaluator's printout (../shared/amber-audit/README.md)
    assert audit["official_totals"] == {"CHAIR": 36.6, "Cover": 42.3, "Hal": 81.7, "Cog": 17.5}
    assert {k: g[k] for k in ("CHAIR", "Cover", "Hal", "Cog")} == audit["official_totals"]


def test_offline_mode_difference_is_the_one_its_warning_states():
    require_audit()
    audit = run_audit("offline")
    assert audit["result"]["settings"]["nouns"] == "offline"
    measured = {"responses": audit["n"], "differ": len(audit["differ"]), **deltas(audit)}
    assert measured == OFFLINE_MEASURED
