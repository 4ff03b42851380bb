"""In-memory FAKES of what a gateway turn talks to (the backends.py Protocols) and of a WebSocket,
so event orderings can be tested without servers. Each fake records what it was asked and lets a
test hold it at a chosen point (an ASR that has not answered yet, an LLM mid-answer, a TTS job
whose audio has not come), and every wait is on a state change, bounded only by `WAIT_S` so a
broken test fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmvox_common.resequencer import Resequencer
from llmvox_common.tts_streams import AudioPart
from llmvox_gateway.backends import ChatMessage, Sampling, Transcript
from llmvox_gateway.runtime import Clients, GatewayRuntime
from llmvox_gateway.settings import GatewaySettings

WAIT_S = 20.0  # a failsafe, never a pace: every wait returns as soon as its condition holds


class Changes:
    """Wakes whoever waits for a condition over a fake's state, at every change of that state."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def pulse(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not condition():
                await self._event.wait()


# -- ASR -------------------------------------------------------------------------------------------


class FakeAsrStream:
    """One utterance; with `hold`, `finish` waits until the test calls `answer`."""

    def __init__(self, text: str, hold: bool) -> None:
        self.text = text
        self.audio = bytearray()
        self.finishing = asyncio.Event()  # the turn asked for the transcript
        self._answer = asyncio.Event()
        self.answered = False
        self.abandoned = False  # cancelled before its transcript was returned
        if not hold:
            self._answer.set()

    def send(self, pcm16: bytes) -> None:
        self.audio += pcm16

    def answer(self) -> None:
        self._answer.set()

    async def finish(self) -> Transcript:
        self.finishing.set()
        await self._answer.wait()
        self.answered = True
        return Transcript(self.text, "en", len(self.audio) / 2 / 16_000)

    async def cancel(self) -> None:
        if not self.answered:
            self.abandoned = True


class FakeAsr:
    addr = "fake-asr"

    def __init__(self, text: str = "What is the capital of France?", *, hold: bool = False) -> None:
        self.text = text
        self.hold = hold
        self.streams: list[FakeAsrStream] = []

    async def ready(self, check_s: float = 2.0) -> bool:
        return True

    async def close(self) -> None:
        pass

    async def recognize(
        self, pcm16: bytes, sample_rate: int, *, language: str, target_language: str = ""
    ) -> Transcript:
        return Transcript(self.text, language, len(pcm16) / 2 / sample_rate)

    def stream(
        self, sample_rate: int, *, language: str, on_partial: Callable[[str], object]
    ) -> FakeAsrStream:
        stream = FakeAsrStream(self.text, self.hold)
        self.streams.append(stream)
        return stream


# -- LLM -------------------------------------------------------------------------------------------


class FakeLlm:
    """Answers every call with `deltas`; with `hold`, the answer then goes on with what the test
    feeds (`say`, `end`, `fail`). `cancelled` is set when a caller leaves an answer unfinished,
    as the gateway's cancel of a gRPC call would."""

    addr = "fake-llm"

    def __init__(self, *deltas: str, hold: bool = False) -> None:
        self.deltas = deltas
        self.hold = hold
        self.calls: list[list[ChatMessage]] = []
        self.cancelled = asyncio.Event()
        self._feed: asyncio.Queue[str | BaseException | None] = asyncio.Queue()

    async def ready(self, check_s: float = 2.0) -> bool:
        return True

    async def close(self) -> None:
        pass

    def say(self, delta: str) -> None:
        self._feed.put_nowait(delta)

    def end(self) -> None:
        self._feed.put_nowait(None)

    def fail(self, error: BaseException) -> None:
        self._feed.put_nowait(error)

    async def generate(
        self, messages: Sequence[ChatMessage], sampling: Sampling
    ) -> AsyncIterator[str]:
        self.calls.append(list(messages))
        finished = False
        try:
            for delta in self.deltas:
                yield delta
            while self.hold and (item := await self._feed.get()) is not None:
                if isinstance(item, BaseException):
                    finished = True  # an error ends the call; nobody cancels it
                    raise item
                yield item
            finished = True
        finally:
            if not finished:
                self.cancelled.set()


# -- TTS -------------------------------------------------------------------------------------------


@dataclass
class FakeJob:
    session: str
    seq: int
    first_chunk: int
    max_chunk: int
    deadline_ms: int
    words: list[str] = field(default_factory=list)
    closed: bool = False
    parts_sent: int = 0


class FakeAudioParts:
    """A reader of the session's audio log, re-sequenced as `TTSClient.parts` does."""

    def __init__(self, log: _AudioLog, first_seq: int, start_id: str) -> None:
        self._log = log
        self._position = int(start_id)
        self._resequencer = Resequencer(first_seq=first_seq)
        self._ready: deque[AudioPart] = deque()
        self._closed = False
        self._wake = asyncio.Event()
        log.readers.append(self)

    @property
    def last_id(self) -> str:
        return str(self._position)

    @property
    def duplicates_dropped(self) -> int:
        return self._resequencer.duplicates_dropped

    def done_after(self, seq: int) -> None:
        self._resequencer.done_after(seq)

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def __aiter__(self) -> FakeAudioParts:
        return self

    async def __anext__(self) -> AudioPart:
        while not self._ready:
            if self._resequencer.finished or self._closed:
                raise StopAsyncIteration
            if self._position < len(self._log.entries):
                part = self._log.entries[self._position]
                self._position += 1
                self._ready.extend(self._resequencer.push(part))
                continue
            self._wake.clear()
            await self._wake.wait()
        if self._closed:
            raise StopAsyncIteration
        return self._ready.popleft()


