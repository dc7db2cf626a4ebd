"""Word spans -> generated tokens.

The runner gives every generated token its character span in the response (``char_start``,
``char_end``). A word's tokens are all the tokens whose span overlaps the word's span; the first of
them (in generation order) is the *decision token*: the step at which the model committed to the
word. A token whose span is empty (a byte-fallback piece that completes no character by itself, e.g.
``<0xE2>`` before ``<0x80><0x99>``) is attached to the word whose first character it helps to build,
i.e. the word whose span contains the token's position; the end-of-sequence token (position = end of
the response) belongs to no word. Likewise a token whose span is only the whitespace before a word
but whose piece is more than a separator (byte-level BPE's ``ĠæĿ``: a space and the first two bytes
of 東, which the next token completes) carries the first bytes of that word: it joins the word that
starts where its span ends, and is its decision token.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from ingest.labels.words import Word

_WHITESPACE_BYTES = ("<0x09>", "<0x0A>", "<0x0D>", "<0x20>")


def _blank(piece: str | None) -> bool:
    """A piece that is only a word separator (SentencePiece '▁', byte-level 'Ġ', 'Ċ', a whitespace byte
    piece such as '<0x0A>', plain whitespace)."""
    if piece is None:
        return False
    for b in _WHITESPACE_BYTES:
        piece = piece.replace(b, " ")
    # byte-level BPE spells the bytes 0..32 as U+0100..U+0120 ('Ġ' space, 'Ċ' \n, 'ĉ' \t, 'č' \r, ...)
    piece = "".join(chr(ord(c) - 0x100) if 0x100 <= ord(c) <= 0x120 else c for c in piece)
    return piece.replace("▁", " ").strip() == ""


def _leads_next_word(words: Sequence[Word], starts: list[int], s: int, e: int, piece: str | None) -> int | None:
    """The word starting at ``e`` when the token [s, e) overlaps no word yet its piece is not a bare
    separator: it holds the first bytes of that word's first character."""
    if piece is None or _blank(piece):
        return None
    j = bisect.bisect_left(starts, e)
    if j < len(words) and words[j].start == e and (j == 0 or words[j - 1].end <= s):
        return j
    return None


def align_tokens(words: Sequence[Word], char_start: Sequence[int | None],
                 char_end: Sequence[int | None], pieces: Sequence[str | None] | None = None) -> list[int | None]:
    """Return, for every token, the index of the word it belongs to (None for none).

    ``pieces`` (optional) tells an empty-span token that is a bare separator (a leading '▁' whose space
    the decoder strips) from the first bytes of a character: only the latter joins the word.
    """
    n = len(char_start)
    out: list[int | None] = [None] * n
    if not words:
        return out
    starts = [w.start for w in words]

    for i in range(n):
        s, e = char_start[i], char_end[i]
        if s is None or e is None:
            continue
        if e > s:
            # first word whose end is past the token's start and whose start is before the token's end
            j = bisect.bisect_right(starts, s) - 1
            j = max(j, 0)
            while j < len(words) and words[j].end <= s:
                j += 1
            if j < len(words) and words[j].start < e:
                out[i] = j  # the token may also overlap later words; it is the *first* word's token
            elif pieces is not None:
                out[i] = _leads_next_word(words, starts, s, e, pieces[i])
        elif pieces is None or not _blank(pieces[i]):
            j = bisect.bisect_right(starts, s) - 1
            if j >= 0 and words[j].start <= s < words[j].end:
                out[i] = j
    return out


