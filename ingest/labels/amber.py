"""AMBER's hallucination rules (Wang et al., 2023), re-implemented with their exact semantics.

Generative task, per response (the official ``inference.py``):

1. Nouns are extracted (:mod:`ingest.labels.nouns`) and kept when their lemma is in the object
   vocabulary (keys and values of ``relation.json``): these are the *mentions*.
2. A mention whose lemma is a global safe word (``safe_words.txt``) is ``safe``: never hallucinated,
   but still counted in CHAIR's denominator, and it covers nothing (not even a truth word).
3. Otherwise, if the lemma equals a word of the truth *search list* -- the associations of every
   truth word (in truth order) followed by the truth words themselves -- the mention is ``correct``
   and covers the truth word behind the *first* matching entry (so a truth word listed twice can
   only ever be covered once, and an association can credit an earlier truth word).
4. Otherwise the hallu list is searched (first exact entry, and also the first similar entry) to credit Cog,
   then the truth search list by similarity (> threshold, spaCy vectors in the official code): a
   similar entry makes the mention ``correct`` and covers that truth word; no similar entry makes
   it ``hallucinated``.

CHAIR = hallucinated / mentions, Cover = covered truth entries / truth entries, Hal = % responses
with a hallucinated mention, Cog = covered hallu entries / hallu entries; all over the whole set,
every denominator starting at 0.001 as in ``metrics.txt``, reported x100 rounded to 0.1.

Discriminative task: the official scoring accepts only the exact strings "Yes" and "No"; "No" is the
positive class. kevo also reports a normalised scoring (first word, case and punctuation ignored:
"Yes, there is." counts as yes).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources as _res
from pathlib import Path

from ingest.labels.nouns import Noun
from ingest.labels.words import split_words

SIMILARITY_THRESHOLD = 0.8
"""AMBER's default ``--similarity_score``: a mention is similar to a word above this spaCy similarity."""

DISCRIMINATIVE_TYPES = {
    "discriminative-attribute-state": "state",
    "discriminative-attribute-number": "number",
    "discriminative-attribute-action": "action",
    "discriminative-hallucination": "existence",
    "discriminative-relation": "relation",
    "relation": "relation",
}
"""annotations.json ``type`` -> the dimension it is scored in (official grouping)."""


# --------------------------------------------------------------------------------------------
# the benchmark's vocabulary


@dataclass(frozen=True)
class AmberVocabulary:
    """``relation.json`` and ``safe_words.txt``."""

    relation: dict
    """word -> associated words (not strict synonyms)."""
    safe_words: tuple[str, ...]
    """Global safe words: never hallucinated."""
    source: str = "packaged"
    """Where they were read from."""

    @property
    def vocabulary(self) -> frozenset[str]:
        """The object vocabulary: relation keys and values (418 words in AMBER)."""
        return frozenset(self.relation) | frozenset(w for ws in self.relation.values() for w in ws)

    @classmethod
    def load(cls, data_dir: str | Path | None = None) -> AmberVocabulary:
        """From an AMBER directory (files found by name, as ``ingest.datasets.amber`` does) or the packaged copy."""
        if data_dir is None:
            base = _res.files("ingest.labels") / "data"
            relation = json.loads((base / "amber_relation.json").read_text(encoding="utf-8"))
            safe = (base / "amber_safe_words.txt").read_text(encoding="utf-8")
            src = "packaged (AMBER relation.json, safe_words.txt)"
        else:
            from ingest.datasets.base import find_under, read_json

            where = (".", "data", "query", "data/query")
            rel_path = find_under(Path(data_dir), "relation.json", where, "AMBER")
            relation = read_json(rel_path)
            if not isinstance(relation, dict):
                from ingest.datasets.base import DatasetError

                raise DatasetError(f"{rel_path}: expected an object word -> [associated words]")
            safe = find_under(Path(data_dir), "safe_words.txt", where, "AMBER").read_text(encoding="utf-8")
            src = str(rel_path.parent)
        words = tuple(line for line in (s.split("\n")[0] for s in safe.splitlines()) if line)
        return cls(relation=relation, safe_words=words, source=src)


# --------------------------------------------------------------------------------------------
# similarity between two vocabulary words


