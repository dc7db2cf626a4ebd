"""Runner pieces that need no model: layer lists, token character spans, the disk estimate, datasets."""

from __future__ import annotations

import json

import pytest

from ingest.config import IngestError
from ingest.datasets import DatasetError
from ingest.datasets import folder as folder_ds
from ingest.datasets import text as text_ds
from ingest.estimate import estimate_disk
from ingest.layers import parse_layer_spec
from ingest.spans import token_char_spans
from tests.model_helpers import build_tokenizer


def test_parse_layer_spec_ranges_and_order():
    assert parse_layer_spec("20-26,30", 32, "--skip-layers") == [20, 21, 22, 23, 24, 25, 26, 30]
    assert parse_layer_spec("8, 0,8", 33, "--hidden") == [0, 8]


@pytest.mark.parametrize("spec,msg", [("30-40", "layer 32 is out of range"), ("5-3", "reversed"),
                                      ("a", "not a layer number"), (",", "no layers"),
                                      ("-1", "layer -1 is out of range"), ("3-", "not a layer number")])
def test_parse_layer_spec_errors_name_the_option(spec, msg):
    with pytest.raises(IngestError) as e:
        parse_layer_spec(spec, 32, "--skip-layers")
    assert "--skip-layers" in str(e.value) and msg in str(e.value)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer([])


@pytest.mark.parametrize("text", ["A cat and a dog on the table.", "Il était une fois, 猫 🐈 — naïve café!",
                                  "  leading spaces and\nnew lines\t tabs", "🎸🎸 guitar"])
