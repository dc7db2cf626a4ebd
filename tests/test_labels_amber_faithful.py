"""AMBER's faithful mode (NLTK + WordNet + spaCy, as the official evaluator) against kevo's offline mode.

NLTK's data comes from ../shared/nltk_data (tests/amber_audit_helpers.py); each test is skipped, with
the reason, where its data is missing (a clone: pip install 'kevo[amber]'; python -m nltk.downloader
punkt_tab averaged_perceptron_tagger_eng wordnet; spaCy's en_core_web_lg for the last test).
"""

from __future__ import annotations

import json

import pytest

from ingest.labels.amber import AmberVocabulary, score_generative
from ingest.labels.nouns import OfflineNouns
from tests.amber_audit_helpers import require_nltk_data
from tests.amber_helpers import FIXTURE, responses

VOCAB = AmberVocabulary.load()


@pytest.fixture(autouse=True)
def _nltk_data(monkeypatch):
    try:
        monkeypatch.setenv("NLTK_DATA", str(require_nltk_data()))
    except pytest.skip.Exception:
        pass  # each test skips for itself where the data is missing


def _wordnet_lemmatizer():
    nltk = pytest.importorskip("nltk", reason="nltk is not installed (pip install 'kevo[amber]')")
    from nltk.stem import WordNetLemmatizer

    from ingest.labels.nouns import NltkNouns, NltkUnavailable

    try:
        NltkNouns()  # puts NLTK_DATA on NLTK's path
    except NltkUnavailable as e:
        pytest.skip(str(e))
    lem = WordNetLemmatizer()
    try:
        lem.lemmatize("dogs")
    except LookupError:
        pytest.skip("NLTK's WordNet data is not under NLTK_DATA")
    return nltk, lem


def _plural(w: str) -> str:
    irregular = {"man": "men", "woman": "women", "child": "children", "person": "people", "mouse": "mice",
                 "goose": "geese", "foot": "feet", "tooth": "teeth", "knife": "knives", "leave": "leaves",
                 "shelf": "shelves", "sheep": "sheep", "deer": "deer", "fish": "fish"}
    if w in irregular:
        return irregular[w]
    if w.endswith(("s", "x", "z", "ch", "sh")):
        return w + "es"
    if w.endswith("y") and w[-2:-1] not in "aeiou":
        return w[:-1] + "ies"
    return w + "s"


def test_offline_lemmatizer_equals_wordnet_on_every_vocabulary_form():
    """Every vocabulary word, its plural, and both capitalised (1,664 forms) reach the same vocabulary word."""
    _, lem = _wordnet_lemmatizer()
    vocab = VOCAB.vocabulary
    offline = OfflineNouns(vocab)
    forms = sorted({f for w in vocab for f in (w, _plural(w), w.capitalize(), _plural(w).capitalize())})
    differ = []
    for f in forms:
        a, b = offline.lemmatize(f), lem.lemmatize(f)
        if (a if a in vocab else None) != (b if b in vocab else None):
            differ.append((f, a, b))
    assert differ == []


def test_nltk_pipeline_gives_the_hand_worked_fixture_mentions():
    """The official noun pipeline on the fixture responses finds what tests/test_labels_amber.py expects."""
    _wordnet_lemmatizer()
    from ingest.labels.nouns import NltkNouns

    nltk_nouns = NltkNouns(VOCAB.vocabulary)
    offline = OfflineNouns(VOCAB.vocabulary)
    ann = {r["id"]: r for r in json.loads((FIXTURE / "data" / "annotations.json").read_text())}
    for r in responses():
        if ann[r["id"]]["type"] != "generative":
            continue
        a = score_generative(ann[r["id"]], nltk_nouns(r["response"]), VOCAB).metrics()
        b = score_generative(ann[r["id"]], offline(r["response"]), VOCAB).metrics()
        assert [(m["object"], m["label"]) for m in a["mentions"]] == [(m["object"], m["label"]) for m in b["mentions"]]


def test_spacy_similarity_table_matches_spacy():
    spacy = pytest.importorskip("spacy", reason="spaCy is not installed (pip install spacy)")
    try:
        spacy.load("en_core_web_lg")
    except OSError:
        pytest.skip("spaCy model en_core_web_lg is not installed")
    from ingest.labels.amber import SpacySimilarity, TableSimilarity, build_similarity_table

    sim = SpacySimilarity("en_core_web_lg")
    words = ["man", "person", "boat", "ship", "TV"]
    table = build_similarity_table(sim, words)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "t.json"
        p.write_text(json.dumps(table))
        t = TableSimilarity(p)
        for a in words:
            for b in words:
                assert abs(t(a, b) - sim(a, b)) < 1e-6


def test_the_offline_rules_cases_are_what_nltk_does():
    """The sentences behind the offline rules (tests/test_labels_amber.py) give the same nouns with NLTK."""
    _wordnet_lemmatizer()
    from ingest.labels.nouns import NltkNouns
    from tests.test_labels_amber import TAGGER_CASES

    nltk_nouns = NltkNouns(VOCAB.vocabulary)
    for text, expected in TAGGER_CASES:
        assert [n.lemma for n in nltk_nouns(text) if n.lemma in VOCAB.vocabulary] == expected, text
