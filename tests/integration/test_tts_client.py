"""TTSClient against a real Redis server: the entries it writes are the contract's, and it reads
audio back in order whatever order and how many times the replicas wrote it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, cast

import numpy as np
import pytest
import redis.asyncio

from llmvox_common.resequencer import Resequencer, ResequencerOverflow
from llmvox_common.tts_client import AudioPartStream, TTSClient, ensure_group
from llmvox_common.tts_streams import (
    CONSUMER_GROUP,
    JOBS_STREAM,
    AudioPart,
    JobFormatError,
    TextPiece,
    TTSJob,
    audio_stream_key,
    cancel_key,
    text_stream_key,
)

from .conftest import RedisClientFactory

pytestmark = pytest.mark.integration

Scenario = Callable[[redis.asyncio.Redis], Awaitable[None]]


def _run(redis_client: RedisClientFactory, scenario: Scenario, **client_kwargs: object) -> None:
    async def main() -> None:
        async with redis_client(**client_kwargs) as client:
            await scenario(client)

    asyncio.run(main())


def _part(seq: int, part: int, *, last: bool = False, error: str | None = None) -> AudioPart:
    pcm = np.full(4 * (part + 1), seq + part / 10, dtype="<f4").tobytes()
    return AudioPart(
        seq=seq,
        part=part,
        last=last or error is not None,
        pcm=pcm,
        tokens=part + 1,
        worker=f"replica-{seq % 2}",
        error=error,
        error_kind="failed" if error else None,
    )


def _turn(parts_per_seq: list[int]) -> list[AudioPart]:
    return [
        _part(seq, position, last=position == count - 1)
        for seq, count in enumerate(parts_per_seq)
        for position in range(count)
    ]


async def _write_parts(client: redis.asyncio.Redis, session: str, parts: list[AudioPart]) -> None:
    """XADD parts as replicas would, straight to the session's audio stream."""
    for part in parts:
        await client.xadd(audio_stream_key(session), part.to_fields())


def _keys(parts: list[AudioPart]) -> list[tuple[int, int]]:
    return [(p.seq, p.part) for p in parts]


