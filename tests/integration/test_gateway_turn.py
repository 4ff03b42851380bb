"""The gateway's turn pipeline (turn.py) over the real Redis server, with a scripted FAKE replica
in place of the model (the test is about the protocol): streamed text reaches the jobs as whole
words with the turn's deadline, parts that arrive out of order and twice come out once and in
order, cancellation and text-source failures end the turn and cancel its jobs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
from redis.asyncio import Redis

from llmvox_common.sentences import SentenceSplitter
from llmvox_common.tts_client import TTSClient, ensure_group
from llmvox_common.tts_streams import (
    CONSUMER_GROUP,
    JOBS_STREAM,
    AudioPart,
    TextPiece,
    TTSJob,
    cancel_key,
)
from llmvox_gateway.errors import GatewayError
from llmvox_gateway.turn import AudioChunk, ChunkPlan, TextDelta, Turn, TurnDone

from .conftest import RedisClientFactory

pytestmark = pytest.mark.integration

PARTS_PER_JOB = 3
WAIT_S = 30.0  # a failsafe for waits on a condition, never a pace


class FakeReplica:
    """Takes jobs, reads each one's streamed text to the end, then answers with its parts in a
    scrambled order, part 0 twice, and the jobs of a turn in reverse order once all are in."""

    def __init__(self, redis: Redis, expected_jobs: int) -> None:
        self.redis = redis
        self.expected_jobs = expected_jobs
        self.texts: dict[int, str] = {}
        self.first_chunks: dict[int, int] = {}
        self.deadlines_ms: dict[int, int] = {}

    async def run(self) -> None:
        jobs: list[TTSJob] = []
        while len(jobs) < self.expected_jobs:
            reply = await self.redis.xreadgroup(
                CONSUMER_GROUP, "fake", {JOBS_STREAM: ">"}, count=10, block=100
            )
            for _, entries in reply or []:
                jobs.extend(TTSJob.from_fields(fields) for _, fields in entries)
        for job in jobs:
            self.texts[job.seq] = await self._read_text(job)
            self.first_chunks[job.seq] = job.first_chunk
            self.deadlines_ms[job.seq] = job.deadline_ms
        for job in reversed(jobs):
            for part in (2, 0, 1, 0):
                pcm = np.full(100, job.seq + part / 10, dtype="<f4").tobytes()
                fields = AudioPart(
                    job.seq, part, part == PARTS_PER_JOB - 1, pcm, 1, "fake"
                ).to_fields()
                await self.redis.xadd(job.reply_to, fields)

    async def _read_text(self, job: TTSJob) -> str:
        assert job.text_stream is not None
        words: list[str] = []
        last_id = "0"
        while True:
            reply = await self.redis.xread({job.text_stream: last_id}, block=100)
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last_id = entry_id
                    piece = TextPiece.from_fields(fields)
                    words.extend(piece.piece.split())
                    if piece.done:
                        return " ".join(words)


class Script:
    """A FAKE text source: says `pieces`, then fails with `error`, or with `hold` never ends
    (only a cancel or the deadline ends its turn)."""

    from_llm = True

    def __init__(
        self, *pieces: str, hold: bool = False, error: BaseException | None = None
    ) -> None:
        self.pieces = pieces
        self.hold = hold
        self.error = error
        self.closed = asyncio.Event()  # the turn left the text before its end

    async def open(self, transcript: str | None) -> AsyncIterator[str]:
        ended = False
        try:
            for piece in self.pieces:
                yield piece
            if self.error is not None:
                ended = True
                raise self.error
            if self.hold:
                await asyncio.Event().wait()
            ended = True
        finally:
            if not ended:
                self.closed.set()


async def wait_for_jobs(redis: Redis, count: int) -> None:
    """Until `count` jobs are on the jobs stream (blocking reads: each returns with new jobs)."""
    seen, last_id = 0, "0"
    async with asyncio.timeout(WAIT_S):
        while seen < count:
            reply = await redis.xread({JOBS_STREAM: last_id}, block=1000)
            for _, entries in reply or []:
                for entry_id, _ in entries:
                    seen, last_id = seen + 1, entry_id


def make_turn(redis: Redis, source: Script, first_seq: int = 0, **kwargs: float) -> Turn:
    return Turn(
        TTSClient(redis),
        "sess-1",
        source,
        first_seq=first_seq,
        plan=ChunkPlan(10, 160, 1280),
        splitter=SentenceSplitter(),
        part_timeout_s=10,
        **kwargs,
    )


def test_turn_streams_words_and_plays_parts_in_order_once(redis_client: RedisClientFactory) -> None:
    async def scenario() -> tuple[list[object], FakeReplica]:
        async with redis_client() as redis:
            await ensure_group(redis)
            replica = FakeReplica(redis, expected_jobs=2)
            fake = asyncio.create_task(replica.run())
            turn = make_turn(redis, Script("Hel", "lo wor", "ld. Second ", "sentence", " here"))
            events = [event async for event in turn.events()]
            await fake
            return events, replica

    events, replica = asyncio.run(scenario())
    assert replica.texts == {0: "Hello world.", 1: "Second sentence here"}
    assert replica.first_chunks == {0: 10, 1: 160}
    # Jobs carry the turn's deadline (Unix ms, turn_timeout_s = 120 s after its start).
    now_ms = time.time() * 1000
    assert all(now_ms < ms <= now_ms + 120_000 for ms in replica.deadlines_ms.values())
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "Hello world. Second sentence here"
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert [(c.seq, c.part) for c in chunks] == [(s, p) for s in (0, 1) for p in range(3)]
    assert [c.sample_offset for c in chunks] == [100 * i for i in range(6)]
    for chunk in chunks:
        assert np.frombuffer(chunk.pcm, "<f4")[0] == pytest.approx(chunk.seq + chunk.part / 10)
    done = events[-1]
    assert isinstance(done, TurnDone)
    assert done.status == "completed"
    assert done.audio_seconds == pytest.approx(600 / 24_000)
    assert done.timings["first_sentence_s"] is not None
    assert done.timings["first_audio_s"] is not None


def test_text_without_words_ends_at_once_without_jobs(redis_client: RedisClientFactory) -> None:
    async def scenario() -> tuple[list[object], int]:
        async with redis_client() as redis:
            turn = make_turn(redis, Script("  ", "\n"))
            events = [event async for event in turn.events()]
            return events, await redis.xlen(JOBS_STREAM) if await redis.exists(JOBS_STREAM) else 0

    events, jobs = asyncio.run(scenario())
    assert jobs == 0
    done = events[-1]
    assert isinstance(done, TurnDone)
    assert done.status == "completed"
    assert done.audio_seconds == 0


def test_cancel_ends_the_turn_and_cancels_its_jobs(redis_client: RedisClientFactory) -> None:
    async def scenario() -> tuple[list[object], bytes | None, Script]:
        async with redis_client() as redis:
            await ensure_group(redis)
            # The text never ends and no replica answers: only the cancel ends this turn.
            source = Script("One. Two. Three ", hold=True)
            turn = make_turn(redis, source, 5)
            events = turn.events()
            async for event in events:
                if isinstance(event, TextDelta):
                    break
            await wait_for_jobs(redis, 3)  # seqs 5, 6 and 7
            await turn.cancel()
            rest = [event async for event in events]
            return rest, await redis.get(cancel_key("sess-1")), source

    rest, flag, source = asyncio.run(scenario())
    assert len(rest) == 1, "only TurnDone after a cancel"
    done = rest[0]
    assert isinstance(done, TurnDone)
    assert done.status == "cancelled"
    assert flag == b"7"  # seqs 5, 6 and 7 were opened; the next turn starts at 8
    assert source.closed.is_set()


def test_a_failing_text_source_fails_the_turn_with_its_error(
    redis_client: RedisClientFactory,
) -> None:
    error = GatewayError(503, "unavailable", "llm: UNAVAILABLE: gone")

    async def scenario() -> tuple[TurnDone, bytes | None]:
        async with redis_client() as redis:
            await ensure_group(redis)
            turn = make_turn(redis, Script("Spoken. Half ", error=error))
            events = [event async for event in turn.events()]
            done = events[-1]
            assert isinstance(done, TurnDone)
            assert sum(isinstance(e, TurnDone) for e in events) == 1
            return done, await redis.get(cancel_key("sess-1"))

    done, flag = asyncio.run(scenario())
    assert done.status == "failed"
    assert done.error is error
    assert flag == b"1"


def test_consumer_leaving_early_cancels_the_jobs(redis_client: RedisClientFactory) -> None:
    async def scenario() -> tuple[bytes | None, Script]:
        async with redis_client() as redis:
            await ensure_group(redis)
            source = Script("First. Second ", hold=True)
            turn = make_turn(redis, source)
            events = turn.events()
            async for event in events:
                if isinstance(event, TextDelta):
                    break
            await wait_for_jobs(redis, 2)
            await events.aclose()  # what an HTTP response does when its client disconnects
            return await redis.get(cancel_key("sess-1")), source

    flag, source = asyncio.run(scenario())
    assert flag == b"1"
    assert source.closed.is_set()


def test_a_turn_longer_than_its_limit_fails_with_504(redis_client: RedisClientFactory) -> None:
    async def scenario() -> TurnDone:
        async with redis_client() as redis:
            await ensure_group(redis)
            # The text never ends: the deadline is the only way out.
            turn = make_turn(redis, Script("Some words ", hold=True), turn_timeout_s=0.3)
            events = [event async for event in turn.events()]
            done = events[-1]
            assert isinstance(done, TurnDone)
            return done

    done = asyncio.run(scenario())
    assert done.status == "failed"
    assert done.error is not None
    assert done.error.status == 504
