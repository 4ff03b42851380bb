"""One turn: streamed text in (LLM deltas or a client's own text), TTS jobs out, audio back in
order, as a single stream of events for an endpoint to render.

Text path: deltas → `SentenceSplitter` → one TTS job per sentence, opened with its first words
and fed word batches through its text stream, so a replica starts decoding after a few LLM
tokens. Audio path: the session's audio stream, re-sequenced by `(seq, part)` (duplicates of
re-delivered jobs dropped) → `AudioChunk` events. Both run as tasks feeding one queue; the
consumer of `events()` sets the pace (a full queue holds back the audio reader, never memory).

Seqs are per session and only grow, so a barge-in cancels `seq <= last opened` and the next
turn's jobs are untouched (tts_streams.cancels_seq).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from llmvox_common.resequencer import ResequencerOverflow
from llmvox_common.tts_client import TTSClient

from . import metrics
from .errors import GatewayError
from .sentences import SentenceSplitter, WordBatch

log = logging.getLogger(__name__)

SAMPLE_RATE = 24_000
_QUEUE_EVENTS = 64


@dataclass(frozen=True)
class ChunkPlan:
    """Upstream's dump sizes: the turn's first sentence starts small (fast first audio), later
    sentences start larger (they play while earlier ones do); all grow ×3 up to `max_dump`."""

    first_dump: int = 10
    later_dump: int = 160
    max_dump: int = 1280

    def first_chunk(self, sentence_index: int) -> int:
        return self.first_dump if sentence_index == 0 else self.later_dump


@dataclass
class TurnTimings:
    """Monotonic marks of one turn; `as_dict` gives seconds from `started`."""

    started: float = field(default_factory=time.monotonic)
    asr: float | None = None
    llm_first_token: float | None = None
    first_sentence: float | None = None
    first_audio: float | None = None
    done: float | None = None

    def mark(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        if getattr(self, name) is None:
            setattr(self, name, clock())

    def as_dict(self) -> dict[str, float | None]:
        def rel(value: float | None) -> float | None:
            return None if value is None else round(value - self.started, 4)

        return {
            "asr_s": rel(self.asr),
            "llm_first_token_s": rel(self.llm_first_token),
            "first_sentence_s": rel(self.first_sentence),
            "first_audio_s": rel(self.first_audio),
            "total_s": rel(self.done),
        }


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class AudioChunk:
    seq: int
    part: int
    pcm: bytes  # float32 little-endian mono 24 kHz
    sample_offset: int  # from the start of the turn's audio

    @property
    def samples(self) -> int:
        return len(self.pcm) // 4


@dataclass(frozen=True)
class TurnDone:
    status: str  # completed | cancelled | failed
    text: str
    audio_seconds: float
    timings: dict[str, float | None]
    error: GatewayError | None = None

    def summary(self, response_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": response_id,
            "status": self.status,
            "text": self.text,
            "audio_seconds": round(self.audio_seconds, 3),
            "timings": self.timings,
        }
        if self.error is not None:
            body["error"] = self.error.body()["error"]
        return body


TurnEvent = TextDelta | AudioChunk | TurnDone


def _loop_time(monotonic_deadline: float) -> float:
    """A `time.monotonic()` deadline on the event loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())