def exact_similarity(a: str, b: str) -> float:
    """The offline default: 1 for the same word, 0 otherwise (no word vectors)."""
    return 1.0 if a == b else 0.0


class TableSimilarity:
    """A precomputed similarity table over the vocabulary (JSON ``{"words": [...], "similarity": [[...]]}``).

    Mentions and the words they are compared with are all vocabulary words, so a 418 x 418 table built
    once with spaCy's ``en_core_web_lg`` (:func:`build_similarity_table`) reproduces the official
    ``nlp(a).similarity(nlp(b))`` exactly. Pairs outside the table score 0 (exact match still 1).
    """

    def __init__(self, path: str | Path):
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        try:
            words, matrix = data["words"], data["similarity"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: expected {{\"words\": [...], \"similarity\": [[...]]}}") from e
        if len(matrix) != len(words) or any(len(r) != len(words) for r in matrix):
            raise ValueError(f"{path}: similarity must be a {len(words)} x {len(words)} matrix")
        self.index = {w: i for i, w in enumerate(words)}
        self.matrix = matrix
        self.source = str(path)

    def __call__(self, a: str, b: str) -> float:
        i, j = self.index.get(a), self.index.get(b)
        if i is None or j is None:
            return exact_similarity(a, b)
        return float(self.matrix[i][j])


class SpacySimilarity:
    """``nlp(a).similarity(nlp(b))`` with a spaCy model the user provides (name or path), as the official code."""

    def __init__(self, model: str):
        try:
            import spacy
        except ImportError as e:  # pragma: no cover - depends on the user's environment
            raise RuntimeError("--spacy-model needs spaCy (pip install spacy) and the model, "
                               "e.g. en_core_web_lg") from e
        self.nlp = spacy.load(model)
        self._docs: dict[str, object] = {}
        self.source = model

    def _doc(self, w: str):
        if w not in self._docs:
            self._docs[w] = self.nlp(w)
        return self._docs[w]

    def __call__(self, a: str, b: str) -> float:
        import warnings

        with warnings.catch_warnings():  # spaCy warns for words without vectors (similarity 0), as in AMBER
            warnings.simplefilter("ignore")
            return float(self._doc(a).similarity(self._doc(b)))


def build_similarity_table(similarity: Callable[[str, str], float], words: Iterable[str]) -> dict:
    """The JSON table :class:`TableSimilarity` reads, from any similarity (e.g. :class:`SpacySimilarity`)."""
    words = sorted(words)
    return {"words": words, "similarity": [[round(similarity(a, b), 6) for b in words] for a in words]}


# --------------------------------------------------------------------------------------------
# generative scoring


@dataclass
class Mention:
    """One object mention in a response and how AMBER's rules classified it."""

    text: str
    """The word as written."""
    start: int
    """Character span of the word in the response."""
    end: int
    object: str
    """The lemma: a vocabulary word."""
    label: str
    """'correct' | 'hallucinated' | 'safe'."""
    match: str
    """Why: 'safe_word' | 'truth' (exact truth word) | 'association' (exact association of a truth word) |
    'similarity' (similar to a truth word or association) | 'none' (hallucinated)."""
    truth_word: str | None = None
    """The truth word credited (Cover), if any."""
    hallu_word: str | None = None
    """The hallu-list word credited (Cog), if any."""


@dataclass
class GenerativeScore:
    """AMBER's per-response counts (the official accumulators) and the classified mentions."""

    mentions: list[Mention]
    truth: list[str]
    hallu: list[str]
    truth_covered: list[bool]
    """Per entry of ``truth`` (duplicates included): covered by a mention."""
    hallu_covered: list[bool]
    """Per entry of ``hallu``: mentioned (Cog)."""

    @property
    def n_hallucinated(self) -> int:
        return sum(m.label == "hallucinated" for m in self.mentions)

    def metrics(self) -> dict:
        """The JSON stored in ``samples.metrics``."""
        return {
            "task": "generative",
            "chair_score": self.n_hallucinated,
            "chair_num": len(self.mentions),
            "safe_cover_score": sum(self.truth_covered),
            "safe_cover_num": len(self.truth),
            "hallu_cover_score": sum(self.hallu_covered),
            "hallu_cover_num": len(self.hallu),
            "hallucinated": self.n_hallucinated > 0,
            "mentions": [asdict(m) for m in self.mentions],
        }


def _search_list(words: Sequence[str], relation: dict) -> list[tuple[str, int]]:
    """AMBER's search order: every word's associations (in order), then the words themselves."""
    out = [(a, i) for i, w in enumerate(words) for a in relation.get(w, [])]
    return out + [(w, i) for i, w in enumerate(words)]


def score_generative(record: dict, nouns: Sequence[Noun], vocab: AmberVocabulary,
                     similarity: Callable[[str, str], float] = exact_similarity,
                     threshold: float = SIMILARITY_THRESHOLD) -> GenerativeScore:
    """Classify the mentions of one response and count Cover/Cog (see the module docstring)."""
    truth, hallu = list(record.get("truth") or []), list(record.get("hallu") or [])
    vocabulary = vocab.vocabulary
    safe_words = set(vocab.safe_words)
    truth_list = _search_list(truth, vocab.relation)
    hallu_list = _search_list(hallu, vocab.relation)
    truth_cov = [False] * len(truth)
    hallu_cov = [False] * len(hallu)
    mentions: list[Mention] = []
    for noun in nouns:
        lemma = noun.lemma
        if lemma not in vocabulary:
            continue
        w = noun.word
        m = Mention(w.text, w.start, w.end, lemma, "hallucinated", "none")
        mentions.append(m)
        if lemma in safe_words:
            m.label, m.match = "safe", "safe_word"
            continue
        hit = next((k for k, (word, _) in enumerate(truth_list) if word == lemma), None)
        if hit is not None:
            idx = truth_list[hit][1]
            truth_cov[idx] = True
            match = "truth" if hit >= len(truth_list) - len(truth) else "association"
            m.label, m.match, m.truth_word = "correct", match, truth[idx]
            continue
        # Cog: the first exact entry, then (separately, as the official code does) the first similar entry
        for hit in (next((k for k, (word, _) in enumerate(hallu_list) if word == lemma), None),
                    next((k for k, (word, _) in enumerate(hallu_list) if similarity(lemma, word) > threshold), None)):
            if hit is not None:
                idx = hallu_list[hit][1]
                hallu_cov[idx] = True
                m.hallu_word = m.hallu_word or hallu[idx]
        hit = next((k for k, (word, _) in enumerate(truth_list) if similarity(lemma, word) > threshold), None)
        if hit is not None:
            idx = truth_list[hit][1]
            truth_cov[idx] = True
            m.label, m.match, m.truth_word = "correct", "similarity", truth[idx]
    return GenerativeScore(mentions, truth, hallu, truth_cov, hallu_cov)


# --------------------------------------------------------------------------------------------
# discriminative scoring


def normalise_answer(response: str) -> str | None:
    """'yes' | 'no' from the first word (case and punctuation ignored), else None."""
    for w in split_words(response or ""):
        if w.text[:1].isalnum():
            low = w.text.lower()
            return low if low in ("yes", "no") else None
    return None


def official_answer(response: str) -> str | None:
    """'yes' | 'no' only for the exact strings "Yes" / "No" (the official scoring), else None."""
    return {"Yes": "yes", "No": "no"}.get(response)


def score_discriminative(record: dict, response: str) -> dict:
    """Per-sample metrics of a Yes/No question (both scorings)."""
    truth = str(record.get("truth", "")).lower()
    off, norm = official_answer(response), normalise_answer(response)
    return {
        "task": "discriminative",
        "dimension": DISCRIMINATIVE_TYPES.get(record.get("type", ""), "relation"),
        "truth": truth,
        "answer_official": off,
        "answer_normalised": norm,
        "correct_official": off == truth,
        "correct_normalised": norm == truth,
    }


# --------------------------------------------------------------------------------------------
# whole-set metrics (the official accumulators)

_EPS = 0.001


@dataclass
class _YesNoCounts:
    """Counts of one discriminative dimension ("no" is the positive class)."""

    n: int = 0
    correct: int = 0
    truth_no: int = 0
    no_correct: int = 0
    ans_no: int = 0
    ans_no_correct: int = 0

    def add(self, truth: str, answer: str | None) -> None:
        self.n += 1
        self.correct += answer == truth
        self.truth_no += truth == "no"
        self.no_correct += truth == "no" and answer == "no"
        self.ans_no += answer == "no"
        self.ans_no_correct += answer == "no" and truth == "no"

    @staticmethod
    def total(groups: Iterable[_YesNoCounts]) -> _YesNoCounts:
        out = _YesNoCounts()
        for g in groups:
            for f in ("n", "correct", "truth_no", "no_correct", "ans_no", "ans_no_correct"):
                setattr(out, f, getattr(out, f) + getattr(g, f))
        return out

    def report(self, eps: float = _EPS, f1_eps: float = 0.0001) -> dict:
        """Official formulas: denominators start at ``eps``; F1 from the rounded P and R, + ``f1_eps``."""
        acc = round(self.correct / (self.n + eps) * 100, 1)
        prec = round(self.ans_no_correct / (self.ans_no + eps) * 100, 1)
        rec = round(self.no_correct / (self.truth_no + eps) * 100, 1)
        f1 = round(2 * (prec / 100) * (rec / 100) / ((prec / 100) + (rec / 100) + f1_eps) * 100, 1)
        return {"n": self.n, "accuracy": acc, "precision": prec, "recall": rec, "f1": f1}


@dataclass
class AmberTotals:
    """Accumulates per-sample metrics into AMBER's official numbers (and the normalised variant)."""

    chair_score: float = 0
    chair_num: float = _EPS
    safe_cover_score: float = 0
    safe_cover_num: float = _EPS
    hallu_cover_score: float = 0
    hallu_cover_num: float = _EPS
    non_hallu_score: float = 0
    non_hallu_num: float = _EPS
    n_generative: int = 0
    official: dict = field(default_factory=dict)
    normalised: dict = field(default_factory=dict)

    def add(self, metrics: dict) -> None:
        if metrics.get("task") == "generative":
            self.n_generative += 1
            self.chair_score += metrics["chair_score"]
            self.chair_num += metrics["chair_num"]
            self.safe_cover_score += metrics["safe_cover_score"]
            self.safe_cover_num += metrics["safe_cover_num"]
            self.hallu_cover_score += metrics["hallu_cover_score"]
            self.hallu_cover_num += metrics["hallu_cover_num"]
            self.non_hallu_score += 0 if metrics["hallucinated"] else 1
            self.non_hallu_num += 1
        elif metrics.get("task") == "discriminative":
            dim = metrics["dimension"]
            for store, key in ((self.official, "answer_official"), (self.normalised, "answer_normalised")):
                store.setdefault(dim, _YesNoCounts()).add(metrics["truth"], metrics[key])

    def generative(self) -> dict:
        return {
            "n": self.n_generative,
            "CHAIR": round(self.chair_score / self.chair_num * 100, 1),
            "Cover": round(self.safe_cover_score / self.safe_cover_num * 100, 1),
            "Hal": round(100 - self.non_hallu_score / self.non_hallu_num * 100, 1),
            "Cog": round(self.hallu_cover_score / self.hallu_cover_num * 100, 1),
            "counts": {k: round(getattr(self, k), 3) for k in (
                "chair_score", "chair_num", "safe_cover_score", "safe_cover_num",
                "hallu_cover_score", "hallu_cover_num", "non_hallu_score", "non_hallu_num")},
        }

    @staticmethod
    def _discriminative(groups: dict) -> dict:
        out = {"all": _YesNoCounts.total(groups.values()).report()}
        if "existence" in groups:
            out["existence"] = groups["existence"].report(f1_eps=0.001)  # the official code's constant
        attr = [groups[d] for d in ("state", "number", "action") if d in groups]
        if attr:
            # the official attribute totals add the three counters, each of which starts at 0.001
            out["attribute"] = _YesNoCounts.total(attr).report(eps=3 * _EPS)
            for d in ("state", "number", "action"):
                if d in groups:
                    out[d] = groups[d].report()
        if "relation" in groups:
            out["relation"] = groups["relation"].report()
        return out

    def summary(self) -> dict:
        out = {}
        if self.n_generative:
            out["generative"] = self.generative()
        if self.official:
            out["discriminative"] = {"official": self._discriminative(self.official),
                                     "normalised": self._discriminative(self.normalised)}
        return out
