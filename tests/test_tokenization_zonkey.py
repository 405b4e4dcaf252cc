import json
import os
import random

import pytest
import torch

from modeling_zonkey.tokenization_zonkey import ZonkeyTokenizer

PAD = 256

SAMPLES = [
    "",
    "a",
    "hello world",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n",
    "\x00",
    "nul\x00inside",
    "emoji 😀👍🏽👨‍👩‍👧",
    "中文字符和日本語のテキスト",
    "combining e\u0301 and n\u0303",
    "<pad>",
    "x<pad>y <pad> <pad><pad>",
    "<PAD> < pad > </s> <unk> <s>",
    "\ufeffbom and \u200bzero width",
    "\U0010ffff max code point",
]


def random_unicode(rng: random.Random, length: int) -> str:
    chars = []
    while len(chars) < length:
        cp = rng.randrange(0, 0x110000)
        if 0xD800 <= cp <= 0xDFFF:  # surrogates are not encodable in UTF-8
            continue
        chars.append(chr(cp))
    return "".join(chars)


@pytest.fixture(scope="module")
def tok() -> ZonkeyTokenizer:
    return ZonkeyTokenizer()


def test_vocab_layout(tok):
    assert len(tok) == 257
    assert tok.vocab_size == 257
    assert tok.pad_token == "<pad>"
    assert tok.pad_token_id == PAD
    assert tok.bos_token_id is None and tok.eos_token_id is None and tok.unk_token_id is None
    assert tok.all_special_ids == [PAD]
    assert tok.padding_side == "right"
    assert tok.model_max_length == 2048
    assert len(tok.get_vocab()) == 257


@pytest.mark.parametrize("text", SAMPLES)
def test_ids_are_utf8_bytes_and_round_trip(tok, text):
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tok.encode(text) == ids
    assert tok.decode(ids) == text


def test_random_unicode_round_trip(tok):
    rng = random.Random(1234)
    for _ in range(200):
        text = random_unicode(rng, rng.randrange(0, 40))
        ids = tok(text)["input_ids"]
        assert ids == list(text.encode("utf-8"))
        assert all(0 <= i < 256 for i in ids)
        assert tok.decode(ids) == text


def test_literal_pad_text_is_encoded_as_bytes(tok):
    ids = tok("a<pad>b")["input_ids"]
    assert PAD not in ids
    assert ids == [97, 60, 112, 97, 100, 62, 98]
    assert tok.tokenize("<pad>") == ["<", "p", "a", "d", ">"]
    # Even when the caller asks not to split special tokens.
    assert tok("<pad>", split_special_tokens=False)["input_ids"] == list(b"<pad>")
    assert tok.decode(ids) == "a<pad>b"
    assert tok.decode(ids, skip_special_tokens=True) == "a<pad>b"


def test_no_special_tokens_added(tok):
    assert tok("abc", add_special_tokens=True)["input_ids"] == [97, 98, 99]
    assert tok.build_inputs_with_special_tokens([1, 2], [3]) == [1, 2, 3]
    assert tok.num_special_tokens_to_add() == 0
    assert tok.num_special_tokens_to_add(pair=True) == 0


def test_empty_string(tok):
    enc = tok("")
    assert enc["input_ids"] == []
    assert enc["attention_mask"] == []
    assert tok.decode([]) == ""


def test_invalid_utf8_decoding_does_not_crash(tok):
    assert tok.decode([0xE2, 0x82]) == "\ufffd"
    assert tok.decode([0xFF]) == "\ufffd"
    assert tok.decode([104, 0xFF, 105]) == "h\ufffdi"
    # Truncated euro sign followed by valid text.
    assert tok.decode([0xE2, 0x82, 97]) == "\ufffda"


def test_skip_special_tokens(tok):
    ids = [104, 105, PAD, PAD]
    assert tok.decode(ids) == "hi<pad><pad>"
    assert tok.decode(ids, skip_special_tokens=True) == "hi"
    # A pad between the bytes of one character does not break the character when skipped.
    euro = list("€".encode("utf-8"))
    assert tok.decode(euro[:1] + [PAD] + euro[1:], skip_special_tokens=True) == "€"


