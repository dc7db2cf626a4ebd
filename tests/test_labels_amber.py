"""AMBER's object rules on real AMBER records with hand-written responses; every expectation worked out by hand.

Relation entries used below (from the real relation.json): forest -> [tree, leave, bush];
person -> [people, individual, man, woman, boy, girl]; road -> [path, street, ground]; lake -> [water,
sea, river]; mountain -> [hill, rock, stone, reef]; man -> [person, people, individual, boy];
ship -> [boat, vessel, sailing, vehicle]; bird -> [bill]; bicycle -> [bike, tire, saddle];
sign -> [signal, pole, street, road, path]. Safe words: orange snack line camera light shoe sign range individual.
"""

from __future__ import annotations

import json

import pytest

from ingest.labels.amber import (
    AmberTotals,
    AmberVocabulary,
    TableSimilarity,
    normalise_answer,
    official_answer,
    score_discriminative,
    score_generative,
)
from ingest.labels.nouns import OfflineNouns
from tests.amber_helpers import FIXTURE, responses

VOCAB = AmberVocabulary.load(FIXTURE / "data")
NOUNS = OfflineNouns(VOCAB.vocabulary)
ANN = {r["id"]: r for r in json.loads((FIXTURE / "data" / "annotations.json").read_text())}
RESP = {r["id"]: r["response"] for r in responses()}


def _score(i, **kw):
    return score_generative(ANN[i], NOUNS(RESP[i]), VOCAB, **kw)


def test_packaged_vocabulary_is_the_benchmark_s():
    packaged = AmberVocabulary.load()
    assert packaged.relation == VOCAB.relation and packaged.safe_words == VOCAB.safe_words
    assert len(VOCAB.vocabulary) == 418 and len(VOCAB.safe_words) == 9


def test_id1_capitalised_plural_association_and_hallu_list():
    s = _score(1)
    got = [(m.text, m.object, m.label, m.match, m.truth_word, m.hallu_word) for m in s.mentions]
    assert got == [
        # "Dogs" is not lemmatised (NLTK keeps case): "Dogs" is not in the vocabulary -> no mention
        ("road", "road", "correct", "truth", "road", None),
        ("man", "man", "correct", "association", "person", None),          # association-only mention
        ("trees", "tree", "correct", "association", "forest", None),       # plural + association
        ("lake", "lake", "correct", "truth", "lake", None),
        ("birds", "bird", "hallucinated", "none", None, "bird"),           # hallu list -> Cog
        ("sky", "sky", "correct", "truth", "sky", None),
        ("mountains", "mountain", "correct", "truth", "mountain", None),
    ]
    # truth: sky forest grass person lake mountain road -> everything but grass
    assert s.truth_covered == [True, True, False, True, True, True, True]
    # hallu: cloud sun bird dog flower
    assert s.hallu_covered == [False, False, True, False, False]
    m = s.metrics()
    assert (m["chair_score"], m["chair_num"], m["safe_cover_score"], m["safe_cover_num"],
            m["hallu_cover_score"], m["hallu_cover_num"], m["hallucinated"]) == (1, 7, 6, 7, 1, 5, True)


def test_id2_duplicated_truth_word_safe_word_and_hallucination_outside_hallu_list():
    s = _score(2)
    got = [(m.text, m.label, m.truth_word) for m in s.mentions]
    assert got == [("ship", "correct", "ship"), ("bridge", "correct", "bridge"), ("ship", "correct", "ship"),
                   ("camera", "safe", None), ("TV", "hallucinated", None), ("pier", "hallucinated", None)]
    # truth: sky man ship ship forest bridge mountain cloud lake building: the second "ship" entry can
    # never be covered (the first matching entry takes the credit), as in the official evaluator
    assert s.truth_covered == [False, False, True, False, False, True, False, False, False, False]
    assert not any(s.hallu_covered)  # TV and pier are not hallu words: no Cog
    m = s.metrics()
    # the safe word counts in CHAIR's denominator
    assert (m["chair_score"], m["chair_num"], m["safe_cover_score"], m["safe_cover_num"]) == (2, 6, 2, 10)


def test_id3_empty_response():
    s = _score(3)
    assert s.mentions == [] and s.metrics()["hallucinated"] is False
    assert (s.metrics()["safe_cover_num"], s.metrics()["hallu_cover_num"]) == (3, 5)


def test_id6_safe_truth_word_covers_nothing():
    s = _score(6)
    assert [(m.text, m.label) for m in s.mentions] == [("person", "correct"), ("bicycle", "correct"),
                                                       ("sign", "safe")]
    # "sign" is a truth word of id 6 but a global safe word: skipped before the truth search
    truth = ANN[6]["truth"]
    assert [w for w, c in zip(truth, s.truth_covered) if c] == ["bicycle", "person"]


def test_similarity_table_rescues_a_similar_mention_and_credits_cog():
    # "pier" similar to truth "bridge" (0.9) -> correct, covers bridge; "TV" similar to hallu "plane" -> Cog
    table = {"words": ["pier", "bridge", "TV", "plane"],
             "similarity": [[1, .9, 0, 0], [.9, 1, 0, 0], [0, 0, 1, .85], [0, 0, .85, 1]]}
    sim = TableSimilarity.__new__(TableSimilarity)
    sim.index = {w: i for i, w in enumerate(table["words"])}
    sim.matrix, sim.source = table["similarity"], "test"
    s = _score(2, similarity=sim)
    labels = {m.text: (m.label, m.match, m.truth_word, m.hallu_word) for m in s.mentions}
    assert labels["pier"] == ("correct", "similarity", "bridge", None)
    assert labels["TV"] == ("hallucinated", "none", None, "plane")
    assert s.hallu_covered == [True, False, False, False, False]


