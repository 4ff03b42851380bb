"""The re-sequencer: audio parts of a turn released strictly in (seq, part) order, once each."""

from __future__ import annotations

import random

import pytest

from llmvox_common.resequencer import Resequencer, ResequencerOverflow
from llmvox_common.tts_streams import AudioPart

pytestmark = pytest.mark.unit


def _part(
    seq: int, part: int, *, last: bool = False, error: str | None = None, worker: str = "w0"
) -> AudioPart:
    return AudioPart(
        seq=seq,
        part=part,
        last=last or error is not None,
        pcm=bytes([seq, part]) * 4,
        tokens=part + 1,
        worker=worker,
        error=error,
        error_kind="failed" if error else None,
    )


def _keys(parts: list[AudioPart]) -> list[tuple[int, int]]:
    return [(p.seq, p.part) for p in parts]


def _push_all(reseq: Resequencer, parts: list[AudioPart]) -> list[AudioPart]:
    released: list[AudioPart] = []
    for part in parts:
        released.extend(reseq.push(part))
    return released


def test_in_order_parts_are_released_at_once() -> None:
    reseq = Resequencer(last_seq=1)
    for seq, part, last in [(0, 0, False), (0, 1, True), (1, 0, False), (1, 1, False)]:
        assert _keys(reseq.push(_part(seq, part, last=last))) == [(seq, part)]
        assert reseq.buffered == 0
    assert not reseq.finished
    assert (reseq.next_seq, reseq.next_part) == (1, 2)
    assert _keys(reseq.push(_part(1, 2, last=True))) == [(1, 2)]
    assert reseq.finished
    assert reseq.duplicates_dropped == 0


def test_out_of_order_parts_within_a_seq() -> None:
    reseq = Resequencer(last_seq=0)
    assert reseq.push(_part(0, 2, last=True)) == []
    assert reseq.push(_part(0, 1)) == []
    assert reseq.buffered == 2
    assert _keys(reseq.push(_part(0, 0))) == [(0, 0), (0, 1), (0, 2)]
    assert reseq.buffered == 0
    assert reseq.finished


def test_later_seqs_wait_for_the_end_of_earlier_ones() -> None:
    reseq = Resequencer(last_seq=2)
    assert _push_all(reseq, [_part(2, 0, last=True), _part(1, 0), _part(1, 1, last=True)]) == []
    assert _keys(reseq.push(_part(0, 0))) == [(0, 0)]
    assert not reseq.finished
    # Seq 1 is complete in the buffer, but may only follow seq 0's last part.
    assert _keys(reseq.push(_part(0, 1, last=True))) == [(0, 1), (1, 0), (1, 1), (2, 0)]
    assert reseq.finished


def test_released_parts_are_the_objects_pushed() -> None:
    reseq = Resequencer(last_seq=0)
    part = _part(0, 0, last=True, worker="replica-7")
    assert reseq.push(part) == [part]


def test_duplicates_of_buffered_parts_are_dropped() -> None:
    reseq = Resequencer(last_seq=0)
    reseq.push(_part(0, 1, last=True, worker="a"))
    assert reseq.push(_part(0, 1, last=True, worker="b")) == []
    assert reseq.duplicates_dropped == 1
    released = reseq.push(_part(0, 0))
    assert _keys(released) == [(0, 0), (0, 1)]
    assert released[1].worker == "a"  # the first copy wins


def test_duplicates_of_released_parts_are_dropped() -> None:
    reseq = Resequencer(last_seq=1)
    _push_all(reseq, [_part(0, 0), _part(0, 1, last=True), _part(1, 0)])
    # A replica regenerating seq 1 after a crash re-sends it from part 0; so does one for seq 0.
    assert _push_all(reseq, [_part(1, 0), _part(0, 0), _part(0, 1, last=True)]) == []
    assert reseq.duplicates_dropped == 3
    assert _keys(reseq.push(_part(1, 1, last=True))) == [(1, 1)]
    assert reseq.finished


def test_error_part_ends_its_seq() -> None:
    reseq = Resequencer(last_seq=1)
    released = _push_all(reseq, [_part(0, 0), _part(0, 1, error="deadline passed")])
    assert _keys(released) == [(0, 0), (0, 1)]
    assert released[1].error == "deadline passed"
    assert (reseq.next_seq, reseq.next_part) == (1, 0)