class _End:
    """A task's last word in the queue: its failure, or None."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class Turn:
    """Speaks the text of `source` in session `session`, starting at seq `first_seq`.

    `events()` yields `TextDelta`s and `AudioChunk`s as they come, then exactly one `TurnDone`.
    `cancel()` (barge-in) stops the text source and the TTS jobs, drops the queued audio, and ends
    `events()` with status "cancelled". `next_seq` is the first seq free for the next turn.
    """

    def __init__(
        self,
        tts: TTSClient,
        session: str,
        source: AsyncIterator[str],
        *,
        first_seq: int,
        plan: ChunkPlan,
        splitter: SentenceSplitter,
        timings: TurnTimings | None = None,
        audio_start_id: str = "0",
        part_timeout_s: float = 30.0,
        turn_timeout_s: float = 120.0,
        source_is_llm: bool = True,
        endpoint: str = "ws",
    ) -> None:
        self._tts = tts
        self.session = session
        self._source = source
        self.first_seq = first_seq
        self.next_seq = first_seq
        self._plan = plan
        self._splitter = splitter
        self.timings = timings or TurnTimings()
        self._part_timeout_s = part_timeout_s
        self._turn_timeout_s = turn_timeout_s
        self._source_is_llm = source_is_llm
        self._endpoint = endpoint
        self._queue: asyncio.Queue[TextDelta | AudioChunk | _End] = asyncio.Queue(_QUEUE_EVENTS)
        self._audio = tts.parts(
            session,
            last_seq=None,
            first_seq=first_seq,
            start_id=audio_start_id,
            block_ms=200,  # also how long a stopped turn's reader may linger
            timeout_s=part_timeout_s,
        )
        self._sentence_opened = asyncio.Event()
        self._open_seq: int | None = None  # the seq whose text is still being streamed
        self._text: list[str] = []
        self._samples = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._cancelled = False
        self._finished = False

    @property
    def audio_last_id(self) -> str:
        """Where the session's next turn resumes reading the audio stream."""
        return self._audio.last_id

    @property
    def text(self) -> str:
        return "".join(self._text)

    # -- text path ------------------------------------------------------------------------------

    async def _produce(self) -> None:
        async for delta in self._source:
            if self._source_is_llm and self.timings.llm_first_token is None:
                self.timings.mark("llm_first_token")
                # The LLM is called when the transcript is final (voice) or at once (text).
                called = self.timings.asr or self.timings.started
                metrics.LLM_FIRST_TOKEN.observe((self.timings.llm_first_token or called) - called)
            self._text.append(delta)
            await self._queue.put(TextDelta(delta))
            for batch in self._splitter.push(delta):
                await self._apply(batch)
        for batch in self._splitter.finish():
            await self._apply(batch)
        if self.next_seq > self.first_seq:
            self._audio.done_after(self.next_seq - 1)
        else:  # nothing to say: no audio will come
            self._sentence_opened.set()

    async def _apply(self, batch: WordBatch) -> None:
        piece = " ".join(batch.words)
        if self._open_seq is None:
            if not batch.words:
                return
            seq = self.next_seq
            self.next_seq += 1
            self._open_seq = seq
            await self._tts.open_text_stream(
                self.session,
                seq,
                first_chunk=self._plan.first_chunk(seq - self.first_seq),
                max_chunk=self._plan.max_dump,
                first_piece=piece,
            )
            self.timings.mark("first_sentence")
            self._sentence_opened.set()
            if batch.ends_sentence:
                await self._tts.close_text(self.session, seq)
                self._open_seq = None
            return
        if piece or batch.ends_sentence:
            await self._tts.append_text(
                self.session, self._open_seq, piece, done=batch.ends_sentence
            )
        if batch.ends_sentence:
            self._open_seq = None

    # -- audio path -----------------------------------------------------------------------------

    async def _read_audio(self) -> None:
        await self._sentence_opened.wait()
        if self.next_seq == self.first_seq:
            return  # the text ended without a sentence
        async for part in self._audio:
            metrics.CHUNKS_RESEQUENCED.inc()
            if part.error is not None:
                log.warning(
                    "session %s seq %d: TTS error (%s): %s",
                    self.session,
                    part.seq,
                    part.error_kind,
                    part.error,
                )
                continue
            if not part.pcm:
                continue
            chunk = AudioChunk(part.seq, part.part, part.pcm, self._samples)
            self._samples += chunk.samples
            await self._queue.put(chunk)

    # -- driving --------------------------------------------------------------------------------

    async def _run(self, work: Callable[[], Any]) -> None:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # handed to events(), which ends the turn with it
            await self._queue.put(_End(error))
            return
        await self._queue.put(_End())

    async def events(self) -> AsyncIterator[TurnEvent]:
        self._tasks = [
            asyncio.create_task(self._run(self._produce), name="turn-text"),
            asyncio.create_task(self._run(self._read_audio), name="turn-audio"),
        ]
        running = len(self._tasks)
        error: GatewayError | None = None
        deadline = self.timings.started + self._turn_timeout_s
        try:
            while running and not self._cancelled:
                try:
                    async with asyncio.timeout_at(_loop_time(deadline)):
                        item = await self._queue.get()
                except TimeoutError:
                    error = GatewayError(
                        504, "timeout", f"the turn took longer than {self._turn_timeout_s:g} s"
                    )
                    break
                if isinstance(item, _End):
                    running -= 1
                    if item.error is not None:
                        error = self._as_gateway_error(item.error)
                        break
                    continue
                if isinstance(item, AudioChunk) and self.timings.first_audio is None:
                    self.timings.mark("first_audio")
                    metrics.TIME_TO_FIRST_AUDIO.labels(self._endpoint).observe(
                        (self.timings.first_audio or 0.0) - self.timings.started
                    )
                yield item
            if error is not None:
                await self._stop_tasks()
            self.timings.mark("done")
            self._finished = True
            status = "cancelled" if self._cancelled else "failed" if error else "completed"
            metrics.TURNS.labels(status).inc()
            metrics.DUPLICATES_DROPPED.inc(self._audio.duplicates_dropped)
            yield TurnDone(
                status, self.text, self._samples / SAMPLE_RATE, self.timings.as_dict(), error
            )
        finally:
            if not self._finished:  # the consumer left early (client gone): stop everything
                self._cancelled = True
                await self._stop_tasks()

    async def cancel(self) -> None:
        """Barge-in; safe to call at any time, more than once."""
        if self._finished or self._cancelled:
            return
        self._cancelled = True
        await self._stop_tasks()
        while not self._queue.empty():  # queued audio is not to be played any more
            self._queue.get_nowait()
        self._queue.put_nowait(_End())  # wakes events(), which sees the flag

    async def _stop_tasks(self) -> None:
        self._audio.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(AttributeError, Exception):
            await self._source.aclose()  # type: ignore[attr-defined]
        if self.next_seq > self.first_seq:
            with contextlib.suppress(Exception):
                await self._tts.cancel(self.session, up_to_seq=self.next_seq - 1)

    @staticmethod
    def _as_gateway_error(error: BaseException) -> GatewayError:
        if isinstance(error, GatewayError):
            return error
        if isinstance(error, TimeoutError):
            return GatewayError(504, "timeout", f"speech synthesis timed out: {error}")
        if isinstance(error, ResequencerOverflow):
            return GatewayError(502, "backend_error", str(error))
        if isinstance(error, RedisError):
            return GatewayError(503, "unavailable", f"TTS queue (Redis) unavailable: {error}")
        log.error("turn failed", exc_info=error)
        return GatewayError(500, "internal_error", f"internal error: {type(error).__name__}")