def test_offline_lemmatizer_follows_wordnet_shortest_form():
    lem = NOUNS.lemmatize
    assert [lem(w) for w in ("dogs", "benches", "glasses", "skies", "women", "children", "people")] == \
        ["dog", "bench", "glass", "sky", "woman", "child", "people"]
    assert lem("Dogs") == "Dogs"          # case kept, as NLTK
    assert lem("slippers") == "slipper"   # WordNet knows "slipper": the vocabulary word "slippers" is never reached
    assert lem("TV") == "TV"


def test_offline_pos_rules():
    found = [(n.word.text, n.lemma) for n in NOUNS("I watch the man who can sign near a can of orange juice.")]
    # "watch" after a pronoun and "sign" after a modal are verbs; "can" is a modal for NLTK's tagger even
    # after a determiner; "orange" before a noun is an adjective
    assert found == [("man", "man"), ("juice", "juice")]
    # after a plural subject, a verb-capable word followed by a preposition/determiner is a verb
    found = [n.lemma for n in NOUNS("Two dogs chase a ball while their owners watch from a bench.")]
    assert found == ["dog", "ball", "bench"]
    assert [n.lemma for n in NOUNS("A light blue kite and the light from the window.")] == ["kite", "light", "window"]


def test_discriminative_official_and_normalised():
    assert official_answer("Yes, there is.") is None and normalise_answer("Yes, there is.") == "yes"
    assert official_answer("No") == "no" and official_answer("no") is None and normalise_answer("no") == "no"
    assert normalise_answer("") is None and normalise_answer("Maybe.") is None
    m = score_discriminative(ANN[1005], "Yes, there is.")
    assert m == {"task": "discriminative", "dimension": "state", "truth": "yes", "answer_official": None,
                 "answer_normalised": "yes", "correct_official": False, "correct_normalised": True}


def test_totals_match_the_hand_computed_official_numbers():
    t = AmberTotals()
    for i, r in RESP.items():
        t.add(_score(i).metrics() if ANN[i]["type"] == "generative" else score_discriminative(ANN[i], r))
    out = t.summary()
    # generative: hallucinated 1+2+0+0=3 of mentions 7+6+0+3=16; covered 6+2+0+2=10 of 7+10+3+12=32;
    # responses without hallucination 2 of 4; hallu mentioned 1 of 20. Denominators start at 0.001.
    g = out["generative"]
    assert g["CHAIR"] == round(3 / 16.001 * 100, 1) == 18.7
    assert g["Cover"] == round(10 / 32.001 * 100, 1) == 31.2
    assert g["Hal"] == round(100 - 2 / 4.001 * 100, 1) == 50.0
    assert g["Cog"] == round(1 / 20.001 * 100, 1) == 5.0
    # discriminative, official (exact "Yes"/"No"): correct = 1006 "No", 13557 "Yes" -> 2/6;
    # truth "no": 1006 8633 13193 15220, answered exactly "No": 1006 -> recall 1/4, precision 1/1
    o = out["discriminative"]["official"]["all"]
    assert (o["accuracy"], o["precision"], o["recall"]) == (33.3, 99.9, 25.0)
    assert o["f1"] == round(2 * .999 * .25 / (.999 + .25 + .0001) * 100, 1) == 40.0
    # normalised: answers yes no yes no yes no -> 5/6 correct; recall 3/4; precision 3/3
    n = out["discriminative"]["normalised"]["all"]
    assert (n["accuracy"], n["precision"], n["recall"], n["f1"]) == (83.3, 100.0, 75.0, 85.7)
    # existence: 8633 "Yes" (wrong), 13193 "No." (official: wrong; normalised: right); F1 uses +0.001 there
    assert out["discriminative"]["official"]["existence"]["accuracy"] == 0.0
    assert out["discriminative"]["normalised"]["existence"]["accuracy"] == round(1 / 2.001 * 100, 1) == 50.0
    # attribute totals add three counters that each start at 0.001: 1006 "No" right, 1005 wrong -> 1/2.003
    assert out["discriminative"]["official"]["attribute"]["accuracy"] == round(1 / 2.003 * 100, 1)


@pytest.mark.parametrize("text,expected", [
    ("A cat sits on the sofa, next to two pillows.", ["cat", "sofa", "pillow"]),
    ("The people are watching a television near the window.", ["people", "television", "window"]),
])
def test_offline_nouns_on_plain_sentences(text, expected):
    assert [n.lemma for n in NOUNS(text)] == expected


# what NLTK's pipeline does on these (tests/test_labels_amber_faithful.py checks the same sentences with NLTK)
TAGGER_CASES = [
    ("Sky/cloud can be seen in the distance.", []),                     # slash-joined: one token, not a vocabulary word
    ("A drink and a can of soda rest on the rail.", ["drink", "rail"]),  # "a can": a modal to the tagger
    ("A dog is next to grass, near the sky.", ["dog", "sky"]),          # a bare word after "next to": a verb
    ("Orange lights shine on the grass.", ["light", "grass"]),           # a plural is no adjective
    ("Plants water the mountain.", ["water", "mountain"]),                # "Plants": capitalised, no lemma
    ("Workers line up near the flower, forming a long line.", ["line", "flower", "line"]),
    ("- A road\n- A small sky\n The overall atmosphere is calm.", ["road", "sky"]),  # a new line: no next word
]


@pytest.mark.parametrize("text,expected", TAGGER_CASES)
def test_offline_rules_follow_the_tagger(text, expected):
    assert [n.lemma for n in NOUNS(text)] == expected
