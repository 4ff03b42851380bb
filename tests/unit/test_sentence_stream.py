"""Sentence control: text ids per step, chunk boundaries, stop rules (no model involved)."""

import pytest

from llmvox_tts.model.byt5_tokenizer import encode
from llmvox_tts.streaming.chunk_schedule import ChunkSchedule
from llmvox_tts.streaming.sentence_stream import (
    SentenceStream,
    StopReason,
    SynthesisLimits,
    TextStarvedError,
)

pytestmark = pytest.mark.unit

EOA = 453


def stream(initial: int = 4, max_size: int = 64, **limits) -> SentenceStream:
    return SentenceStream(encode, ChunkSchedule(initial, max_size), SynthesisLimits(**limits))


def test_text_ids_then_eos_then_pad() -> None:
    s = stream()
    s.push_text(" Hi ")
    s.push_text("yo")
    s.close_text()
    ids = []
    for _ in range(9):
        ids.append(s.next_text_id())
        s.record(7)
    # "Hi" -> 75,108,</s>; "yo" -> 124,114,</s>; EOS; then PAD.
    assert ids == [75, 108, 1, 124, 114, 1, 385, 384, 384]


def test_streamed_text_starves_then_continues() -> None:
    s = stream()
    assert s.needs_text
    with pytest.raises(TextStarvedError):
        s.next_text_id()
    s.push_text("a")
    assert [s.next_text_id(), s.next_text_id()] == [100, 1]
    assert s.needs_text
    s.close_text()
    assert not s.needs_text
    assert s.next_text_id() == 385


def test_chunks_follow_schedule_and_eoa_flush_includes_eoa() -> None:
    s = stream(initial=2, max_size=100)
    s.push_text("ab")  # 3 ids + EOS, then PAD steps until EOA
    s.close_text()
    chunks = []
    tokens = [*range(10, 18), EOA]  # 8 speech tokens, then end of audio
    for t in tokens:
        s.next_text_id()
        chunks.extend(s.record(t))
        if s.done:
            break
    assert chunks == [[10, 11], [12, 13, 14, 15, 16, 17], [EOA]]
    assert s.stop_reason is StopReason.END_OF_AUDIO
    assert sum(map(len, chunks)) == s.tokens_generated == 9


def test_eoa_before_text_is_used_starts_new_segment() -> None:
    s = stream(initial=50)
    s.push_text("abc")
    s.close_text()
    assert s.starts_segment
    s.next_text_id()
    assert s.record(EOA) == [[EOA]]
    assert not s.done
    assert s.starts_segment
    assert s.segments == 1
    assert s.next_text_id() == 101  # "b": the rest of the text, in a fresh segment
    assert s.segments == 2


def test_runaway_guard_stops_and_keeps_pending_audio() -> None:
    s = stream(initial=1000, max_size=1000, max_tokens_per_text_id=2.0, min_token_budget=1)
    s.push_text("ab")  # 3 ids + EOS = 4 ids -> budget 8 tokens
    s.close_text()
    out = []
    while not s.done:
        s.next_text_id()
        out.extend(s.record(5))
    assert s.stop_reason is StopReason.RUNAWAY
    assert s.tokens_generated == 8
    assert out == [[5] * 8]


def test_max_audio_length_caps_total_tokens() -> None:
    s = stream(initial=3, max_size=3, max_audio_length=10, max_tokens_per_text_id=100)
    s.push_text("hello")
    s.close_text()
    out = []
    while not s.done:
        s.next_text_id()
        out.extend(s.record(9))
    assert s.stop_reason is StopReason.MAX_AUDIO_LENGTH
    assert [len(c) for c in out] == [3, 3, 3, 1]


def test_budget_has_a_floor_for_short_texts() -> None:
    limits = SynthesisLimits(max_tokens_per_text_id=5, min_token_budget=75)
    assert limits.token_budget(2) == 75
    assert limits.token_budget(100) == 500
    assert SynthesisLimits(max_audio_length=300).token_budget(1000) == 300


def test_segment_stops_before_decoder_runs_out_of_positions() -> None:
    s = stream(initial=100, max_size=100, max_tokens_per_text_id=1000, max_segment_steps=6)
    s.push_text("abcdefgh")
    s.close_text()
    out = []
    while not s.done:
        s.next_text_id()
        out.extend(s.record(3))
    assert s.stop_reason is StopReason.BLOCK_SIZE
    assert s.tokens_generated == 6
    assert out == [[3] * 6]
