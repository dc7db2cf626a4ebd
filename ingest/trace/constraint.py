"""Where a question's constraint sits: its character span in the question, and the input positions
(token indices of the model's input sequence) that carry it.

A constraint is the span of the question the answer depends on ("this building", "the car"). It is
located as the authors of the multimodal causal-tracing study do: decode the input tokens, search the
text for the constraint (first match inside the question), and take every token whose decoded text
overlaps the match. Special tokens (image placeholders, BOS) decode to their own text and never
overlap a question's span.
"""

from __future__ import annotations

from collections.abc import Sequence

from kevo_store.errors import KevoError


class ConstraintError(KevoError):
    """A constraint that cannot be located in its question or in the model's input tokens."""


def constraint_span(question: str, constraint: str) -> tuple[int, int]:
    """(start, end) of the first occurrence of ``constraint`` in ``question`` (exact case first, then
    case-insensitive, since released constraints are often capitalised: "This building")."""
    if not constraint or not constraint.strip():
        raise ConstraintError("empty constraint")
    i = question.find(constraint)
    if i < 0:
        i = question.lower().find(constraint.lower())
    if i < 0:
        raise ConstraintError(f"constraint {constraint!r} not found in the question {question!r}")
    return i, i + len(constraint)


def token_ends(tokenizer, ids: Sequence[int], start: int = 0) -> tuple[str, list[int]]:
    """The decoded text of ``ids[start:]`` and, for each of those tokens, the end offset of its text
    (decoding prefixes: byte-level and SentencePiece pieces merge correctly that way)."""
    ids = [int(x) for x in ids[start:]]
    ends = []
    for i in range(len(ids)):
        ends.append(len(tokenizer.decode(ids[: i + 1], skip_special_tokens=False,
                                         clean_up_tokenization_spaces=False)))
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return text, ends


def constraint_positions(tokenizer, input_ids: Sequence[int], question: str, constraint: str,
                         image_token_ids: set[int] | frozenset = frozenset()) -> list[int]:
    """Positions (in ``input_ids``) of the tokens that carry ``constraint``, in order.

    Decoding starts after the last image token (the question follows the image in every supported
    template, and placeholder runs of hundreds of tokens need not be decoded). Raises
    :class:`ConstraintError` naming the constraint and the question when it cannot be found.
    """
    c0, c1 = constraint_span(question, constraint)
    ids = [int(x) for x in input_ids]
    img = [i for i, t in enumerate(ids) if t in image_token_ids]
    start = img[-1] + 1 if img else 0
    text, ends = token_ends(tokenizer, ids, start)
    q = text.rfind(question)
    if q < 0:  # tokenizers that normalise text: search the question case-insensitively, then the constraint
        q = text.lower().rfind(question.lower())
    if q >= 0:
        a, b = q + c0, q + c1
    else:
        a = text.lower().rfind(constraint.lower())
        if a < 0:
            raise ConstraintError(f"constraint {constraint!r} not found in the decoded input tokens of the question "
                                  f"{question!r}")
        b = a + len(constraint)
    out, prev = [], 0
    for k, e in enumerate(ends):
        s = prev
        prev = e
        if e > s and s < b and e > a:
            out.append(start + k)
    if not out:
        raise ConstraintError(f"constraint {constraint!r} covers no input token of the question {question!r}")
    return out


def first_piece_id(tokenizer, word: str) -> int:
    """The id of the first piece of ``word`` as it appears inside a sentence (a leading space, so that
    SentencePiece and byte-level tokenizers give the word-initial piece, e.g. '▁Paris' / 'ĠParis')."""
    for text in (" " + word, word):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        ids = [i for i in ids if tokenizer.decode([i]).strip()]
        if ids:
            return int(ids[0])
    raise ConstraintError(f"the replacement word {word!r} has no token")