def test_error_part_without_last_flag_still_ends_its_seq() -> None:
    reseq = Resequencer(last_seq=1)
    broken = AudioPart(seq=0, part=0, last=False, pcm=b"", tokens=0, worker="w", error="boom")
    assert reseq.push(broken) == [broken]
    assert (reseq.next_seq, reseq.next_part) == (1, 0)


def test_error_part_of_the_last_seq_finishes_the_turn() -> None:
    reseq = Resequencer(last_seq=0)
    reseq.push(_part(0, 0, error="cancelled"))
    assert reseq.finished


def test_error_part_on_a_released_position_is_released_next() -> None:
    # Replica A sent parts 0 and 1 and died; replica B claimed the job after its deadline and
    # gave up at once, numbering its error part 0.
    reseq = Resequencer(last_seq=1)
    _push_all(reseq, [_part(0, 0, worker="a"), _part(0, 1, worker="a")])
    released = reseq.push(_part(0, 0, error="deadline passed", worker="b"))
    assert _keys(released) == [(0, 2)]
    assert released[0].error == "deadline passed"
    assert released[0].worker == "b"
    assert (reseq.next_seq, reseq.next_part) == (1, 0)
    # Replica A was only slow: its later parts come after the seq's end.
    assert reseq.push(_part(0, 2, worker="a")) == []
    assert reseq.push(_part(0, 3, last=True, worker="a")) == []
    assert reseq.duplicates_dropped == 1  # (0, 2) was released, as B's error
    assert reseq.late_dropped == 1


def test_error_part_truncates_buffered_parts_after_it() -> None:
    reseq = Resequencer(last_seq=1)
    _push_all(reseq, [_part(1, 0), _part(1, 1), _part(1, 2), _part(1, 3)])
    assert reseq.buffered == 4
    assert reseq.push(_part(1, 1, error="failed")) == []
    # (1, 1) superseded by the error, (1, 2) and (1, 3) past the new end.
    assert reseq.late_dropped == 3
    assert reseq.buffered == 2
    assert reseq.push(_part(1, 4, last=True)) == []
    assert reseq.late_dropped == 4
    released = reseq.push(_part(0, 0, last=True))
    assert _keys(released) == [(0, 0), (1, 0), (1, 1)]
    assert released[-1].error == "failed"
    assert reseq.finished


def test_error_after_a_known_end_is_late_and_repeated_error_is_duplicate() -> None:
    reseq = Resequencer(last_seq=1)
    reseq.push(_part(1, 1, last=True))
    assert reseq.push(_part(1, 2, error="late")) == []
    assert reseq.late_dropped == 1
    reseq.push(_part(1, 0, error="first"))
    assert reseq.push(_part(1, 0, error="again")) == []
    assert reseq.duplicates_dropped == 1
    released = reseq.push(_part(0, 0, last=True))
    assert [p.error for p in released] == [None, "first"]


def test_last_part_truncates_buffered_parts_past_it() -> None:
    reseq = Resequencer(last_seq=1)
    _push_all(reseq, [_part(1, 3, error="failed"), _part(1, 1, last=True)])
    assert reseq.late_dropped == 1
    assert _keys(_push_all(reseq, [_part(1, 0), _part(0, 0, last=True)])) == [
        (0, 0),
        (1, 0),
        (1, 1),
    ]


def test_buffer_is_bounded() -> None:
    reseq = Resequencer(last_seq=9, max_buffered=3)
    _push_all(reseq, [_part(1, 0), _part(2, 0), _part(3, 0)])
    with pytest.raises(ResequencerOverflow, match="max_buffered=3"):
        reseq.push(_part(4, 0))
    assert reseq.buffered == 3
    # The awaited part needs no room, and frees what follows it.
    assert _keys(reseq.push(_part(0, 0, last=True))) == [(0, 0), (1, 0)]
    assert reseq.buffered == 2


def test_duplicates_do_not_count_against_the_bound() -> None:
    reseq = Resequencer(last_seq=9, max_buffered=1)
    reseq.push(_part(1, 0))
    assert reseq.push(_part(1, 0)) == []
    assert reseq.duplicates_dropped == 1


def test_unknown_final_seq_never_finishes() -> None:
    reseq = Resequencer()
    _push_all(reseq, [_part(seq, 0, last=True) for seq in range(5)])
    assert reseq.next_seq == 5
    assert not reseq.finished
    assert reseq.last_seq is None


def test_done_after_finishes_when_the_seq_was_already_released() -> None:
    reseq = Resequencer()
    _push_all(reseq, [_part(0, 0, last=True), _part(1, 0, last=True)])
    reseq.done_after(1)
    assert reseq.finished
    assert reseq.last_seq == 1