class _SignallingRedis:
    """Passes XREAD through and sets `got_entries` whenever a read returned entries."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.got_entries = asyncio.Event()

    async def xread(self, *args: Any, **kwargs: Any) -> Any:
        reply = await self.client.xread(*args, **kwargs)
        if reply:
            self.got_entries.set()
        return reply


class _StepClock:
    """A clock that moves `step_s` on every reading, so timeouts do not hang on wall time."""

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


def test_enqueue_text_writes_exactly_the_contract_fields(redis_client: RedisClientFactory) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        tts = TTSClient(client, audio_ttl_s=300)
        entry_id = await tts.enqueue_text(
            "s1", 3, "Hello there.", first_chunk=20, max_chunk=640, deadline_ms=123
        )
        entries = await client.xrange(JOBS_STREAM)
        assert [eid.decode() for eid, _ in entries] == [entry_id]
        assert entries[0][1] == {
            b"session": b"s1",
            b"seq": b"3",
            b"first_chunk": b"20",
            b"max_chunk": b"640",
            b"reply_to": b"llmvox:audio:s1",
            b"deadline_ms": b"123",
            b"text": b"Hello there.",
        }
        assert TTSJob.from_fields(entries[0][1]).text == "Hello there."

        # The audio stream exists before any replica writes, empty and with an expiry.
        audio = audio_stream_key("s1")
        assert await client.exists(audio) == 1
        assert await client.xlen(audio) == 0
        assert 0 < await client.ttl(audio) <= 300

    _run(redis_client, scenario)


def test_enqueue_keeps_existing_audio_and_refreshes_its_expiry(
    redis_client: RedisClientFactory,
) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        tts = TTSClient(client, audio_ttl_s=300)
        await tts.enqueue_text("s1", 0, "One.")
        await _write_parts(client, "s1", [_part(0, 0, last=True)])
        await client.expire(audio_stream_key("s1"), 5)
        await tts.enqueue_text("s1", 1, "Two.")
        assert await client.xlen(audio_stream_key("s1")) == 1
        assert await client.ttl(audio_stream_key("s1")) > 5

    _run(redis_client, scenario)


def test_enqueue_trims_the_jobs_stream(redis_client: RedisClientFactory) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        tts = TTSClient(client, jobs_maxlen=10)
        for seq in range(500):
            await tts.enqueue_text("s1", seq, "Word.")
        # Approximate trimming drops whole stream nodes (100 entries by default), never below 10.
        assert 10 <= await client.xlen(JOBS_STREAM) < 500

    _run(redis_client, scenario)


def test_malformed_jobs_are_refused_before_anything_is_written(
    redis_client: RedisClientFactory,
) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        tts = TTSClient(client)
        with pytest.raises(JobFormatError, match="empty text"):
            await tts.enqueue_text("s1", 0, "  ")
        with pytest.raises(JobFormatError, match="first_chunk"):
            await tts.enqueue_text("s1", 0, "Hi.", first_chunk=0)
        assert await client.keys("*") == []

    _run(redis_client, scenario)


def test_streamed_text_job(redis_client: RedisClientFactory) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        tts = TTSClient(client, text_ttl_s=120)
        key = await tts.open_text_stream("s1", 2, first_piece="Hello")
        assert key == text_stream_key("s1", 2)
        await tts.append_text("s1", 2, "streamed")
        await tts.append_text("s1", 2, "world.")
        await tts.close_text("s1", 2)

        [(_, fields)] = await client.xrange(JOBS_STREAM)
        assert b"text" not in fields
        assert TTSJob.from_fields(fields) == TTSJob(
            session="s1", seq=2, reply_to=audio_stream_key("s1"), text_stream=key
        )
        pieces = [TextPiece.from_fields(f) for _, f in await client.xrange(key)]
        assert pieces == [
            TextPiece("Hello", False),
            TextPiece("streamed", False),
            TextPiece("world.", False),
            TextPiece("", True),
        ]
        assert 0 < await client.ttl(key) <= 120

    _run(redis_client, scenario)


def test_streamed_text_job_without_a_first_piece(redis_client: RedisClientFactory) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        tts = TTSClient(client)
        key = await tts.open_text_stream("s1", 0)
        assert await client.exists(key) == 0  # replicas XREAD it; it appears with the first piece
        await tts.append_text("s1", 0, "Done.", done=True)
        assert [TextPiece.from_fields(f) for _, f in await client.xrange(key)] == [
            TextPiece("Done.", True)
        ]
        assert await client.ttl(key) > 0

    _run(redis_client, scenario)


def test_cancel_sets_the_key_with_an_expiry(redis_client: RedisClientFactory) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        tts = TTSClient(client)
        await tts.cancel("s1", ttl_s=30)
        assert await client.get(cancel_key("s1")) == b"all"
        assert 0 < await client.ttl(cancel_key("s1")) <= 30
        await tts.cancel("s1", up_to_seq=4)
        assert await client.get(cancel_key("s1")) == b"4"
        await tts.clear_cancel("s1")
        assert await client.exists(cancel_key("s1")) == 0

    _run(redis_client, scenario)


def test_parts_reorders_and_dedupes(redis_client: RedisClientFactory) -> None:
    expected = _turn([3, 1, 4])

    async def scenario(client: redis.asyncio.Redis) -> None:
        rng = random.Random(7)
        written = expected + [rng.choice(expected) for _ in range(5)]
        rng.shuffle(written)
        await _write_parts(client, "s1", written)

        stream = TTSClient(client).parts("s1", last_seq=2, timeout_s=5)
        got = [part async for part in stream]
        assert got == expected  # pcm bytes included
        assert stream.duplicates_dropped == 5
        assert stream.resequencer.finished

    _run(redis_client, scenario)


def test_parts_follows_a_stream_still_being_written(redis_client: RedisClientFactory) -> None:
    expected = _turn([2, 3])

    async def scenario(client: redis.asyncio.Redis) -> None:
        reader = _SignallingRedis(client)
        stream = AudioPartStream(
            cast(redis.asyncio.Redis, reader),
            audio_stream_key("s1"),
            Resequencer(last_seq=1),
            block_ms=20,
            timeout_s=30,
        )

        async def replicas() -> None:
            for part in [expected[2], expected[0], expected[3], expected[0], *expected[1:]]:
                reader.got_entries.clear()
                await _write_parts(client, "s1", [part])
                # The next part is written only once the reader has read this one, so it
                # reads each part from a stream that ended before it.
                async with asyncio.timeout(30):
                    await reader.got_entries.wait()

        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(replicas(), name="replicas")
            got = [p async for p in stream]
        assert got == expected

    _run(redis_client, scenario)


def test_parts_stops_after_the_last_seq(redis_client: RedisClientFactory) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        # An earlier turn (seq 0-1) and the start of a later one (seq 4) share the stream.
        await _write_parts(client, "s1", _turn([1, 1, 2, 1, 1]))
        # Nothing more is ever written: had it not stopped at seq 3's last part, it would end
        # in a TimeoutError.
        stream = TTSClient(client).parts("s1", first_seq=2, last_seq=3, timeout_s=30)
        got = [part async for part in stream]
        assert stream.resequencer.finished
        assert _keys(got) == [(2, 0), (2, 1), (3, 0)]
        assert stream.resequencer.out_of_range_dropped >= 2

    _run(redis_client, scenario)


def test_error_part_ends_its_seq(redis_client: RedisClientFactory) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        await _write_parts(client, "s1", [_part(1, 0, last=True), _part(0, 0, error="deadline")])
        got = await TTSClient(client).collect("s1", last_seq=1, timeout_s=5)
        assert [(p.seq, p.part, p.error) for p in got] == [(0, 0, "deadline"), (1, 0, None)]

    _run(redis_client, scenario)


def test_final_seq_declared_later(redis_client: RedisClientFactory) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        await _write_parts(client, "s1", _turn([1, 2]))
        stream = TTSClient(client).parts("s1", last_seq=None, timeout_s=5)
        got = [await anext(stream) for _ in range(3)]
        stream.done_after(1)
        assert [part async for part in stream] == []
        assert _keys(got) == [(0, 0), (1, 0), (1, 1)]

    _run(redis_client, scenario)


def test_parts_times_out_when_parts_stop_coming(redis_client: RedisClientFactory) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        await _write_parts(client, "s1", [_part(0, 0), _part(0, 2, last=True), _part(0, 2)])
        clock = _StepClock(step_s=0.01)
        stream = TTSClient(client).parts("s1", last_seq=0, block_ms=1, timeout_s=0.3, clock=clock)
        assert _keys([await anext(stream)]) == [(0, 0)]
        released_at = clock.now
        with pytest.raises(TimeoutError, match="waiting for seq 0 part 1"):
            await anext(stream)
        # It gave up only once its clock had run `timeout_s` past the last part released.
        assert clock.now - released_at >= 0.3

    _run(redis_client, scenario)


def test_collect_times_out_on_a_silent_session(redis_client: RedisClientFactory) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        with pytest.raises(TimeoutError):
            await TTSClient(client).collect("nobody", last_seq=0, timeout_s=0.2)

    _run(redis_client, scenario)


def test_parts_raises_when_the_buffer_bound_is_exceeded(redis_client: RedisClientFactory) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        await _write_parts(client, "s1", [_part(seq, 0, last=True) for seq in range(1, 6)])
        stream = TTSClient(client, max_buffered=4).parts("s1", last_seq=5, timeout_s=5)
        with pytest.raises(ResequencerOverflow):
            await anext(stream)

    _run(redis_client, scenario)


def test_entries_that_are_not_parts_are_skipped(redis_client: RedisClientFactory) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        await client.xadd(audio_stream_key("s1"), {"note": "not a part"})
        await _write_parts(client, "s1", [_part(0, 0, last=True)])
        stream = TTSClient(client).parts("s1", last_seq=0, timeout_s=5)
        assert _keys([part async for part in stream]) == [(0, 0)]
        assert stream.malformed_skipped == 1

    _run(redis_client, scenario)


@pytest.mark.parametrize("protocol", [2, 3])
def test_reading_works_with_either_protocol(
    redis_client: RedisClientFactory, protocol: int
) -> None:
    expected = _turn([2, 1])

    async def scenario(client: redis.asyncio.Redis) -> None:
        await _write_parts(client, "s1", expected[::-1])
        assert await TTSClient(client).collect("s1", last_seq=1, timeout_s=5) == expected

    _run(redis_client, scenario, protocol=protocol)


def test_decoded_replies_give_string_ids(redis_client: RedisClientFactory) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        tts = TTSClient(client)
        entry_id = await tts.enqueue_text("s1", 0, "Hi.")
        assert isinstance(entry_id, str)
        assert isinstance(await tts.append_text("s1", 1, "word"), str)

    _run(redis_client, scenario, decode_responses=True)


def test_ensure_group_is_idempotent(redis_client: RedisClientFactory) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        # A job enqueued before any replica created the group is still delivered.
        await TTSClient(client).enqueue_text("s1", 0, "Early.")
        assert await ensure_group(client) is True
        assert await ensure_group(client) is False
        groups = await client.xinfo_groups(JOBS_STREAM)
        assert [group["name"] for group in groups] == [CONSUMER_GROUP.encode()]
        reply = await client.xreadgroup(CONSUMER_GROUP, "replica-0", {JOBS_STREAM: ">"}, count=5)
        [[_, [(_, fields)]]] = reply
        assert TTSJob.from_fields(fields).text == "Early."

    _run(redis_client, scenario)


def test_ensure_group_creates_the_stream(redis_client: RedisClientFactory) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        assert await ensure_group(client) is True
        assert await client.xlen(JOBS_STREAM) == 0

    _run(redis_client, scenario)