def test_token_char_spans_partition_the_response(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    response = tok.decode(ids, skip_special_tokens=True)
    starts, ends = token_char_spans(tok, ids, response)
    assert len(starts) == len(ids)
    # the spans partition the response, in order
    assert starts[0] == 0 and ends[-1] == len(response)
    assert all(e == s2 for e, s2 in zip(ends[:-1], starts[1:]))
    assert "".join(response[s:e] for s, e in zip(starts, ends)) == response
    # the end-of-sequence token adds no text
    assert starts[-1] == ends[-1]
    # a token whose bytes form whole characters owns exactly its own decoded text
    for i, (s, e) in enumerate(zip(starts, ends)):
        piece_text = tok.decode([ids[i]], skip_special_tokens=True)
        if "\ufffd" not in piece_text and i < len(ids) - 1:
            assert response[s:e] == piece_text, (i, piece_text, response[s:e])


def test_token_char_spans_byte_fallback_char_goes_to_completing_token(tok):
    # the tiny byte-level BPE never saw '猫': it is 3 byte tokens; only the last one completes the character
    ids = tok("猫", add_special_tokens=False)["input_ids"]
    assert len(ids) == 3
    starts, ends = token_char_spans(tok, ids, "猫")
    assert list(zip(starts, ends)) == [(0, 0), (0, 0), (0, 1)]


def test_disk_estimate_counts():
    e = estimate_disk(n_items=10, tokens_per_item=256, n_layers=32, n_hidden_layers=33, hidden_size=4096,
                      n_modes=2, top_k=10)
    assert e.tokens == 2560
    assert e.hidden_bytes == 2560 * 33 * 4096 * 2
    assert e.layers_rows == 2560 * 2 * 33 and e.topk_rows == e.layers_rows * 10
    assert "= 692.1 MB" in e.format()  # 2560 x 33 x 4096 x 2 B


def test_text_dataset_lines_and_jsonl(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("first prompt\n\n  second prompt  \n")
    ds = text_ds.dataset(p)
    assert [(i.key, i.prompt) for i in ds.items] == [("text:1", "first prompt"), ("text:3", "second prompt")]
    j = tmp_path / "p.jsonl"
    j.write_text(json.dumps({"id": "a", "prompt": "x", "topic": "cats"}) + "\n" + json.dumps({"prompt": "y"}) + "\n")
    ds = text_ds.dataset(j)
    assert [(i.key, i.annotations) for i in ds.items] == [("text:a", {"id": "a", "topic": "cats"}), ("text:2", {})]


@pytest.mark.parametrize("content,msg", [("", "contains no prompts"), ("\n  \n", "contains no prompts"),
                                         ('{"prompt": "x"}\n{oops\n', "record 2 (line 2): malformed JSON"),
                                         ('{"id": 1}\n', "record 1 (line 1): \"prompt\" is missing"),
                                         ('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', "duplicate id")])
def test_text_dataset_errors_name_file_and_line(tmp_path, content, msg):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(DatasetError) as e:
        text_ds.dataset(p)
    assert str(p) in str(e.value) and msg in str(e.value)


def test_folder_dataset_sorted_recursive_and_errors(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ("b/2.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    ds = folder_ds.dataset(tmp_path, "Describe.")
    assert [i.key for i in ds.items] == ["folder:a.jpg", "folder:b/2.png"]
    with pytest.raises(DatasetError, match="no image files"):
        folder_ds.dataset(tmp_path / "b" / "..", "x") if False else folder_ds.dataset(_empty(tmp_path), "x")
    with pytest.raises(DatasetError, match="no such directory"):
        folder_ds.dataset(tmp_path / "missing", "x")


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_token_char_spans_invalid_bytes_keep_their_own_replacement_char(tok):
    # two lone continuation bytes never form a character: each stays U+FFFD, owned by its own token
    ids = [tok.convert_tokens_to_ids(p) for p in ("Ġyes", "¿", "ß", "x")]
    response = tok.decode(ids, skip_special_tokens=True)
    assert response == " yes\ufffd\ufffdx"
    starts, ends = token_char_spans(tok, ids, response)
    assert [response[s:e] for s, e in zip(starts, ends)] == [" yes", "\ufffd", "\ufffd", "x"]


@pytest.fixture(scope="module")
def sp_tok():
    """A Llama-style SentencePiece tokenizer with byte fallback (▁ pieces, <0xNN> byte tokens), built offline."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{i:02X}>": 3 + i for i in range(256)})
    for p in ["▁", *"abcdefghijklmnopqrstuvwxyz.,!?'é"]:
        vocab.setdefault(p, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_token_char_spans_sentencepiece_byte_fallback(sp_tok):
    ids = sp_tok("the cat 猫 é 🎸!", add_special_tokens=False)["input_ids"] + [sp_tok.eos_token_id]
    pieces = sp_tok.convert_ids_to_tokens(ids)
    assert pieces[9:12] == ["<0xE7>", "<0x8C>", "<0xAB>"]  # 猫 is three byte-fallback pieces
    response = sp_tok.decode(ids, skip_special_tokens=True)
    assert response == "the cat 猫 é 🎸!"
    starts, ends = token_char_spans(sp_tok, ids, response)
    texts = [response[s:e] for s, e in zip(starts, ends)]
    assert "".join(texts) == response
    # the leading '▁' adds nothing (the decoder strips it); the last byte of a character owns it
    assert texts[:4] == ["", "t", "h", "e"]
    assert texts[9:12] == ["", "", "猫"]
    assert texts[15:19] == ["", "", "", "🎸"]
    assert texts[-1] == ""  # </s>


def test_token_char_spans_generation_cut_inside_a_character(sp_tok):
    # max_new_tokens stopped after two of the emoji's four bytes: each lone byte shows as U+FFFD
    ids = sp_tok("ok 🎸", add_special_tokens=False)["input_ids"][:-2]
    response = sp_tok.decode(ids, skip_special_tokens=True)
    assert response == "ok \ufffd\ufffd"
    starts, ends = token_char_spans(sp_tok, ids, response)
    assert [response[s:e] for s, e in zip(starts, ends)][-2:] == ["\ufffd", "\ufffd"]


def test_read_records_json_list_and_jsonl_agree(tmp_path):
    """One reader for every record file (questions, responses, prompts, edit requests)."""
    from ingest.datasets.base import read_records

    recs = [{"id": 1, "response": "A cat."}, {"id": 2, "response": "A dog."}]
    (tmp_path / "r.json").write_text(json.dumps(recs, indent=2))
    (tmp_path / "r.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    a, b = read_records(tmp_path / "r.json", "--responses"), read_records(tmp_path / "r.jsonl", "--responses")
    assert [r.value for r in a] == [r.value for r in b] == recs
    assert [r.where for r in a] == ["record 1", "record 2"] and [r.where for r in b] == ["record 1 (line 1)",
                                                                                           "record 2 (line 2)"]
    with pytest.raises(DatasetError, match=r"--responses .*nope.json: file not found"):
        read_records(tmp_path / "nope.json", "--responses")