def test_done_after_then_the_final_part() -> None:
    reseq = Resequencer()
    reseq.push(_part(0, 0, last=True))
    reseq.done_after(1)
    assert not reseq.finished
    reseq.push(_part(1, 0, last=True))
    assert reseq.finished


def test_done_after_drops_buffered_parts_of_later_seqs() -> None:
    reseq = Resequencer()
    _push_all(reseq, [_part(1, 0, last=True), _part(2, 0, last=True), _part(3, 0)])
    reseq.done_after(1)
    assert reseq.buffered == 1
    assert reseq.out_of_range_dropped == 2
    assert _keys(reseq.push(_part(0, 0, last=True))) == [(0, 0), (1, 0)]
    assert reseq.finished


def test_done_after_rejects_inconsistent_seqs() -> None:
    reseq = Resequencer(last_seq=3)
    reseq.done_after(3)  # the same value again is fine
    with pytest.raises(ValueError, match="already set"):
        reseq.done_after(4)
    released = Resequencer()
    _push_all(released, [_part(0, 0, last=True), _part(1, 0, last=True)])
    with pytest.raises(ValueError, match="before parts already released"):
        released.done_after(0)


def test_parts_outside_the_turn_are_dropped() -> None:
    reseq = Resequencer(first_seq=5, last_seq=6)
    assert (reseq.next_seq, reseq.next_part) == (5, 0)
    assert _push_all(reseq, [_part(4, 0, last=True), _part(7, 0), _part(0, 0)]) == []
    assert reseq.out_of_range_dropped == 3
    assert reseq.buffered == 0
    released = _push_all(reseq, [_part(6, 0, last=True), _part(5, 0, last=True)])
    assert _keys(released) == [(5, 0), (6, 0)]
    assert reseq.finished


def test_constructor_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="first_seq"):
        Resequencer(first_seq=-1)
    with pytest.raises(ValueError, match="max_buffered"):
        Resequencer(max_buffered=0)
    with pytest.raises(ValueError, match="before parts"):
        Resequencer(first_seq=3, last_seq=2)


def _random_turn(rng: random.Random) -> list[AudioPart]:
    """The parts of a turn as the replicas would produce them: some seqs fail midway."""
    parts: list[AudioPart] = []
    for seq in range(rng.randint(1, 6)):
        count = rng.randint(1, 5)
        failed = rng.random() < 0.2
        for position in range(count):
            final = position == count - 1
            parts.append(
                _part(seq, position, last=final, error="failed" if final and failed else None)
            )
    return parts


@pytest.mark.parametrize("seed", range(300))
def test_random_arrival_order_with_duplicates(seed: int) -> None:
    rng = random.Random(seed)
    expected = _random_turn(rng)
    duplicates = [rng.choice(expected) for _ in range(rng.randint(0, len(expected)))]
    arrivals = expected + duplicates
    rng.shuffle(arrivals)

    reseq = Resequencer(last_seq=expected[-1].seq, max_buffered=len(expected))
    released: list[AudioPart] = []
    for part in arrivals:
        released.extend(reseq.push(part))
        assert _keys(released) == _keys(expected[: len(released)])  # always an in-order prefix
        assert reseq.finished == (len(released) == len(expected))

    assert released == expected
    assert reseq.finished
    assert reseq.buffered == 0
    assert reseq.duplicates_dropped == len(duplicates)
    assert reseq.late_dropped == 0


@pytest.mark.parametrize("seed", range(100))
def test_regenerated_jobs_interleaved_with_the_originals(seed: int) -> None:
    """Each replica writes its parts in order; a crashed job's prefix is followed, anywhere in
    the stream, by its full regeneration on another replica."""
    rng = random.Random(seed)
    expected = _random_turn(rng)
    by_seq: dict[int, list[AudioPart]] = {}
    for part in expected:
        by_seq.setdefault(part.seq, []).append(part)
    writers = []
    for parts in by_seq.values():
        if rng.random() < 0.5:
            writers.append(parts[: rng.randint(0, len(parts))])  # the crashed replica's prefix
        writers.append(list(parts))
    arrivals: list[AudioPart] = []
    while any(writers):
        writer = rng.choice([w for w in writers if w])
        arrivals.append(writer.pop(0))

    reseq = Resequencer(last_seq=expected[-1].seq)
    assert _push_all(reseq, arrivals) == expected
    assert reseq.finished
    assert reseq.duplicates_dropped == len(arrivals) - len(expected)
