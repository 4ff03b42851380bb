"""ByT5 byte tokenizer beyond the golden strings."""

import pytest

from llmvox_tts.model.byt5_tokenizer import ByT5Tokenizer

pytestmark = pytest.mark.unit


def test_bytes_plus_three_and_eos_per_call() -> None:
    tok = ByT5Tokenizer()
    assert tok.encode("A") == [65 + 3, 1]
    assert tok.encode("A", append_eos=False) == [68]
    assert tok.encode("\x00\xff") == [3, 195 + 3, 191 + 3, 1]  # "\xff" is two UTF-8 bytes


def test_special_strings_inside_words_and_longest_match() -> None:
    tok = ByT5Tokenizer()
    assert tok.encode("<extra_id_0>") == [259, 1]
    assert tok.encode("<extra_id_124>x") == [383, 123, 1]
    assert tok.encode("<extra_id_125>")[:2] == [ord("<") + 3, ord("e") + 3]  # not a token
    assert tok.encode("PEOSt") == [83, 385, 119, 1]
    assert tok.encode("[PAD][PAD]") == [384, 384, 1]


def test_words_encoding_and_decode_round_trip() -> None:
    tok = ByT5Tokenizer()
    ids = tok.encode_words("hi  you")  # a double space yields an empty word
    assert ids == [107, 108, 1, 1, 124, 114, 120, 1, 385]
    assert tok.decode(tok.encode("héllo wörld", append_eos=False)) == "héllo wörld"
    assert len(tok) == 386
