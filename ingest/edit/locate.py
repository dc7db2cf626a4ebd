"""Where a question's constraint sits in the model's input sequence.

The prompt text is the family's template around the question (``Adapter.build_prompt``); the
constraint is the first match of its text in the question, and the question the first match in the
prompt. Its last token is found exactly: the prompt cut right after the constraint is encoded the
same way as the whole prompt, and must be a prefix of it (so the tokens up to the constraint's end
are the same in both); its length then gives the position. A tokenizer that merges across the cut
(a constraint that ends inside a word piece) is refused rather than guessed.
"""

from __future__ import annotations

import torch

from ingest.models import ModelError
from ingest.models.base import Adapter


def constraint_end(prompt_text: str, question: str, constraint: str) -> int:
    """Character offset, in the prompt text, just past the constraint."""
    q = prompt_text.find(question)
    if q < 0:
        raise ModelError(f"the question {question!r} is not in the prompt text {prompt_text!r}")
    c = question.find(constraint)
    if c < 0:
        raise ModelError(f"constraint {constraint!r} is not in the question {question!r}")
    return q + c + len(constraint)


def continue_text(prompt_text: str, more: str) -> str:
    """``more`` as the model's answer right after the prompt (a space unless the prompt ends in one)."""
    return prompt_text + ("" if prompt_text[-1:].isspace() else " ") + more


def edit_text(ad: Adapter, question: str, prefix: str, constraint: str, constraint_in: str,
              has_image: bool) -> tuple[str, int]:
    """The text the edit reads (prompt, plus the given answer prefix) and the constraint's end in it."""
    prompt = ad.build_prompt(question, has_image)
    if not prefix:
        if constraint_in == "prefix":
            raise ModelError(f"constraint {constraint!r} is to be found in the prefix, but the request has none")
        return prompt, constraint_end(prompt, question, constraint)
    text = continue_text(prompt, prefix)
    if constraint_in == "prefix":
        c = prefix.rfind(constraint)
        if c < 0:
            raise ModelError(f"constraint {constraint!r} is not in the prefix {prefix!r}")
        return text, len(text) - len(prefix) + c + len(constraint)
    return text, constraint_end(prompt, question, constraint)


def position_of(ad: Adapter, text: str, end: int, image) -> int:
    """Index, in the (unpadded) input sequence of ``text`` (+ image), of the token that ends at char ``end``."""
    full = ad.encode([text], None if image is None else [image]).input_ids[0]
    # the image placeholder normally precedes the question; try with the image, then without it
    attempts = [[image], None] if image is not None else [None]
    for imgs in attempts:
        try:
            prefix = ad.encode([text[:end]], imgs).input_ids[0]
        except Exception:  # noqa: BLE001 - a processor that refuses the cut prompt: try the other way
            continue
        n = prefix.shape[0]
        if n <= full.shape[0] and torch.equal(full[:n], prefix):
            return n - 1
    raise ModelError(f"constraint ending at {text[max(0, end - 20):end]!r}: the text cut after it does not tokenize "
                     "as a prefix of the whole text (it ends inside a token); extend it to a word boundary")
