"""Token pieces, character spans of generated tokens in the response, and the vocabulary table."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pyarrow as pa

from kevo_store import schema


def token_char_spans(tokenizer, ids: Sequence[int], response: str) -> tuple[list[int], list[int]]:
    """Character span in ``response`` of each generated token.

    The boundary after token i is the longest common prefix of ``response`` and the decoded text of
    tokens 0..i, made monotone from the end. An unfinished multi-byte character decodes as U+FFFD in
    the prefix but not in the response, so it is not text yet; a byte that never becomes a valid
    character stays U+FFFD in both and is owned by its own token. So the spans partition the
    response; a token that adds no text of its own (the end-of-sequence token, the first bytes of a
    byte-fallback character) gets an empty span, and the token that completes a character owns it.
    """
    n = len(ids)
    if n == 0:
        return [], []
    ids = [int(i) for i in ids]
    bounds = []
    for i in range(n):
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
        bounds.append(len(os.path.commonprefix([text, response])))
    for i in range(n - 2, -1, -1):
        bounds[i] = min(bounds[i], bounds[i + 1])
    return [0, *bounds[:-1]], bounds


def pieces(tokenizer, ids: Sequence[int]) -> list[str | None]:
    out = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    return [p if isinstance(p, str) else None for p in out]


def vocab_table(tokenizer, vocab_size: int) -> pa.Table:
    """vocab_id, piece, text for every id of the output head (ids the tokenizer lacks get nulls)."""
    n_tok = len(tokenizer)
    ids = list(range(vocab_size))
    known = [i for i in ids if i < n_tok]
    piece = pieces(tokenizer, known) + [None] * (vocab_size - len(known))
    text = tokenizer.batch_decode([[i] for i in known], skip_special_tokens=False,
                                  clean_up_tokenization_spaces=False) + [None] * (vocab_size - len(known))
    return pa.table({"vocab_id": pa.array(ids, pa.int32()), "piece": pa.array(piece, pa.string()),
                     "text": pa.array(text, pa.string())}, schema=schema.VOCAB)
