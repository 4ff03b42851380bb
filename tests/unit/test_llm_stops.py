"""Text deltas from generated tokens: incremental decoding, stop strings that straddle deltas
(no half of a stop string may leak), and finish reasons. Pure functions, no model."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from llmvox_common._proto.llmvox.llm.v1 import llm_pb2
from llmvox_llm.stops import IncrementalDecoder, StopMatch, StopStringFilter, finish_reason

pytestmark = pytest.mark.unit

# A byte-level vocabulary, as GPT-2/Llama-3 style BPE has: "é" is two tokens, "👋" is four.
VOCAB = {
    0: b"Hello",
    1: b" w",
    2: b"orld",
    3: b"\xc3",
    4: b"\xa9",
    5: b"\xf0\x9f",
    6: b"\x91",
    7: b"\x8b",
    8: b"!",
}


def byte_decode(ids: Sequence[int]) -> str:
    return b"".join(VOCAB[i] for i in ids).decode("utf-8", errors="replace")


def sentencepiece_decode(ids: Sequence[int]) -> str:
    # SentencePiece drops the leading space of a sequence's first piece: decoding a token on
    # its own would glue words together.
    text = "".join({0: "▁Hello", 1: "▁world", 2: "▁again"}[i] for i in ids).replace("▁", " ")
    return text[1:] if text.startswith(" ") else text


def deltas(decode: object, ids: Sequence[int]) -> list[str]:
    decoder = IncrementalDecoder(decode)  # type: ignore[arg-type]
    return [decoder.push(i) for i in ids]


def test_incremental_decoding_joins_to_the_whole_decode() -> None:
    ids = [0, 1, 2, 3, 4, 5, 6, 7, 8]
    pieces = deltas(byte_decode, ids)
    assert "".join(pieces) == byte_decode(ids) == "Hello worldé👋!"


def test_a_character_split_over_tokens_is_held_until_complete() -> None:
    assert deltas(byte_decode, [0, 3, 4]) == ["Hello", "", "é"]
    assert deltas(byte_decode, [5, 6, 7, 8]) == ["", "", "👋", "!"]


def test_spaces_between_sentencepiece_words_survive() -> None:
    assert deltas(sentencepiece_decode, [0, 1, 2]) == ["Hello", " world", " again"]


def feed_all(stops: Sequence[str], pieces: Sequence[str]) -> tuple[list[str], StopStringFilter]:
    stop_filter = StopStringFilter(stops)
    out = [stop_filter.feed(piece) for piece in pieces]
    out.append(stop_filter.flush())
    return out, stop_filter


def test_a_stop_string_split_over_two_deltas_does_not_leak_its_first_half() -> None:
    out, stop_filter = feed_all(["Paris"], ["The capital is Pa", "ris."])
    assert out == ["The capital is ", "", ""]
    assert stop_filter.match == StopMatch(stop="Paris", emitted="")


def test_held_text_that_is_not_a_stop_string_is_released() -> None:
    out, stop_filter = feed_all(["Paris"], ["Pa", "ck your bags"])
    assert out == ["", "Pack your bags", ""]
    assert stop_filter.match is None


def test_held_text_is_flushed_at_the_end() -> None:
    out, stop_filter = feed_all(["STOP"], ["the end S", "T"])
    assert out == ["the end ", "", "ST"]
    assert stop_filter.match is None


def test_the_earliest_stop_string_wins_and_nothing_follows() -> None:
    out, stop_filter = feed_all(["b", "a"], ["xxab", "more"])
    assert out == ["xx", "", ""]
    assert stop_filter.match == StopMatch(stop="a", emitted="xx")


def test_overlapping_prefixes_are_held_as_long_as_they_may_match() -> None:
    out, stop_filter = feed_all(["aab"], ["a", "a", "ab"])
    assert out == ["", "", "a", ""]
    assert stop_filter.match is not None


def test_no_stop_strings_passes_everything_at_once() -> None:
    assert feed_all([], ["a", "b"])[0] == ["a", "b", ""]


@pytest.mark.parametrize("seed", range(20))
def test_any_split_of_a_text_yields_exactly_the_text_before_the_stop(seed: int) -> None:
    rng = random.Random(seed)
    text = "The capital of France is Paris. It is lovely in spring."
    stops = rng.sample(["Paris", "is lovely", "spring.", "zzz", "France is P"], k=2)
    cuts = sorted(rng.sample(range(1, len(text)), k=rng.randint(1, 12)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    found = [text.index(s) for s in stops if s in text]
    expected = text[: min(found)] if found else text
    out, _ = feed_all(stops, pieces)
    # Deltas only ever append: equal to the text before the stop means nothing of it leaked.
    assert "".join(out) == expected


EOS = {2, 7}


def reason(**kwargs: object) -> int:
    base: dict[str, object] = {
        "stop_match": None,
        "eos_strings": set(),
        "last_token": 5,
        "eos_ids": EOS,
    }
    return int(finish_reason(**{**base, **kwargs}))  # type: ignore[arg-type]


def test_finish_reasons() -> None:
    assert reason(last_token=7) == llm_pb2.FINISH_REASON_EOS
    assert reason(last_token=5) == llm_pb2.FINISH_REASON_LENGTH
    assert reason(last_token=None) == llm_pb2.FINISH_REASON_LENGTH
    assert reason(stop_match=StopMatch("\n\n", "")) == llm_pb2.FINISH_REASON_STOP_STRING
    # A configured eos marker that is not one token here is matched as text: still EOS.
    assert (
        reason(stop_match=StopMatch("<|end|>", ""), eos_strings={"<|end|>"})
        == llm_pb2.FINISH_REASON_EOS
    )