@dataclass
class _AudioLog:
    entries: list[AudioPart] = field(default_factory=list)
    readers: list[FakeAudioParts] = field(default_factory=list)


class FakeTts:
    """The TTS pool in memory: records jobs, their streamed words and cancels. With `hold`, audio
    comes only when the test calls `speak`; otherwise a job answers with `parts_per_job` parts as
    soon as its text is closed. Cancelled jobs say nothing more."""

    def __init__(self, *, hold: bool = False, parts_per_job: int = 2, samples: int = 240) -> None:
        self.hold = hold
        self.parts_per_job = parts_per_job
        self.samples = samples
        self.jobs: dict[int, FakeJob] = {}
        self.cancels: list[int | None] = []
        self.changes = Changes()
        self._logs: dict[str, _AudioLog] = {}

    def _log(self, session: str) -> _AudioLog:
        return self._logs.setdefault(session, _AudioLog())

    async def open_text_stream(
        self,
        session: str,
        seq: int,
        *,
        first_chunk: int = 10,
        max_chunk: int = 1280,
        deadline_ms: int = 0,
        first_piece: str | None = None,
    ) -> str:
        job = FakeJob(session, seq, first_chunk, max_chunk, deadline_ms)
        if first_piece:
            job.words.extend(first_piece.split())
        self.jobs[seq] = job
        self.changes.pulse()
        return f"text:{session}:{seq}"

    async def append_text(self, session: str, seq: int, piece: str, *, done: bool = False) -> str:
        job = self.jobs[seq]
        job.words.extend(piece.split())
        if done:
            job.closed = True
            if not self.hold:
                self.speak(seq)
        self.changes.pulse()
        return "0-0"

    async def close_text(self, session: str, seq: int) -> str:
        return await self.append_text(session, seq, "", done=True)

    async def cancel(self, session: str, ttl_s: int = 60, *, up_to_seq: int | None = None) -> None:
        self.cancels.append(up_to_seq)
        self.changes.pulse()

    def cancelled(self, seq: int) -> bool:
        return any(up_to is None or seq <= up_to for up_to in self.cancels)

    def parts(
        self,
        session: str,
        *,
        last_seq: int | None,
        first_seq: int = 0,
        start_id: str = "0",
        block_ms: int = 500,
        timeout_s: float = 30.0,
    ) -> FakeAudioParts:
        return FakeAudioParts(self._log(session), first_seq, start_id)

    def speak(self, seq: int, parts: int | None = None) -> None:
        """Send the next `parts` parts of job `seq` (default: all that are left); the last of
        `parts_per_job` ends the job. A cancelled job sends nothing, as a replica drops it."""
        job = self.jobs[seq]
        if self.cancelled(seq):
            return
        count = self.parts_per_job - job.parts_sent if parts is None else parts
        log = self._log(job.session)
        for _ in range(count):
            part = job.parts_sent
            last = part == self.parts_per_job - 1
            pcm = np.full(self.samples, seq + part / 10, dtype="<f4").tobytes()
            log.entries.append(AudioPart(seq, part, last, pcm, 1, "fake"))
            job.parts_sent += 1
        for reader in log.readers:
            reader.wake()
        self.changes.pulse()


# -- runtime and socket ----------------------------------------------------------------------------


class FakeRedis:
    """Only what a runtime asks Redis outside a turn: no replica heartbeats."""

    async def scan_iter(
        self, match: str | None = None, count: int | None = None
    ) -> AsyncIterator[bytes]:
        for key in ():
            yield key

    async def mget(self, keys: Sequence[Any]) -> list[bytes | None]:
        return [None for _ in keys]

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass


def fake_runtime(
    *,
    tts: FakeTts | None = None,
    asr: FakeAsr | None = None,
    llm: FakeLlm | None = None,
    **settings: Any,
) -> GatewayRuntime:
    clients = Clients(
        redis=FakeRedis(),  # type: ignore[arg-type]
        tts=tts or FakeTts(),
        asr=asr,
        llm=llm,
    )
    return GatewayRuntime(GatewaySettings(**settings), clients)


class FakeSocket:
    """The server side of a WebSocket, as `WsSession` uses it: the test plays the client with
    `send`, `send_audio` and `disconnect`, and reads what the server sent."""

    def __init__(self) -> None:
        self._incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.frames: list[str | bytes] = []
        self.closed: tuple[int, str] | None = None
        self.changes = Changes()

    # client → server
    def send(self, event: dict[str, Any]) -> None:
        self._incoming.put_nowait({"type": "websocket.receive", "text": json.dumps(event)})

    def send_audio(self, pcm16: bytes) -> None:
        self._incoming.put_nowait({"type": "websocket.receive", "bytes": pcm16})

    def disconnect(self) -> None:
        self._incoming.put_nowait({"type": "websocket.disconnect", "code": 1001})

    # the socket's interface
    async def receive(self) -> dict[str, Any]:
        return await self._incoming.get()

    async def send_text(self, text: str) -> None:
        self.frames.append(text)
        self.changes.pulse()

    async def send_bytes(self, data: bytes) -> None:
        self.frames.append(data)
        self.changes.pulse()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)
        self.changes.pulse()

    # server → client, as the test reads it
    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(frame) for frame in self.frames if isinstance(frame, str)]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["type"] == kind]

    async def wait_for(self, kind: str, count: int = 1) -> dict[str, Any]:
        """The `count`-th event of type `kind`, once it was sent."""
        await self.changes.until(lambda: len(self.of(kind)) >= count)
        return self.of(kind)[count - 1]
