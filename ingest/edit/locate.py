"""The text an edit reads and the position of its key: the last token of the constraint.

The prompt is the family's template around the question (``Adapter.build_prompt``), optionally
followed by a given answer prefix. The constraint's tokens are located exactly as causal tracing
locates them (:func:`ingest.trace.constraint.constraint_positions`: decode the input tokens, find the
constraint's text, take the tokens that overlap it); the key is read at the last of them. A
constraint in the prefix is its last mention there (the most recent one).
"""

from __future__ import annotations

from ingest.models import ModelError
from ingest.models.base import Adapter
from ingest.trace.constraint import constraint_positions


def continue_text(prompt_text: str, more: str) -> str:
    """``more`` as the model's answer right after the prompt (a space unless the prompt ends in one)."""
    return prompt_text + ("" if prompt_text[-1:].isspace() else " ") + more


def edit_text(ad: Adapter, question: str, prefix: str, has_image: bool) -> str:
    """The text the edit reads: the prompt, plus the given answer prefix if any."""
    prompt = ad.build_prompt(question, has_image)
    return continue_text(prompt, prefix) if prefix else prompt


def key_position(ad: Adapter, input_ids, question: str, prefix: str, constraint: str, constraint_in: str) -> int:
    """Index, in the unpadded ``input_ids``, of the constraint's last token."""
    if constraint_in == "prefix":
        c = prefix.rfind(constraint) if prefix else -1
        if c < 0:
            raise ModelError(f"constraint {constraint!r} is not in the prefix {prefix!r}")
        # the text from the constraint's last mention to the end of the prefix is found last in the input
        return constraint_positions(ad.tokenizer, input_ids, prefix[c:], constraint, ad.image_token_ids)[-1]
    return constraint_positions(ad.tokenizer, input_ids, question, constraint, ad.image_token_ids)[-1]