def test_batch_padding_and_attention_mask(tok):
    enc = tok(["a", "abcd"], padding=True, return_tensors="pt")
    assert enc["input_ids"].tolist() == [[97, PAD, PAD, PAD], [97, 98, 99, 100]]
    assert enc["attention_mask"].tolist() == [[1, 0, 0, 0], [1, 1, 1, 1]]
    assert set(enc.keys()) == {"input_ids", "attention_mask"}


def test_batch_decode_tensor(tok):
    texts = ["a", "héllo 😀", ""]
    enc = tok(texts, padding=True, return_tensors="pt")
    assert isinstance(enc["input_ids"], torch.Tensor)
    assert tok.batch_decode(enc["input_ids"], skip_special_tokens=True) == texts
    with_pads = tok.batch_decode(enc["input_ids"])
    width = enc["input_ids"].shape[1]
    assert with_pads[0] == "a" + "<pad>" * (width - 1)
    assert tok.decode(enc["input_ids"], skip_special_tokens=True) == texts


def test_truncation(tok):
    enc = tok("abcdef", truncation=True, max_length=3)
    assert enc["input_ids"] == [97, 98, 99]


def test_save_and_load_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    with open(os.path.join(tmp_path, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert config["tokenizer_class"] == "ZonkeyTokenizer"
    assert config["model_max_length"] == 2048

    loaded = ZonkeyTokenizer.from_pretrained(tmp_path)
    assert len(loaded) == 257
    assert loaded.pad_token_id == PAD
    assert loaded.model_max_length == 2048
    rng = random.Random(7)
    texts = SAMPLES + [random_unicode(rng, 30) for _ in range(20)]
    for text in texts:
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
        assert loaded.decode(tok(text)["input_ids"]) == text
    batch = ["x", "longer <pad> text"]
    assert (
        loaded(batch, padding=True, return_tensors="pt")["input_ids"].tolist()
        == tok(batch, padding=True, return_tensors="pt")["input_ids"].tolist()
    )


def test_fixed_vocabulary_refuses_added_tokens_offsets_and_left_padding(tokenizer):
    from modeling_zonkey import ZonkeyTokenizer

    fresh = ZonkeyTokenizer()
    with pytest.raises(ValueError, match="fixed vocabulary"):
        fresh.add_tokens(["<new>"])
    assert len(fresh) == 257 and fresh.add_tokens(["<pad>", "a"]) == 0
    with pytest.raises(NotImplementedError, match="does not return offsets"):
        fresh("abc", return_offsets_mapping=True)
    with pytest.raises(ValueError, match="pads on the right only"):
        fresh.padding_side = "left"
    with pytest.raises(ValueError, match="pads on the right only"):
        ZonkeyTokenizer(padding_side="left")
    with pytest.raises(ValueError, match="pads on the right only"):
        fresh(["a", "bcd"], padding=True, padding_side="left")
    assert fresh(["a", "bcd"], padding=True)["input_ids"] == [[97, 256, 256], [98, 99, 100]]


@pytest.mark.parametrize("text, position, code", [("a\ud800b", 1, "D800"), ("\udfff", 0, "DFFF"),
                                                  ("é\ud83d\ude00", 1, "D83D")])
def test_lone_surrogate_raises_a_clear_error(tok, text, position, code):
    """#16 item 9: a str with a surrogate code point has no UTF-8 bytes; one ValueError names it and the fix
    (the raw UnicodeEncodeError of str.encode used to escape)."""
    for encode in (tok, tok.encode, tok.tokenize, lambda t: tok(["fine", t], padding=True)):
        with pytest.raises(ValueError) as info:
            encode(text)
        message = str(info.value)
        assert not isinstance(info.value, UnicodeError)
        assert f"lone surrogate U+{code} at position {position}" in message and "errors='replace'" in message, message
    cleaned = text.encode("utf-8", errors="replace").decode("utf-8")  # the fix the message gives
    assert tok(cleaned)["input_ids"] == list(cleaned.encode("utf-8"))
