"""Upstream replica loop and merger (MODEL_SPEC 8.2, 8.3) on cases the golden runs do not reach:
a segment ending inside a piece's ids, the step guard, a merger on an exhausted queue."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from llmvox_tts.streaming.upstream_replica import (
    AudioChunk,
    End,
    StepLimitExceeded,
    Switch,
    UpstreamReplica,
    merge_replica_streams,
)

pytestmark = pytest.mark.unit

EOA = 453
PAD = 384
TEXT_EOS = 385


def _bytes_tokenize(text: str) -> list[int]:
    return [b + 3 for b in text.encode()] + [1]


class FuncModel:
    """Token = f(text_id, position in segment); records resets and the fed ids."""

    def __init__(self, rule: Callable[[int, int], int]) -> None:
        self.rule = rule
        self.position = 0
        self.resets = 0
        self.fed: list[int] = []

    def reset(self) -> None:
        self.resets += 1
        self.position = 0

    def step(self, text_id: int) -> int:
        self.fed.append(text_id)
        token = self.rule(text_id, self.position)
        self.position += 1
        return token


def _replica(model: FuncModel, **kwargs) -> UpstreamReplica:
    kwargs.setdefault("replica_index", 0)
    kwargs.setdefault("initial_dump_size", 2)
    return UpstreamReplica(model, _bytes_tokenize, **kwargs)


def test_sentence_then_pad_until_eoa() -> None:
    # EOA at the second PAD step of the segment.
    model = FuncModel(lambda tid, pos: EOA if tid == PAD and pos == 4 else 10 + pos)
    replica = _replica(model, initial_dump_size=2)
    events = list(replica.run(["a."]))
    assert replica.text_ids_fed == [[100, 49, 1, TEXT_EOS], [PAD]]
    assert [s.token for s in replica.steps] == [10, 11, 12, 13, EOA]
    # 2-token chunk, dump 6; then EOA flush of the rest (EOA included), dump 18; end: 54.
    assert events == [AudioChunk((10, 11)), AudioChunk((12, 13, EOA)), Switch(1)]
    assert replica.schedule.size == 54
    assert replica.needs_piece
    assert not replica.ended


def test_segment_end_inside_a_piece_continues_in_a_new_segment() -> None:
    # EOA at the 2nd step of every segment: "abc" has 4 ids, so the segment ends inside it.
    model = FuncModel(lambda tid, pos: EOA if pos == 1 else 7)
    replica = _replica(model, initial_dump_size=100)
    events = list(replica.run(["abc"]))
    assert [(s.segment, s.text_id, s.token) for s in replica.steps] == [
        (0, 100, 7),
        (0, 101, EOA),
        (1, 102, 7),
        (1, 1, EOA),
    ]
    assert replica.text_ids_fed == [[100, 101, 102, 1]]  # one embedding call for the piece
    assert events == [AudioChunk((7, EOA)), Switch(1), AudioChunk((7, EOA)), Switch(1)]
    assert model.resets == 3  # at start, then at each segment end
    assert replica.segment == 2


def test_reset_inside_sentence_piece_clears_end_of_speech() -> None:
    # The sentence-ending piece loses its flags at the mid-piece reset: its remaining ids (the
    # 385 included) run in the new segment, and then a new piece is read, no PAD step.
    model = FuncModel(lambda tid, pos: EOA if tid == 49 else 5)
    replica = _replica(model, replica_index=1, initial_dump_size=100)
    events = list(replica.run([".<|eot_id|>"]))
    assert replica.text_ids_fed == [[49, 1, TEXT_EOS]]
    assert [s.segment for s in replica.steps] == [0, 1, 1]
    assert events == [AudioChunk((EOA,)), End()]
    assert replica.ended
    assert replica.needs_piece


def test_max_audio_length_drops_unsent_tokens() -> None:
    model = FuncModel(lambda tid, pos: 9)
    replica = _replica(model, initial_dump_size=100, max_audio_length=5)
    events = list(replica.run(["x<|eot_id|>"]))  # rstrip leaves "x"
    assert replica.text_ids_fed[0] == [123, 1, TEXT_EOS]
    assert len(replica.steps) == 6  # stops once 6 > 5 tokens wait
    assert events == [End()]
    assert replica.pending == ()
    assert replica.schedule.size == 300


def test_max_steps_guard_stops_a_model_without_eoa() -> None:
    replica = _replica(FuncModel(lambda tid, pos: 1), initial_dump_size=10, max_steps=50)
    with pytest.raises(StepLimitExceeded):
        list(replica.run(["never ends."]))
    assert len(replica.steps) == 50


def test_piece_without_sentence_end_needs_next_piece() -> None:
    replica = _replica(FuncModel(lambda tid, pos: 1), initial_dump_size=10)
    assert list(replica.feed("Hi")) == []
    assert replica.text_ids_fed == [[75, 108, 1]]
    assert replica.needs_piece


def test_replica_index_must_be_0_or_1() -> None:
    with pytest.raises(ValueError, match="replicas 0 and 1"):
        _replica(FuncModel(lambda tid, pos: 1), replica_index=2)


def test_merge_follows_switches_and_stops_at_end() -> None:
    a, b, c, d = (AudioChunk((i,)) for i in range(4))
    streams = [[a, Switch(1), c, End(), AudioChunk((9,))], [b, Switch(0), d]]
    assert merge_replica_streams(streams) == [
        (0, a),
        (0, Switch(1)),
        (1, b),
        (1, Switch(0)),
        (0, c),
        (0, End()),
    ]


def test_merge_stops_when_the_read_queue_is_exhausted() -> None:
    a = AudioChunk((1,))
    assert merge_replica_streams([[a, Switch(1)], [AudioChunk((2,))]]) == [
        (0, a),
        (0, Switch(1)),
        (1, AudioChunk((2,))),
    ]
    assert merge_replica_streams([[], [a, End()]]) == []
