"""One response, its whole life in one object: a `Turn` waits for the final transcript when the
input is speech, runs its text source (the LLM's stream, or text given verbatim), opens the TTS
jobs, re-sequences their audio, and reports every step as an event, ending with exactly one
`TurnDone`. Endpoints only render the events (HTTP body, WebSocket frames).

Text path: deltas → `SentenceSplitter` → one TTS job per sentence, opened with its first words
and fed word batches through its text stream, so a replica starts decoding after a few LLM
tokens. Audio path: the session's audio stream, re-sequenced by `(seq, part)` (duplicates of
re-delivered jobs dropped) → `AudioChunk` events. Both run as child tasks of the turn's task;
events go to the sink as they come, and the sink sets the pace (a slow HTTP client holds back
the audio reader, never memory).

One way out: completion, barge-in (`cancel`), the client leaving (`close`), the turn's deadline
and any error all end `_run`, which then stops what still runs (the LLM call through its
generator, the ASR, the audio reader) and, unless the turn completed, sets the TTS cancel key.
Every TTS job carries the turn's deadline (`deadline_ms`), so replicas drop jobs nobody waits for.

Seqs are per session and only grow, so a barge-in cancels `seq <= last opened` and the next
turn's jobs are untouched (tts_streams.cancels_seq).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from redis.exceptions import RedisError

from llmvox_common.constants import (
    DEFAULT_FIRST_CHUNK,
    DEFAULT_LATER_FIRST_CHUNK,
    DEFAULT_MAX_CHUNK,
    SAMPLE_RATE,
)
from llmvox_common.resequencer import ResequencerOverflow
from llmvox_common.sentences import SentenceSplitter, WordBatch

from . import metrics
from .backends import ChatMessage, LlmClient, Sampling, TranscriptSource, TtsJobs
from .errors import GatewayError

log = logging.getLogger(__name__)

_QUEUE_EVENTS = 64
# While a turn waits for audio, how often it checks that some TTS replica still lives (the
# pool state it reads is cached for about this long, so the check costs one key scan per
# interval per gateway, not per turn).
POOL_WATCH_S = 0.5
# A failed or cancelled turn's cancel key outlives its jobs' deadline by this much, so a replica
# that starts later (the pool was down) drops them instead of speaking to nobody.
CANCEL_MARGIN_S = 60


def no_replica_error() -> GatewayError:
    return GatewayError(
        503,
        "unavailable",
        "no TTS replica is alive (every heartbeat lapsed); try again later",
        code="no_tts_replica",
    )


@dataclass(frozen=True)
class ChunkPlan:
    """Upstream's dump sizes: the turn's first sentence starts small (fast first audio), later
    sentences start larger (they play while earlier ones do); all grow ×3 up to `max_dump`."""

    first_dump: int = DEFAULT_FIRST_CHUNK
    later_dump: int = DEFAULT_LATER_FIRST_CHUNK
    max_dump: int = DEFAULT_MAX_CHUNK

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


# -- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TranscriptFinal:
    text: str
    asr_seconds: float | None


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


TurnEvent = TranscriptFinal | TextDelta | AudioChunk | TurnDone
# Receives a turn's events in order; awaited, so a sink that waits holds the turn back.
Sink = Callable[[TurnEvent], Awaitable[None]]


# -- text sources ---------------------------------------------------------------------------------


class TextSource(Protocol):
    """What a turn speaks; `open` is called once, with the transcript when the input was speech."""

    @property
    def from_llm(self) -> bool: ...

    def open(self, transcript: str | None) -> AsyncIterator[str]: ...


class LlmText:
    """The LLM's answer to the messages `messages(transcript)` builds when the turn needs them
    (after the transcript, so a session can put it in its history first)."""

    from_llm = True

    def __init__(
        self,
        llm: LlmClient,
        sampling: Sampling,
        messages: Callable[[str | None], Sequence[ChatMessage]],
    ) -> None:
        self._llm = llm
        self._sampling = sampling
        self._messages = messages

    def open(self, transcript: str | None) -> AsyncIterator[str]:
        return self._llm.generate(self._messages(transcript), self._sampling)


class VerbatimText:
    """Text spoken as it is: given whole (HTTP), or appended while the turn already speaks (a
    client streaming its own LLM's output over the WebSocket) until `commit`."""

    from_llm = False

    def __init__(self, text: str | None = None, *, max_chars: int | None = None) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._max_chars = max_chars
        self._chars = 0
        self.committed = False
        if text is not None:
            self.append(text)
            self.commit()

    def append(self, text: str) -> None:
        if self.committed:
            raise RuntimeError("text appended after commit")
        self._chars += len(text)
        if self._max_chars is not None and self._chars > self._max_chars:
            # What was appended is still spoken; the turn ends there.
            self.commit()
            raise GatewayError(
                413,
                "too_large",
                f"verbatim text over {self._max_chars} characters; "
                "the rest of this response is ignored",
            )
        self._queue.put_nowait(text)

    def commit(self) -> None:
        if not self.committed:
            self.committed = True
            self._queue.put_nowait(None)

    async def open(self, transcript: str | None) -> AsyncIterator[str]:
        while (text := await self._queue.get()) is not None:
            yield text


# -- the turn -------------------------------------------------------------------------------------


class _Phase(Enum):
    NEW = "new"  # made, its task not running yet
    WORKING = "working"  # transcript, text and audio: the part a cancel interrupts
    ENDING = "ending"  # stopping what runs, reporting TurnDone
    ENDED = "ended"


class Turn:
    """Speaks `text` (after `speech`'s transcript, if given) in session `session`, from seq
    `first_seq` on. `next_seq` is the first seq free for the session's next turn and
    `audio_last_id` where its audio reader resumes.

    Run it once: `start(sink)` (push: the WebSocket) or `events()` (pull: HTTP bodies). Either
    way the events end with exactly one `TurnDone`; `done` holds it afterwards.
    """

    def __init__(
        self,
        tts: TtsJobs,
        session: str,
        text: TextSource,
        *,
        speech: TranscriptSource | None = None,
        first_seq: int = 0,
        plan: ChunkPlan,
        splitter: SentenceSplitter,
        timings: TurnTimings | None = None,
        audio_start_id: str = "0",
        part_timeout_s: float = 30.0,
        turn_timeout_s: float = 120.0,
        endpoint: str = "ws",
        live_replicas: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self._tts = tts
        self.session = session
        self.source = text
        self._speech = speech
        self.first_seq = first_seq
        self.next_seq = first_seq
        self._plan = plan
        self._splitter = splitter
        self.timings = timings or TurnTimings()
        self._turn_timeout_s = turn_timeout_s
        self._deadline = self.timings.started + turn_timeout_s  # time.monotonic()
        # The same instant as Unix ms, for replicas on other machines.
        self._deadline_ms = int((time.time() + self._deadline - time.monotonic()) * 1000)
        self._endpoint = endpoint
        # None: no pool check (fakes); else the count of live TTS replicas.
        self._live_replicas = live_replicas
        self._audio = tts.parts(
            session,
            last_seq=None,
            first_seq=first_seq,
            start_id=audio_start_id,
            block_ms=200,  # also how long a stopped turn's reader may linger
            timeout_s=part_timeout_s,
        )
        self._sentence_opened = asyncio.Event()
        self._paths_stopped = False  # the turn's text, audio and pool paths are being stopped
        self._open_seq: int | None = None  # the seq whose text is still being streamed
        self._text: list[str] = []
        self._samples = 0
        self._llm_stream: AsyncIterator[str] | None = None
        self._sink: Sink | None = None
        self._task: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[TurnEvent] | None = None  # the pull form's (`events`)
        self._phase = _Phase.NEW
        self._outcome: tuple[str, GatewayError | None] | None = None  # the first one wins
        self._silent = False  # the consumer is gone: emit nothing more
        self._ended = asyncio.Event()
        self.done: TurnDone | None = None

    @property
    def audio_last_id(self) -> str:
        return self._audio.last_id

    @property
    def text(self) -> str:
        return "".join(self._text)

    # -- running --------------------------------------------------------------------------------

    def start(self, sink: Sink) -> None:
        """Run the turn in its own task, handing each event to `sink`."""
        if self._task is not None:
            raise RuntimeError("a turn runs once")
        self._sink = sink
        self._task = asyncio.create_task(self._run(), name=f"turn {self.session}/{self.first_seq}")

    async def events(self) -> AsyncGenerator[TurnEvent, None]:
        """`start` as an async iterator, through a bounded queue; leaving the loop early is the
        client leaving (`close`)."""
        queue: asyncio.Queue[TurnEvent] = asyncio.Queue(_QUEUE_EVENTS)
        self._queue = queue
        self.start(queue.put)
        try:
            while not isinstance(event := await queue.get(), TurnDone):
                yield event
            yield event
        finally:
            # Silent first, then drained: a put waiting on the full queue returns, and no new
            # one starts, so the turn cannot block on a consumer that is gone.
            self._silent = True
            self._drop_queued()
            await self.close()

    async def cancel(self) -> None:
        """Barge-in: stop now, ending with status "cancelled" unless the turn already has its
        outcome; returns once `TurnDone` went to the sink. Safe at any time, more than once."""
        if self._outcome is None and self._phase in (_Phase.NEW, _Phase.WORKING):
            self._outcome = ("cancelled", None)
            if self._phase is _Phase.WORKING and self._task is not None:
                self._task.cancel()
            # NEW: the task sees the outcome when it starts and does no work.
            # Queued audio is not to be played any more, and the room lets TurnDone in.
            self._drop_queued()
        if self._task is not None:
            await self._ended.wait()

    async def close(self) -> None:
        """The consumer is gone (client disconnected): cancel, and emit nothing more."""
        self._silent = True
        await self.cancel()

    def _drop_queued(self) -> None:
        if self._queue is not None:
            while not self._queue.empty():
                self._queue.get_nowait()

    async def _run(self) -> None:
        try:
            status, error = await self._work_until_stopped()
            if self._outcome is None:
                self._outcome = (status, error)
        except asyncio.CancelledError:  # not a cancel of ours: the loop is going down
            self._silent = True
            raise
        finally:
            try:
                if self._outcome is None:
                    self._outcome = ("cancelled", None)
                self._phase = _Phase.ENDING
                await self._stop()
                await self._emit(self._report())
            finally:
                self._phase = _Phase.ENDED
                self._ended.set()

    async def _work_until_stopped(self) -> tuple[str, GatewayError | None]:
        if self._outcome is not None:  # cancelled before it began
            return self._outcome
        self._phase = _Phase.WORKING
        loop = asyncio.get_running_loop()
        deadline = asyncio.timeout_at(loop.time() + (self._deadline - time.monotonic()))
        try:
            async with deadline:
                await self._work()
        except asyncio.CancelledError:
            if self._outcome is None:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # ours (`cancel`): the turn ends normally, as cancelled
            return self._outcome
        except TimeoutError as error:
            if deadline.expired():
                message = f"the turn took longer than {self._turn_timeout_s:g} s"
                return "failed", GatewayError(504, "timeout", message)
            return "failed", _as_gateway_error(error)
        except Exception as error:
            return "failed", _as_gateway_error(error)
        return "completed", None

    async def _work(self) -> None:
        transcript: str | None = None
        if self._speech is not None:
            result = await self._speech.finish()
            self.timings.mark("asr")
            metrics.ASR_SECONDS.observe((self.timings.asr or 0.0) - self.timings.started)
            await self._emit(TranscriptFinal(result.text, self.timings.as_dict()["asr_s"]))
            if not result.text:
                raise GatewayError(
                    422, "invalid_request_error", "no speech recognised", code="no_speech"
                )
            transcript = result.text
        self._llm_stream = self.source.open(transcript)
        main = [
            asyncio.create_task(self._speak(self._llm_stream), name="turn-text"),
            asyncio.create_task(self._read_audio(), name="turn-audio"),
        ]
        paths = list(main)
        if self._live_replicas is not None:
            # Never returns on its own: it raises when the whole pool is gone mid-turn.
            paths.append(asyncio.create_task(self._watch_pool(), name="turn-pool"))
        try:
            while not all(path.done() for path in main):
                running = [path for path in paths if not path.done()]
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for path in paths:
                    if path.done() and not path.cancelled() and (error := path.exception()):
                        raise error
        finally:
            # Closed before the reader is cancelled, not after (as a TaskGroup would): a
            # cancellation landing inside redis-py's blocking read can be lost, and the reader
            # would then poll until its part timeout (AudioPartStream.close). The pool watcher
            # has its flag for the same reason: it would otherwise loop on forever.
            self._audio.close()
            self._paths_stopped = True
            for path in paths:
                path.cancel()
            await asyncio.gather(*paths, return_exceptions=True)

    async def _stop(self) -> None:
        """Stop whatever still runs; the TTS jobs are cancelled unless the turn completed."""
        self._audio.close()
        if self._llm_stream is not None:
            aclose = getattr(self._llm_stream, "aclose", None)
            if aclose is not None:  # closing the generator cancels the LLM call (any backend)
                with contextlib.suppress(Exception):
                    await aclose()
        if self._speech is not None:
            with contextlib.suppress(Exception):
                await self._speech.cancel()
        assert self._outcome is not None
        if self._outcome[0] != "completed" and self.next_seq > self.first_seq:
            ttl_s = int(self._turn_timeout_s) + CANCEL_MARGIN_S
            with contextlib.suppress(Exception):
                await self._tts.cancel(self.session, ttl_s, up_to_seq=self.next_seq - 1)

    def _report(self) -> TurnDone:
        assert self._outcome is not None
        status, error = self._outcome
        self.timings.mark("done")
        metrics.TURNS.labels(status).inc()
        metrics.DUPLICATES_DROPPED.inc(self._audio.duplicates_dropped)
        self.done = TurnDone(
            status, self.text, self._samples / SAMPLE_RATE, self.timings.as_dict(), error
        )
        return self.done

    async def _emit(self, event: TurnEvent) -> None:
        if self._silent or self._sink is None:
            return
        if isinstance(event, AudioChunk) and self.timings.first_audio is None:
            self.timings.mark("first_audio")
            metrics.TIME_TO_FIRST_AUDIO.labels(self._endpoint).observe(
                (self.timings.first_audio or 0.0) - self.timings.started
            )
        await self._sink(event)

    # -- text path ------------------------------------------------------------------------------

    async def _speak(self, deltas: AsyncIterator[str]) -> None:
        async for delta in deltas:
            if self.source.from_llm and self.timings.llm_first_token is None:
                self.timings.mark("llm_first_token")
                # The LLM is called when the transcript is final (voice) or at once (text).
                called = self.timings.asr or self.timings.started
                metrics.LLM_FIRST_TOKEN.observe((self.timings.llm_first_token or called) - called)
            self._text.append(delta)
            await self._emit(TextDelta(delta))
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
            # Checked before every job: with no replica alive a job would wait in the stream for
            # one that may start much later, and the client would wait for a timeout.
            await self._require_pool()
            seq = self.next_seq
            self.next_seq += 1
            self._open_seq = seq
            await self._tts.open_text_stream(
                self.session,
                seq,
                first_chunk=self._plan.first_chunk(seq - self.first_seq),
                max_chunk=self._plan.max_dump,
                deadline_ms=self._deadline_ms,
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

    # -- the TTS pool ---------------------------------------------------------------------------

    async def _require_pool(self) -> None:
        if self._live_replicas is not None and await self._live_replicas() == 0:
            raise no_replica_error()

    async def _watch_pool(self) -> None:
        """Fail the turn when every replica's heartbeat has lapsed while it waits for audio: no
        one will answer its jobs (the turn's end cancels them)."""
        await self._sentence_opened.wait()
        while not self._paths_stopped:
            await self._require_pool()
            await asyncio.sleep(POOL_WATCH_S)

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
            await self._emit(chunk)


def _as_gateway_error(error: BaseException) -> GatewayError:
    if isinstance(error, GatewayError):
        return error
    if isinstance(error, TimeoutError):
        return GatewayError(504, "timeout", f"speech synthesis timed out: {error}")
    if isinstance(error, ResequencerOverflow):
        return GatewayError(502, "backend_error", str(error))
    if isinstance(error, RedisError):
        return GatewayError(
            503, "unavailable", f"TTS queue (Redis) unavailable: {error}", code="redis_unavailable"
        )
    log.error("turn failed", exc_info=error)
    return GatewayError(500, "server_error", f"internal error: {type(error).__name__}")
