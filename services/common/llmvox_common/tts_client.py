"""The producer and reader side of the TTS Redis Streams contract (tts_streams.py), used by the
gateway and by tests: enqueue jobs, stream text into them, cancel a session, read its audio back
in order.

Key expiry: every key this client writes to carries an expiry from the moment it exists, so a
session whose gateway dies leaves nothing behind. The audio stream is the awkward one: the
replicas create it with their first XADD, and an XADD keeps a key's expiry but never sets one.
So each enqueue first creates the audio stream *empty* when it is missing (a Lua XADD with
MAXLEN 0: the key exists with no entries, readers see nothing) and (re)sets its expiry, in the
same pipeline and before the job's XADD, so no replica can write to it before it has a TTL. Every
enqueue of a session refreshes that TTL, so a session stays alive while it keeps speaking.

Replies are decoded whether the client was made with `decode_responses` or not; the expected
client has it off, since `pcm` is binary.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from llmvox_common.constants import (
    CONSUMER_GROUP,
    DEFAULT_FIRST_CHUNK,
    DEFAULT_MAX_CHUNK,
    JOBS_STREAM,
)
from llmvox_common.resequencer import DEFAULT_MAX_BUFFERED, Resequencer
from llmvox_common.tts_streams import (
    CANCEL_ALL,
    AudioPart,
    JobFormatError,
    TextPiece,
    TTSJob,
    audio_stream_key,
    cancel_key,
    text_stream_key,
)

logger = logging.getLogger(__name__)

# KEYS[1] = audio stream, ARGV[1] = ttl in seconds. MAXLEN 0 trims the placeholder entry away at
# once, leaving an empty stream that can carry an expiry.
_OPEN_AUDIO_STREAM = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '0', '*', 'opened', '1')
end
return redis.call('EXPIRE', KEYS[1], ARGV[1])
"""

# Entries per XREAD: a turn has a handful of parts per sentence; this only bounds one reply.
_READ_COUNT = 64