def word_columns(words: Sequence[Word], char_start: Sequence[int | None],
                 char_end: Sequence[int | None], pieces: Sequence[str | None] | None = None) -> dict[str, list]:
    """``word_index``, ``word`` and ``is_word_start`` columns for the tokens.

    A token that spans several words (e.g. a merged piece ``".\\n"`` or ``"s."``) is assigned to the
    first of them; every word gets its first overlapping token as decision token.
    """
    idx = align_tokens(words, char_start, char_end, pieces)
    seen: set[int] = set()
    word_index: list[int | None] = []
    word: list[str | None] = []
    is_start: list[bool | None] = []
    for j in idx:
        word_index.append(j)
        if j is None:
            word.append(None)
            is_start.append(None)
        else:
            word.append(words[j].text)
            is_start.append(j not in seen)
            seen.add(j)
    return {"word_index": word_index, "word": word, "is_word_start": is_start}


def tokens_of_words(words: Sequence[Word], char_start: Sequence[int | None],
                    char_end: Sequence[int | None], pieces: Sequence[str | None] | None = None) -> dict[int, list[int]]:
    """word index -> rows of every token that overlaps the word (a token may overlap several words)."""
    rows = _rows_overlapping(words, char_start, char_end, pieces)
    for i, at in _leading_rows(words, align_tokens(words, char_start, char_end, pieces), char_start).items():
        k = next(k for k, w in enumerate(words) if w.start == at)
        rows[k] = sorted(set(rows[k]) | {i})
    return {w.index: r for w, r in zip(words, rows) if r}


def _column(tokens, name: str) -> list:
    if hasattr(tokens, "column"):  # pyarrow.Table
        return tokens.column(name).to_pylist()
    return list(tokens[name])


def label_columns(response: str, tokens, mentions: Sequence = (), answer_span: tuple[int, int] | None = None) -> dict:
    """All label columns of ``tokens`` (a pyarrow.Table or dict with ``char_start``/``char_end``).

    ``mentions`` are objects with ``start``, ``end``, ``object`` and ``label`` (character span in the
    response): every token overlapping the mention's span gets its object and label. ``answer_span``
    (VQA/Yes-No): the decision token of the word at that span gets ``is_answer = True``.
    """
    from ingest.labels.words import split_words

    cs, ce = _column(tokens, "char_start"), _column(tokens, "char_end")
    words = split_words(response)
    names = tokens.column_names if hasattr(tokens, "column_names") else list(tokens)
    pieces = _column(tokens, "piece") if "piece" in names else None
    cols = word_columns(words, cs, ce, pieces)
    n = len(cs)
    obj: list[str | None] = [None] * n
    lab: list[str | None] = [None] * n
    hal: list[bool | None] = [None] * n
    spans = [Word(-1, "", m.start, m.end) for m in mentions]
    leading = _leading_rows(words, cols["word_index"], cs)
    for m, rows in zip(mentions, _rows_overlapping(spans, cs, ce, pieces)):
        rows = sorted(set(rows) | {r for r, at in leading.items() if m.start <= at < m.end})
        for r in rows:
            obj[r], lab[r], hal[r] = m.object, m.label, m.label == "hallucinated"
    cols.update({"object": obj, "label": lab, "hallucinated": hal})
    if answer_span is not None:
        rows = _rows_overlapping([Word(-1, "", *answer_span)], cs, ce, pieces)[0]
        rows = sorted(set(rows) | {r for r, at in leading.items() if answer_span[0] <= at < answer_span[1]})
        cols["is_answer"] = [i == rows[0] if rows else False for i in range(n)]
    return cols


def _rows_overlapping(spans: Sequence[Word], cs: Sequence, ce: Sequence, pieces=None) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in spans]
    for i, (s, e) in enumerate(zip(cs, ce)):
        if s is None or e is None or (e == s and pieces is not None and _blank(pieces[i])):
            continue
        for k, w in enumerate(spans):
            if (e > s and w.start < e and s < w.end) or (e == s and w.start <= s < w.end):
                out[k].append(i)
    return out


def _leading_rows(words: Sequence[Word], word_index: Sequence[int | None], cs: Sequence) -> dict[int, int]:
    """token row -> the position of the word it leads from outside its span (whitespace + first bytes)."""
    return {i: words[j].start for i, j in enumerate(word_index)
            if j is not None and cs[i] is not None and cs[i] < words[j].start}
