"""The replica dump-size rule (docs/streaming.md): chunk sizes, ×3 growth, the EOA flush."""

import pytest

from llmvox_tts.streaming.chunk_schedule import ChunkSchedule

pytestmark = pytest.mark.unit


def _sizes(schedule: ChunkSchedule, n: int) -> list[int]:
    out = [schedule.size]
    for _ in range(n):
        schedule.grow()
        out.append(schedule.size)
    return out


def test_default_growth_replica_0() -> None:
    assert _sizes(ChunkSchedule(10), 6) == [10, 30, 90, 270, 810, 1280, 1280]


def test_default_growth_replica_1() -> None:
    assert _sizes(ChunkSchedule(160), 3) == [160, 480, 1280, 1280]


def test_custom_cap() -> None:
    assert _sizes(ChunkSchedule(4, max_size=64), 4) == [4, 12, 36, 64, 64]


def test_initial_above_cap_is_kept() -> None:
    # Upstream grows only while below the cap and never clamps down.
    schedule = ChunkSchedule(100, max_size=50)
    schedule.grow()
    assert schedule.size == 100


def test_full_chunk_takes_exactly_size_tokens_and_grows() -> None:
    schedule = ChunkSchedule(3, max_size=1280)
    pending: list[int] = []
    chunks = []
    for token in range(1, 13):
        pending.append(token)
        chunk = schedule.take(pending, saw_eoa=False)
        if chunk is not None:
            chunks.append(chunk)
    assert chunks == [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12]]
    assert pending == []
    assert schedule.size == 27


def test_not_full_without_eoa_keeps_pending() -> None:
    schedule = ChunkSchedule(5)
    pending = [7, 8, 9]
    assert schedule.take(pending, saw_eoa=False) is None
    assert pending == [7, 8, 9]
    assert schedule.size == 5


def test_eoa_flush_includes_the_eoa_token() -> None:
    schedule = ChunkSchedule(10)
    pending = [5, 6, 453]
    assert schedule.take(pending, saw_eoa=True) == [5, 6, 453]
    assert pending == []
    assert schedule.size == 30


def test_full_chunk_wins_over_eoa_flush() -> None:
    schedule = ChunkSchedule(2)
    pending = [1, 2, 453]
    assert schedule.take(pending, saw_eoa=True) == [1, 2]
    assert pending == [453]
    assert schedule.size == 6


def test_eoa_with_nothing_pending_does_not_flush_or_grow() -> None:
    schedule = ChunkSchedule(8)
    pending: list[int] = []
    assert schedule.take(pending, saw_eoa=True) is None
    assert schedule.size == 8


@pytest.mark.parametrize(("initial", "max_size"), [(0, 10), (5, 0), (-1, 10)])
def test_rejects_non_positive_sizes(initial: int, max_size: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        ChunkSchedule(initial, max_size)
