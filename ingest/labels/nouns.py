"""Noun extraction for AMBER: which words of a response are object nouns, and their lemmas.

AMBER's official evaluator runs ``nltk.word_tokenize`` -> ``nltk.pos_tag`` (keep tags ``NN*``) ->
``WordNetLemmatizer().lemmatize`` (noun lemmas, no lowercasing) and keeps the lemmas found in its
418-word vocabulary. Two interchangeable extractors produce the same thing, a list of
:class:`Noun` (the word, with its span in the response, and its lemma):

* :class:`NltkNouns` (faithful, the default whenever NLTK and its data are found): the official
  pipeline itself. Needs ``pip install 'kevo[amber]'`` and the data ``punkt_tab``,
  ``averaged_perceptron_tagger_eng`` and ``wordnet`` under ``NLTK_DATA`` or NLTK's usual paths.
  NLTK's tokens are mapped back to character spans in the response. With NLTK 3.10 it gives the
  official evaluator's per-response counts on every response of a 1,004-response audit set.
* :class:`OfflineNouns` (no downloads; runs with a warning when NLTK or its data is missing, or on
  ``--nouns offline``): words from :func:`ingest.labels.words.split_words`; lemmas from a
  re-implementation of WordNet's noun morphology (the ``morphy`` suffix rules, the irregular plurals
  that matter for the vocabulary, "keep the shortest known form") where "known" is the AMBER
  vocabulary (less its 27 words that are not WordNet nouns) plus the handful of WordNet nouns that
  shadow a vocabulary word (e.g. "slippers" -> "slipper", which is *not* in the vocabulary, as with
  NLTK); part of speech from a few context rules (after "to", a modal or a subject pronoun -> verb;
  "-ing" after a form of "be" -> verb; "can" is a noun only after a determiner other than "a"; a
  colour/adjective-capable word right before another word -> adjective; a verb-capable word between
  a plural subject and a preposition -> verb). The lemmas equal WordNet's on every vocabulary form;
  the part of speech approximates NLTK's statistical tagger. Measured differences
  (:data:`OFFLINE_MEASURED`): ingest/labels/README.md.
Both keep case as NLTK does: a capitalised sentence-initial "Dog" is not lemmatised to "dog" and so
falls outside the (lower-case) vocabulary, exactly as in the official evaluator.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ingest.labels.words import Word, split_words


@dataclass(frozen=True)
class Noun:
    """A noun of the response and its lemma."""

    word: Word
    """The word as written, with its character span."""
    lemma: str
    """Its noun lemma (case kept, as WordNet's lemmatizer does)."""


# WordNet's noun "morphy" substitutions, in its order.
_MORPHY_RULES = (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
                 ("men", "man"), ("ies", "y"))
# Irregular plurals from WordNet's noun.exc that reach the AMBER vocabulary (or shadow it).
_IRREGULAR = {
    "children": "child", "women": "woman", "feet": "foot", "teeth": "tooth", "geese": "goose",
    "mice": "mouse", "knives": "knife", "leaves": "leaf", "shelves": "shelf", "scarves": "scarf",
    "oxen": "ox", "calves": "calf", "wolves": "wolf", "halves": "half", "loaves": "loaf",
    "lives": "life", "wives": "wife", "thieves": "thief", "dice": "die", "cacti": "cactus",
}
# WordNet nouns (outside the AMBER vocabulary) that win the "shortest form" choice over a vocabulary
# word, or make a plural vocabulary word lemmatise away from itself.
_WORDNET_EXTRA = frozenset({
    "slipper", "earring", "chopstick", "sunglass", "leaf", "men", "glass", "die", "ox", "calf",
    "wolf", "half", "loaf", "life", "wife", "thief", "foot", "tooth", "vas",
})
# AMBER vocabulary words that are not WordNet nouns (checked against WordNet 3.0's index.noun): the
# lemmatizer never reduces a plural to them ("seegulls" stays "seegulls"), though the bare word is kept.
_NOT_IN_WORDNET = frozenset({
    "TV", "air-conditioning", "baconic", "bedsheet", "cann", "cathole", "chopsticks", "closestool", "cooktop",
    "doghole", "e-book", "earing", "earrings", "ebook", "electrombile", "hot", "kiwifruit", "paraglider",
    "pissoir", "rpoe", "sanitizer", "scoon", "seegull", "showerpuff", "slippers", "streetlamp", "waterfont",
})

_DETERMINERS = frozenset({"a", "an", "the", "this", "that", "these", "those", "one", "each", "every",
                          "its", "his", "her", "their", "my", "our", "your", "some", "any", "no",
                          "another", "two", "three", "four", "several", "many", "few"})
_PREPOSITIONS = frozenset({"of", "in", "on", "at", "with", "by", "near", "behind", "under", "over", "from",
                           "for", "beside", "above", "below", "into", "onto", "across", "around", "and", "or"})
_MODALS_PRONOUNS = frozenset({"can", "could", "will", "would", "shall", "should", "may", "might", "must",
                              "i", "we", "they", "you", "he", "she", "to"})
_TO_NOT_VERB = frozenset({"next", "close", "due", "according", "similar", "attached", "adjacent", "near",
                          "belonging", "leading", "compared", "up", "down", "back", "related", "opposite"})
_OBJECT_DETERMINERS = frozenset({"the", "a", "an", "his", "her", "their", "its"})
_BE = frozenset({"is", "are", "was", "were", "be", "been", "being", "'s", "'re", "am"})
# vocabulary words that are often adjectives right before another word ("orange cat", "light blue")
_ADJECTIVE_CAPABLE = frozenset({"orange", "light", "hot", "sound", "ice", "kiwi"})
# vocabulary words that are common verbs: after a plural subject and before a preposition or a
# determiner they are verbs ("the owners watch from a bench", "people line the street")
_VERB_CAPABLE = frozenset({"watch", "sign", "drink", "ring", "pack", "skate", "ski", "spray", "sound", "lock", "plug",
                           "book", "brush", "grill", "rock", "star", "tie", "track", "train", "fence",
                           "light", "stage", "paddle", "shovel", "switch", "support", "note", "file", "tape", "pipe",
                           "hose", "drain", "wire", "bike", "ship", "board", "bridge", "cash", "bill", "range", "tap",
                           "box", "bat", "pad", "pen", "table", "can", "net", "towel", "sponge", "saddle", "mat"})
_FOLLOWS_VERB = _PREPOSITIONS | frozenset({"the", "a", "an", "his", "her", "their", "its", "from", "through",
                                           "along", "up", "down", "out", "off", "together", "closely", "carefully"})
_NOT_NOUN_AFTER = frozenset({"and", "or", "is", "are", "was", "were", "in", "on", "at", "with", "of", "to",
                             "by", "near", "behind", "under", "over", "from", "for", "that", "which",
                             "who", "while", "as", "the", "a", "an"})


class OfflineNouns:
    """The default, download-free approximation of AMBER's NLTK pipeline (see the module docstring)."""

    name = "offline"

    def __init__(self, vocabulary: Iterable[str]):
        self.vocabulary = frozenset(vocabulary)
        self._known = (self.vocabulary - _NOT_IN_WORDNET) | _WORDNET_EXTRA

    def lemmatize(self, word: str) -> str:
        """WordNet-style noun lemma: shortest known form among the word, its irregular or rule forms."""
        if word in _IRREGULAR:
            forms = [word, _IRREGULAR[word]]
        else:
            forms = [word] + [word[: -len(old)] + new for old, new in _MORPHY_RULES if word.endswith(old)]
        known = [f for f in dict.fromkeys(forms) if f in self._known]
        # WordNet returns the word unchanged when no form is a WordNet noun (even a non-WordNet vocabulary word)
        return min(known, key=len) if known else word

    def _is_noun(self, words: list[Word], i: int, lemma: str, text: str = "") -> bool:
        w = words[i].text
        low = w.lower()
        # context stops at a line break: a bullet line's "- A ..." is not the previous sentence's next word
        p1 = words[i - 1].text.lower() if i >= 1 and "\n" not in text[words[i - 1].end:words[i].start] else ""
        p2 = (words[i - 2].text.lower()
              if p1 and i >= 2 and "\n" not in text[words[i - 2].end:words[i - 1].start] else "")
        nxt = i + 1 < len(words) and "\n" not in text[words[i].end:words[i + 1].start]
        n1 = words[i + 1].text if nxt else ""
        if p1 in _MODALS_PRONOUNS and not (p1 == "to" and p2 in _TO_NOT_VERB):
            return False
        if p1 == "to" and p2 == "next" and low == lemma:
            return False        # the tagger reads a bare singular word after "next to" as a verb
        if low == "can":
            return False        # the tagger tags "can" a modal, even after a determiner ("a can of soda")
        if low.endswith("ing") and p1 in _BE:
            return False
        if (low in _VERB_CAPABLE and n1.lower() in _FOLLOWS_VERB and len(p1) > 3 and p1.isalpha()
                and p1.endswith("s") and not p1.endswith(("ss", "us", "is", "ous")) and p1 not in _DETERMINERS):
            return False
        if lemma in _ADJECTIVE_CAPABLE and low == lemma and n1[:1].isalpha() and n1.lower() not in _NOT_NOUN_AFTER:
            return False        # a plural ("lights") is never the adjective
        # a verb-capable word followed by a determiner ("the man watches the TV"); "water" and "line"
        # stay nouns there for the tagger ("Plants water the road", "people line the street")
        if n1.lower() in _OBJECT_DETERMINERS and p1 not in _DETERMINERS \
                and p1 not in _PREPOSITIONS and p1 != "" and low not in ("water", "line"):
            return False
        return True

    def __call__(self, text: str) -> list[Noun]:
        words = split_words(text)
        out = []
        for i, w in enumerate(words):
            if not w.text[:1].isalnum():
                continue
            lemma = self.lemmatize(w.text)
            if lemma in self.vocabulary and self._is_noun(words, i, lemma, text):
                out.append(Noun(w, lemma))
        return out


NLTK_RESOURCES = ("punkt_tab", "averaged_perceptron_tagger_eng", "wordnet")
"""The NLTK data the official pipeline reads (NLTK >= 3.9 names: no pickles)."""

NLTK_INSTALL = ("pip install 'kevo[amber]' && python -m nltk.downloader "
                + " ".join(NLTK_RESOURCES) + " (or point NLTK_DATA at a folder holding them)")

OFFLINE_MEASURED = {"responses": 1004, "differ": 238, "CHAIR": 0.0, "Cover": 1.9, "Hal": 1.1, "Cog": 0.5}
"""The offline mode against the official evaluator (NLTK 3.10.4, exact matching) on a 1,004-response
audit set: responses whose per-response counts differ, and offline minus official, in points.
Re-measured by tests/test_labels_amber_audit.py; the table is in ingest/labels/README.md."""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def offline_warning(reason: str) -> str:
    """What a user sees when the offline approximation runs instead of the official pipeline."""
    m = OFFLINE_MEASURED
    return (f"warning: {reason}; AMBER nouns come from kevo's offline approximation, which differs from the "
            f"official NLTK pipeline on {m['differ']} of {m['responses']} audit responses "
            f"(CHAIR {m['CHAIR']:+.1f}, Cover {m['Cover']:+.1f}, Hal {m['Hal']:+.1f}, Cog {m['Cog']:+.1f} points; "
            f"ingest/labels/README.md). For the official pipeline: {NLTK_INSTALL}")


def nltk_missing_message(err: BaseException) -> str:
    """NLTK's LookupError (a banner of asterisks, the name sometimes in colour codes) as one line naming the
    resource."""
    text = _ANSI.sub("", str(err))
    name = re.search(r"Resource (?:entry )?['\"]?([\w./-]+?)['\"]? not found", text)
    loaded = re.search(r"Attempted to load ['\"]?([\w./-]+?)['\"]?\s*$", text, re.M)
    what = name.group(1) if name else (loaded.group(1) if loaded else "a resource")
    where = f" ({loaded.group(1)})" if loaded and loaded.group(1) != what else ""
    try:
        import nltk

        paths = ", ".join(nltk.data.path)
    except ImportError:  # pragma: no cover
        paths = "NLTK_DATA"
    return (f"NLTK data {what!r}{where} not found in NLTK_DATA or NLTK's data paths ({paths}); install it with "
            f"python -m nltk.downloader {what if what in NLTK_RESOURCES else ' '.join(NLTK_RESOURCES)} "
            "(or set NLTK_DATA to a folder that holds it)")


class NltkUnavailable(RuntimeError):
    """NLTK or its data is missing (the message names what and how to install it)."""


class NltkNouns:
    """AMBER's own pipeline (NLTK word_tokenize + pos_tag NN* + WordNet lemmatizer); needs NLTK data."""

    name = "nltk"

    def __init__(self, vocabulary: Iterable[str] | None = None):
        try:
            import nltk
            from nltk.stem import WordNetLemmatizer
        except ImportError as e:
            raise NltkUnavailable("the nltk package is not installed (pip install 'kevo[amber]')") from e
        import os

        # NLTK reads NLTK_DATA once, at import: honour a value set later in the same process
        for d in reversed([d for d in os.environ.get("NLTK_DATA", "").split(os.pathsep) if d]):
            if d not in nltk.data.path:
                nltk.data.path.insert(0, d)
        self._nltk = nltk
        self._lemmatizer = WordNetLemmatizer()
        try:  # fail now, with the data's name, rather than on the first response
            nltk.pos_tag(nltk.word_tokenize("A dog."))
            self._lemmatizer.lemmatize("dogs")
        except LookupError as e:
            raise NltkUnavailable(nltk_missing_message(e)) from e
        self.version = nltk.__version__

    def __call__(self, text: str) -> list[Noun]:
        nltk = self._nltk
        tokens = nltk.word_tokenize(text)
        tagged = nltk.pos_tag(tokens)
        out = []
        pos = 0
        for k, (tok, tag) in enumerate(tagged):
            # word_tokenize rewrites quotes ("" -> `` / ''); find the token's text from where we are
            m = re.compile(re.escape(tok)).search(text, pos) if tok not in ("``", "''") else None
            if m is None:
                span = Word(k, tok, pos, pos)
            else:
                span = Word(k, tok, m.start(), m.end())
                pos = m.end()
            if tag.startswith("NN"):
                out.append(Noun(span, self._lemmatizer.lemmatize(tok)))
        return out


NOUN_MODES = ("auto", "nltk", "offline")


def make_noun_extractor(kind: str, vocabulary: Iterable[str], warn=None):
    """``auto`` (default): the official NLTK pipeline when NLTK and its data are found, else the offline
    approximation with a warning (``warn(msg)``) stating its measured difference; ``nltk`` (an error
    without them) or ``offline`` (no downloads). The extractor's ``name`` says which one runs."""
    if kind == "offline":
        return OfflineNouns(vocabulary)
    if kind == "nltk":
        return NltkNouns(vocabulary)
    if kind == "auto":
        try:
            return NltkNouns(vocabulary)
        except NltkUnavailable as e:
            (warn or _warn_stderr)(offline_warning(str(e)))
            return OfflineNouns(vocabulary)
    raise ValueError(f"unknown noun extractor {kind!r}: expected one of {', '.join(NOUN_MODES)}")


def _warn_stderr(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr)
