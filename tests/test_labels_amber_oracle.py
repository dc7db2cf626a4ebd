"""score_generative against an independent oracle that keeps AMBER's own bookkeeping.

The official evaluator tracks coverage with flat lists: the truth "search list" (associations of each
truth word, then the truth words) beside a parallel list whose association entries hold the index of
their truth word and whose last len(truth) entries are the coverage flags. The oracle below keeps that
representation (kevo's implementation does not); both run on random records built from the real
relation.json, with duplicates, safe words and a random similarity, and must agree on every count.
"""

from __future__ import annotations

import random

from ingest.labels.amber import AmberVocabulary, score_generative
from ingest.labels.nouns import Noun
from ingest.labels.words import Word

VOCAB = AmberVocabulary.load()


def oracle(nouns, truth, hallu, relation, safe, sim, thr=0.8):
    vocab = set(relation) | {v for vs in relation.values() for v in vs}
    mentions = [n for n in nouns if n in vocab]

    def build(words):
        flat, marks = [], []
        for k, w in enumerate(words):
            flat += relation[w]
            marks += [k] * len(relation[w])
        return flat + list(words), marks + [0] * len(words)

    s_words, s_marks = build(truth)
    h_words, h_marks = build(hallu)
    ns, nh = len(truth), len(hallu)

    def credit(marks, j, n):
        if j < len(marks) - n:
            marks[marks[j] + len(marks) - n] = 1
        else:
            marks[j] = 1

    halluc = [0] * len(mentions)
    for k, noun in enumerate(mentions):
        if noun in safe:
            continue
        if noun in s_words:
            credit(s_marks, s_words.index(noun), ns)
            continue
        if noun in h_words:
            credit(h_marks, h_words.index(noun), nh)
        for j, w in enumerate(h_words):
            if sim(noun, w) > thr:
                credit(h_marks, j, nh)
                break
        hit = next((j for j, w in enumerate(s_words) if sim(noun, w) > thr), None)
        if hit is not None:
            credit(s_marks, hit, ns)
            continue
        halluc[k] = 1
    return (sum(halluc), len(mentions), sum(s_marks[len(s_marks) - ns:]), ns, sum(h_marks[len(h_marks) - nh:]), nh,
            halluc)


def test_random_records_agree_with_the_oracle():
    rng = random.Random(0)
    keys = sorted(VOCAB.relation)
    vocab = sorted(VOCAB.vocabulary)
    safe = set(VOCAB.safe_words)
    sims = {}

    def sim(a, b):  # a fixed random symmetric similarity, identical words 1.0
        if a == b:
            return 1.0
        key = (min(a, b), max(a, b))
        if key not in sims:
            sims[key] = rng.random() if rng.random() < 0.05 else 0.0
        return sims[key]

    for _ in range(400):
        truth = rng.sample(keys, rng.randint(1, 8))
        if rng.random() < 0.3:
            truth.append(rng.choice(truth))               # a duplicated truth word, as in 14 AMBER records
        hallu = rng.sample(keys, rng.randint(1, 6))
        pool = truth + hallu + [a for w in truth + hallu for a in VOCAB.relation[w]] + sorted(safe)
        nouns = [rng.choice(pool) if rng.random() < 0.7 else rng.choice(vocab) for _ in range(rng.randint(0, 12))]
        nouns += ["table-cloth", "Dog"] if rng.random() < 0.2 else []   # outside the vocabulary: ignored
        for similarity in (lambda a, b: 1.0 if a == b else 0.0, sim):
            score = score_generative({"truth": truth, "hallu": hallu},
                                     [Noun(Word(i, n, 0, 0), n) for i, n in enumerate(nouns)], VOCAB, similarity)
            m = score.metrics()
            want = oracle(nouns, truth, hallu, VOCAB.relation, safe, similarity)
            got = (m["chair_score"], m["chair_num"], m["safe_cover_score"], m["safe_cover_num"],
                   m["hallu_cover_score"], m["hallu_cover_num"],
                   [int(x.label == "hallucinated") for x in score.mentions])
            assert got == want, (truth, hallu, nouns)
