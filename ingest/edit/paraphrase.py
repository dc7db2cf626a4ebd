"""Templated paraphrases of a request's question, for the generalisation measure of ``kevo edit eval``.

The paper measures generalisation on rephrasings of the edited question. A request file may list its
own (``paraphrases``); for a request without them, ``kevo edit eval`` writes them from templates:

- the image named otherwise: "in this image" -> "in this picture", "in this photo", "in the scene";
  "Describe this image." -> "Describe this picture.", "Describe this photo.", "Describe the scene.";
- a polite lead-in before the question: "Please answer: <question>" (this one changes the text
  *before* the constraint, so the key the edit reads there changes too; the rewrites above change
  only words after a constraint in the question, where a causal model's key is the same).

Only the words of the question outside the constraint are rewritten; a rewrite that would touch the
constraint, or that leaves the question as it was, is dropped. The words used are all in the
embedded organism's vocabulary (no `<unk>`), and plain English for any other model.
"""

from __future__ import annotations

import re

IMAGE_WORDS = (("this image", "this picture"), ("this image", "this photo"), ("this image", "the scene"))
LEAD_IN = "Please answer: "


def templated_paraphrases(question: str, constraint: str, constraint_in: str = "question") -> list[tuple[str, str]]:
    """Up to four ``(rewrite, paraphrase)`` of ``question`` that keep ``constraint`` (when it is in the
    question) intact; ``rewrite`` is ``"image-word"`` or ``"lead-in"``."""
    out: list[tuple[str, str]] = []
    for old, new in IMAGE_WORDS:
        for m in re.finditer(re.escape(old), question, flags=re.I):
            if constraint_in == "question" and _overlaps(question, constraint, m.start(), m.end()):
                continue
            out.append(("image-word", question[: m.start()] + new + question[m.end():]))
            break
    out.append(("lead-in", LEAD_IN + question))
    seen: set[str] = {question}
    keep = []
    for kind, p in out:
        if p not in seen and (constraint_in != "question" or constraint in p):
            seen.add(p)
            keep.append((kind, p))
    return keep


def _overlaps(text: str, span: str, start: int, end: int) -> bool:
    for m in re.finditer(re.escape(span), text):
        if m.start() < end and start < m.end():
            return True
    return False
