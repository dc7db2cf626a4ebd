"""Word spans -> tokens with real tokenizers: every overlapping token, the first is the decision token.

Spans come from the runner's own ``token_char_spans`` (what ingest hands the labeler). The reference
is independent: each token's *bytes* (byte-level BPE: the GPT-2 byte alphabet; byte fallback:
``<0xNN>`` pieces and '▁' for a space) are laid end to end, and a token belongs to a word when its
byte range overlaps the word's UTF-8 byte range (a token made only of the leading bytes of a
multi-byte character belongs to that character's word).
"""

from __future__ import annotations

import json
import re

import pytest

from ingest.labels.align import label_columns, word_columns
from ingest.labels.words import split_words
from ingest.spans import token_char_spans
from tests.model_helpers import build_tokenizer

TEXT = "Beneath the mountains, a café hosts été festivals; the lighthouse’s keeper waves."


def _byte_level():
    return build_tokenizer(special=[], add_bos=False)


def _byte_fallback():
    """A Llama-style SentencePiece BPE with byte fallback (accented letters are not in its alphabet)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    corpus = ["the mountain and the cafe near the house keep the waves", "a festival hosts people"] * 5
    tok.train_from_iterator(corpus, trainer)
    # the 256 byte pieces are ordinary vocabulary entries, as in Llama's tokenizer
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    spec["model"]["byte_fallback"] = True
    tok = Tokenizer.from_str(json.dumps(spec))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _gpt2_byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what ByteLevel pieces are spelled in)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


def _token_bytes(tokenizer, ids) -> list[bytes]:
    pieces = tokenizer.convert_ids_to_tokens(ids)
    out = []
    if tokenizer.backend_tokenizer.decoder.__class__.__name__ == "ByteLevel":
        dec = {c: b for b, c in _gpt2_byte_alphabet().items()}
        return [bytes(dec[c] for c in p) for p in pieces]
    for k, p in enumerate(pieces):
        m = re.fullmatch(r"<0x([0-9A-F]{2})>", p)
        b = bytes([int(m.group(1), 16)]) if m else p.replace("▁", " ").encode()
        out.append(b[1:] if k == 0 and b.startswith(b" ") else b)  # the decoder strips one leading space
    return out


def _reference(tokenizer, ids, text):
    """word index per token from byte ranges (see the module docstring)."""
    tb = _token_bytes(tokenizer, ids)
    assert b"".join(tb) == text.encode()
    words = split_words(text)
    wb = [(len(text[: w.start].encode()), len(text[: w.end].encode())) for w in words]
    out, pos = [], 0
    for b in tb:
        s, e = pos, pos + len(b)
        pos = e
        hit = next((k for k, (a, z) in enumerate(wb) if a < e and s < z), None)
        out.append(hit)
    return out


@pytest.mark.parametrize("make", [_byte_level, _byte_fallback], ids=["byte_level_bpe", "byte_fallback_bpe"])
def test_every_word_gets_its_overlapping_tokens_and_decision_token(make):
    tokenizer = make()
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert text == TEXT
    starts, ends = token_char_spans(tokenizer, ids, text)
    cols = word_columns(split_words(text), starts, ends, tokenizer.convert_ids_to_tokens(ids))
    expected = _reference(tokenizer, ids, text)
    assert cols["word_index"] == expected
    # multi-piece words exist in this text for both tokenizers, and byte pieces for the accented ones
    multi = [w for w in set(expected) if w is not None and expected.count(w) > 1]
    assert len(multi) >= 3
    words = split_words(text)
    # the decision token is the first token of each word, and only that one
    for k in set(i for i in expected if i is not None):
        rows = [r for r, w in enumerate(expected) if w == k]
        assert [cols["is_word_start"][r] for r in rows] == [True] + [False] * (len(rows) - 1)
        assert all(cols["word"][r] == words[k].text for r in rows)


def test_byte_fallback_decision_token_is_the_first_byte_piece():
    tokenizer = _byte_fallback()
    ids = tokenizer.encode("été", add_special_tokens=False)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    text = tokenizer.decode(ids)
    starts, ends = token_char_spans(tokenizer, ids, text)
    cols = word_columns(split_words(text), starts, ends, tokenizer.convert_ids_to_tokens(ids))
    first_byte = pieces.index("<0xC3>")
    assert starts[first_byte] == ends[first_byte]  # a partial character: an empty span
    assert cols["word_index"][first_byte] == 0 and cols["is_word_start"][first_byte] is True
    assert all(w == 0 for w, p in zip(cols["word_index"], pieces) if p != "▁")


def test_object_labels_land_on_every_piece_of_the_mention():
    from ingest.labels.amber import AmberVocabulary, score_generative
    from ingest.labels.nouns import OfflineNouns

    tokenizer = _byte_level()
    response = "Two giraffes stand beside the mountains near a camera."
    ids = tokenizer.encode(response, add_special_tokens=False) + [tokenizer.eos_token_id]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    starts, ends = token_char_spans(tokenizer, ids, text)
    vocab = AmberVocabulary.load()
    record = {"type": "generative", "truth": ["mountain"], "hallu": ["giraffe"]}
    score = score_generative(record, OfflineNouns(vocab.vocabulary)(text), vocab)
    cols = label_columns(text, {"char_start": starts, "char_end": ends,
                                "piece": tokenizer.convert_ids_to_tokens(ids)}, score.mentions)
    expected = _reference(tokenizer, ids[:-1], text) + [None]          # the EOS token belongs to no word
    words = split_words(text)
    by_word = {"giraffes": ("giraffe", "hallucinated"), "mountains": ("mountain", "correct"),
               "camera": ("camera", "safe")}
    for r, w in enumerate(expected):
        want = by_word.get(words[w].text) if w is not None else None
        assert (cols["object"][r], cols["label"][r]) == (want if want else (None, None)), (r, w)
        assert cols["hallucinated"][r] == (None if not want else want[1] == "hallucinated")
    assert cols["word_index"][-1] is None
    assert sum(1 for w in expected if w is not None and words[w].text == "giraffes") >= 2  # multi-piece


def test_split_words_follows_the_treebank_tokenizer():
    # checked against NLTK's Treebank word tokenizer (per sentence) on these and the fixture responses
    assert [w.text for w in split_words("A dog's toy, the e-books; it's 3.5 m.")] == \
        ["A", "dog", "'s", "toy", ",", "the", "e-books", ";", "it", "'s", "3.5", "m", "."]
    words = split_words("  Dogs run.")
    assert [(w.index, w.text, w.start, w.end) for w in words] == [(0, "Dogs", 2, 6), (1, "run", 7, 10),
                                                                  (2, ".", 10, 11)]
    assert split_words("") == []


def test_a_token_spanning_two_words_belongs_to_both_in_tokens_of_words():
    from ingest.labels.align import tokens_of_words

    text = "a cat.\nA dog"
    words = split_words(text)                   # a, cat, ., A, dog
    starts, ends = [0, 1, 5, 7, 8], [1, 5, 7, 8, 12]   # "a", " cat", ".\n" , "A", " dog"
    assert tokens_of_words(words, starts, ends) == {0: [0], 1: [1], 2: [2], 3: [3], 4: [4]}
    starts, ends = [0, 1, 4, 8], [1, 4, 8, 12]         # "a", " ca", "t.\nA" (three words), " dog"
    assert tokens_of_words(words, starts, ends) == {0: [0], 1: [1, 2], 2: [2], 3: [2], 4: [3]}
    cols = word_columns(words, starts, ends)
    assert cols["word_index"] == [0, 1, 1, 4]   # the merged token is the first word's (cat); '.', 'A' get none


@pytest.mark.parametrize("piece,char", [("č", "\r"), ("Ċ", "\n"), ("ĉ", "\t"), ("Č", "\x0c"), ("Ġ", " "),
                                        ("<0x0D>", "\r")])
def test_a_bare_whitespace_piece_before_a_word_is_not_its_decision_token(piece, char):
    """Byte-level BPE spells bytes 0..32 as U+0100..U+0120: a lone carriage return ('č') before a word is a
    separator, not the first bytes of the word (it was the VQA answer token of a random model's reply)."""
    text = char + "rt questio"
    tokens = {"char_start": [0, 1, 3], "char_end": [1, 3, 11], "piece": [piece, "rt", "Ġquestio"]}
    cols = label_columns(text, tokens, (), answer_span=(1, 3))
    assert cols["word_index"] == [None, 0, 1]
    assert cols["is_answer"] == [False, True, False]
