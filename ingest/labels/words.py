"""A response split into words with character spans.

The split mimics NLTK's Treebank word tokenizer on the cases that matter for object words:
alphanumeric runs with inner hyphens or slashes kept together ("air-conditioning", "e-book",
"desk/child/cup"; an en or em dash splits, as in NLTK 3.10), clitics split off
("dog's" -> "dog" + "'s", "don't" -> "do" + "n't"), and every punctuation mark a word of its own.
Every character that is not whitespace belongs to exactly one word, so every generated token that
carries text maps to a word.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+(?:[-'’/][^\W_]+)*|\S", re.UNICODE)
_CLITIC = re.compile(r"(?i)(n['’]t|['’](?:s|re|ve|ll|d|m))$")


@dataclass(frozen=True)
class Word:
    """One word of a response."""

    index: int
    """0-based index of the word in the response."""
    text: str
    """The word exactly as written (case kept)."""
    start: int
    """Character offset of the first character in the response."""
    end: int
    """Character offset one past the last character."""


def split_words(text: str) -> list[Word]:
    """Split ``text`` into :class:`Word` s in order (see the module docstring for the rules)."""
    out: list[Word] = []
    for m in _WORD.finditer(text or ""):
        s, e = m.start(), m.end()
        piece = m.group()
        c = _CLITIC.search(piece)
        if c and c.start() > 0:
            cut = s + c.start()
            out.append(Word(len(out), text[s:cut], s, cut))
            out.append(Word(len(out), text[cut:e], cut, e))
        else:
            out.append(Word(len(out), piece, s, e))
    return out