def _str(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _stream_entries(reply: Any) -> Iterator[tuple[str, Mapping[bytes | str, bytes | str]]]:
    """(id, fields) of an XREAD reply in either protocol: redis-py gives [[key, entries]] for
    RESP2 and {key: [entries]} (one more list level) for RESP3, and fields as a mapping or, from
    a bare connection, a flat [name, value, ...] list."""
    if not reply:
        return
    groups = reply.values() if isinstance(reply, Mapping) else (entries for _, entries in reply)
    for group in groups:
        yield from _flatten(group)


def _flatten(obj: Any) -> Iterator[tuple[str, Mapping[bytes | str, bytes | str]]]:
    if len(obj) == 2 and isinstance(obj[0], bytes | str):
        entry_id, fields = obj
        if fields is None:  # an entry deleted under the reader; parsing it counts it malformed
            fields = {}
        elif not isinstance(fields, Mapping):
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        yield _str(entry_id), fields
        return
    for item in obj:
        yield from _flatten(item)


async def ensure_group(
    redis: Redis, *, stream: str = JOBS_STREAM, group: str = CONSUMER_GROUP
) -> bool:
    """Create the jobs stream's consumer group (and the stream) if missing; True if created.

    Starts at id 0, so jobs enqueued before any replica came up are still served.
    """
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise
        return False
    return True


class AudioPartStream:
    """`async for` over one turn's audio parts in `(seq, part)` order, read from the session's
    audio stream; stops after the terminal part of the final seq.

    Raises TimeoutError when no part was released for `timeout_s` (duplicates are no progress),
    and ResequencerOverflow when too many parts wait for a missing one. The counters stay
    readable after the loop. Each XREAD blocks at most `block_ms`, so the client's socket
    timeout, if any, must be longer.
    """

    def __init__(
        self,
        redis: Redis,
        key: str,
        resequencer: Resequencer,
        *,
        start_id: str = "0",
        block_ms: int = 500,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if block_ms < 1:
            raise ValueError(f"block_ms must be >= 1 (0 would block forever), got {block_ms}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self._redis = redis
        self.key = key
        self.resequencer = resequencer
        self._last_id = start_id
        self._block_ms = block_ms
        self._timeout_s = timeout_s
        self._clock = clock
        self._deadline: float | None = None  # set by the first read, not at construction
        self._ready: deque[AudioPart] = deque()
        self._malformed_skipped = 0
        self._closed = False

    @property
    def last_id(self) -> str:
        """The id of the last entry read; a later reader can resume after it."""
        return self._last_id

    @property
    def duplicates_dropped(self) -> int:
        return self.resequencer.duplicates_dropped

    @property
    def malformed_skipped(self) -> int:
        """Entries that are not audio parts (missing or non-integer `seq`/`part`)."""
        return self._malformed_skipped

    def done_after(self, seq: int) -> None:
        """Declare the final seq when it was not known at the start (streamed LLM output)."""
        self.resequencer.done_after(seq)

    def close(self) -> None:
        """Stop the iteration after the read in progress (at most `block_ms`).

        Task cancellation alone is not enough: a cancellation that lands while redis-py is
        inside a blocking read can be lost, and the reader would then poll until its timeout.
        """
        self._closed = True

    def __aiter__(self) -> AudioPartStream:
        return self

    async def __anext__(self) -> AudioPart:
        while not self._ready:
            if self.resequencer.finished or self._closed:
                raise StopAsyncIteration
            await self._read_more()
        if self._closed:
            raise StopAsyncIteration
        return self._ready.popleft()

    async def _read_more(self) -> None:
        if self._deadline is None:
            self._deadline = self._clock() + self._timeout_s
        remaining_s = self._deadline - self._clock()
        if remaining_s <= 0:
            raise TimeoutError(
                f"no audio on {self.key} for {self._timeout_s}s: waiting for seq "
                f"{self.resequencer.next_seq} part {self.resequencer.next_part} "
                f"({self.resequencer.buffered} parts buffered)"
            )
        block_ms = max(1, min(self._block_ms, math.ceil(remaining_s * 1000)))
        reply = await self._redis.xread(
            {self.key: self._last_id}, count=_READ_COUNT, block=block_ms
        )
        for entry_id, fields in _stream_entries(reply):
            self._last_id = entry_id
            try:
                part = AudioPart.from_fields(fields)
            except JobFormatError as error:
                self._malformed_skipped += 1
                logger.warning("skipping entry %s of %s: %s", entry_id, self.key, error.reason)
                continue
            released = self.resequencer.push(part)
            if released:
                self._ready.extend(released)
                self._deadline = self._clock() + self._timeout_s


class TTSClient:
    """Enqueues TTS jobs and reads their audio back, over one `redis.asyncio.Redis`."""

    def __init__(
        self,
        redis: Redis,
        *,
        jobs_stream: str = JOBS_STREAM,
        jobs_maxlen: int = 10_000,
        audio_ttl_s: int = 600,
        text_ttl_s: int = 600,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
    ) -> None:
        self._redis = redis
        self._jobs_stream = jobs_stream
        self._jobs_maxlen = jobs_maxlen
        self._audio_ttl_s = audio_ttl_s
        self._text_ttl_s = text_ttl_s
        self._max_buffered = max_buffered

    async def enqueue_text(
        self,
        session: str,
        seq: int,
        text: str,
        *,
        first_chunk: int = DEFAULT_FIRST_CHUNK,
        max_chunk: int = DEFAULT_MAX_CHUNK,
        deadline_ms: int = 0,
    ) -> str:
        """Enqueue one sentence whose text is known up front; returns the job's entry id."""
        job = TTSJob(
            session=session,
            seq=seq,
            reply_to=audio_stream_key(session),
            first_chunk=first_chunk,
            max_chunk=max_chunk,
            deadline_ms=deadline_ms,
            text=text,
        )
        return await self._enqueue(job)

    async def open_text_stream(
        self,
        session: str,
        seq: int,
        *,
        first_chunk: int = DEFAULT_FIRST_CHUNK,
        max_chunk: int = DEFAULT_MAX_CHUNK,
        deadline_ms: int = 0,
        first_piece: str | None = None,
    ) -> str:
        """Enqueue a job whose text follows through `append_text`; returns the text stream key.

        `first_piece` is appended before the job is enqueued, in the same round trip, which is
        the usual case: the gateway opens a job when the first word of a sentence exists.
        """
        key = text_stream_key(session, seq)
        job = TTSJob(
            session=session,
            seq=seq,
            reply_to=audio_stream_key(session),
            first_chunk=first_chunk,
            max_chunk=max_chunk,
            deadline_ms=deadline_ms,
            text_stream=key,
        )
        await self._enqueue(job, first_piece)
        return key

    async def append_text(self, session: str, seq: int, piece: str, *, done: bool = False) -> str:
        """Append a piece (a whole word) to a streamed job's text; returns the entry id."""
        key = text_stream_key(session, seq)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(key, TextPiece(piece, done).to_fields())
            pipe.expire(key, self._text_ttl_s)
            entry_id, _ = await pipe.execute()
        return _str(entry_id)

    async def close_text(self, session: str, seq: int) -> str:
        """Mark a streamed job's text complete; returns the entry id."""
        return await self.append_text(session, seq, "", done=True)

    async def cancel(self, session: str, ttl_s: int = 60, *, up_to_seq: int | None = None) -> None:
        """Barge-in: replicas drop the session's jobs while the key lives.

        With `up_to_seq`, only jobs with `seq <= up_to_seq` are dropped, so the session's next
        turn (higher seqs) can start at once. Without it, every job of the session is dropped
        while the key lives: call `clear_cancel` before enqueuing the next turn.
        """
        value = CANCEL_ALL if up_to_seq is None else str(up_to_seq)
        await self._redis.set(cancel_key(session), value, ex=ttl_s)

    async def clear_cancel(self, session: str) -> None:
        await self._redis.delete(cancel_key(session))

    def parts(
        self,
        session: str,
        *,
        last_seq: int | None,
        first_seq: int = 0,
        start_id: str = "0",
        block_ms: int = 500,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> AudioPartStream:
        """The session's audio parts of seqs `first_seq..last_seq` in order, read from `start_id`
        (default: the stream's beginning, so parts written before the call are included).

        With `last_seq=None` the final seq is declared later with `done_after` on the result.
        Parts of other seqs (an earlier turn on the same stream) are skipped.
        """
        resequencer = Resequencer(
            first_seq=first_seq, last_seq=last_seq, max_buffered=self._max_buffered
        )
        return AudioPartStream(
            self._redis,
            audio_stream_key(session),
            resequencer,
            start_id=start_id,
            block_ms=block_ms,
            timeout_s=timeout_s,
            clock=clock,
        )

    async def collect(
        self, session: str, last_seq: int, timeout_s: float = 30.0, *, first_seq: int = 0
    ) -> list[AudioPart]:
        """All parts of seqs `first_seq..last_seq`, in order; TimeoutError after `timeout_s`."""
        async with asyncio.timeout(timeout_s):
            stream = self.parts(
                session, last_seq=last_seq, first_seq=first_seq, timeout_s=timeout_s
            )
            return [part async for part in stream]

    async def _enqueue(self, job: TTSJob, first_piece: str | None = None) -> str:
        # Parse our own fields back: a malformed job fails here, at its producer, instead of
        # costing a replica a round trip to send an error part.
        TTSJob.from_fields(job.to_fields())
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.eval(_OPEN_AUDIO_STREAM, 1, job.reply_to, self._audio_ttl_s)
            if job.text_stream is not None and first_piece is not None:
                pipe.xadd(job.text_stream, TextPiece(first_piece, done=False).to_fields())
                pipe.expire(job.text_stream, self._text_ttl_s)
            pipe.xadd(
                self._jobs_stream,
                job.to_fields(),
                maxlen=self._jobs_maxlen,
                approximate=True,
            )
            results = await pipe.execute()
        return _str(results[-1])
