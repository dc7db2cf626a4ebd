"""A word-level tokenizer for the organism, built offline with the `tokenizers` library.

It behaves like a small SentencePiece/LLaMA tokenizer: a word that follows a space is the piece
"▁word", punctuation is its own piece without "▁", a BOS "<s>" is prepended, and decoding turns
"▁" back into spaces. So "There is a red apple, a cup." comes back exactly, and the ingest's
word-span logic sees the same kind of pieces as with LLaVA's real tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel

from ingest.organism import world

SPECIAL = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
"""Special tokens; their ids are 0..4 in this order."""

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
"""LLaVA-1.5's llava_v1 system prompt (the ingest's LLaVA adapter uses the same)."""

EXTRA_PROMPTS = (
    "Describe the image.",
    "What is in this image?",
    "Answer with one word.",
    "Please answer yes or no.",
    "What colour is the object?",
)
"""A few extra prompt words so common follow-up prompts do not all map to <unk>."""


def prompt_template(prompt: str) -> str:
    """The llava_v1 conversation for one user turn with an image, ending where the answer starts."""
    return f"{SYSTEM} USER: <image>\n{prompt} ASSISTANT:"


def text_prompt_template(prompt: str) -> str:
    """The same conversation without an image: what the text-only language model is trained on."""
    return f"{SYSTEM} USER: {prompt} ASSISTANT:"


def corpus(extended: bool = False) -> list[str]:
    """Every text the organism is trained on or asked: the basis of the vocabulary.

    ``extended`` adds the words of the relation and VQA questions ("to the left of", "above",
    "What is the colour of ..."); without it the vocabulary is the shipped organism's (90 pieces)."""
    texts = [SYSTEM, "USER: ASSISTANT:", world.GENERATIVE_PROMPT, "Yes", "No", "yes", "no", *EXTRA_PROMPTS]
    for o in world.OBJECTS:
        for c in world.COLOURS[o]:
            texts.append(f"Is the {o} {c} in this image?")
        texts.append(f"Is there a {o} in this image?")
        if extended:
            texts.append(f"Is the {o} to the left of the {o} above the {o} in this image?")
            texts.append(world.colour_question(o))
        texts.append(f"There is a {world.COLOURS[o][0]} {o}, and a {o} on the {o}.")
    texts += [f"on the {b}." for b in world.BACKGROUNDS]
    texts += list(world.RGB) + list(world.SAFE_WORDS)
    for k, v in world.RELATION.items():
        texts += [k, *v]
    return texts


def _normalizer():
    # Whitespace runs become one "▁"; a segment starts with "▁" (LLaMA's add_dummy_prefix), except
    # right after a special token like <image>, where the "\n" that follows it is the separator.
    return normalizers.Sequence([
        normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Strip(left=True, right=False),
        normalizers.Prepend("▁"),
        normalizers.Replace(" ", "▁"),
    ])


def _pre_tokenizer():
    # "▁word" pieces, punctuation alone, a lone "▁" before a special token
    return pre_tokenizers.Split(Regex(r"▁?[A-Za-z0-9]+|[^A-Za-z0-9▁]|▁"), behavior="isolated")


def build_tokenizer(extended: bool = False) -> Tokenizer:
    """Build the tokenizer from :func:`corpus` (deterministic: the vocabulary is sorted)."""
    tmp = Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>"))
    tmp.normalizer = _normalizer()
    tmp.pre_tokenizer = _pre_tokenizer()
    pieces: set[str] = set()
    for text in corpus(extended):
        norm = tmp.normalizer.normalize_str(text)
        pieces.update(p for p, _ in tmp.pre_tokenizer.pre_tokenize_str(norm))
    pieces.add("▁")  # the space before a special token ("USER: <image>")
    vocab = {t: i for i, t in enumerate(SPECIAL)}
    for p in sorted(pieces):
        vocab.setdefault(p, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = _normalizer()
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.add_special_tokens(list(SPECIAL))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return tok


def save_hf_tokenizer(out: Path | str, model_max_length: int = 512, extended: bool = False):
    """Save as a Hugging Face fast tokenizer (tokenizer.json + tokenizer_config.json); return it."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(extended),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=model_max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        extra_special_tokens={"image_token": "<image>"},
    )
    hf.save_pretrained(str(out))
    return hf
