"""One WebSocket session of `GET /v1/ws` (protocol in docs/gateway.md).

A session is a TaskGroup of named loops: `receive` (client events → actions), `send` (one bounded
outbox → the socket) and `watchdog` (idle timeout, slow client). At most one response runs at a
time, as its own task; a commit, `response.create` or new verbatim text barges in on it. A client
that falls `send_queue_frames` behind is closed (1008): audio is never buffered without bound.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import WebSocket
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from . import metrics
from .audio_format import OutputFormat, encode
from .backends import AsrStream, ChatMessage
from .errors import (
    WS_NORMAL,
    WS_POLICY,
    GatewayError,
)
from .outbox import CloseFrame, Frame, Outbox
from .runtime import GatewayRuntime
from .turn import AudioChunk, TextDelta, TurnDone, TurnTimings
from .ws_protocol import (
    CLIENT_EVENT,
    AudioAppend,
    AudioClear,
    AudioCommit,
    ItemCreate,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
    TextAppend,
    TextCommit,
)

log = logging.getLogger(__name__)

OUTPUT_SAMPLE_RATE = 24_000
# How stale the `tts_untrained` flag of session.created may be (a replica's profile rarely changes).
POOL_STATE_MAX_AGE_S = 5.0


class _Closed(Exception):
    """Ends the session's TaskGroup: the client left, or the server closed the socket."""


@dataclass
class _Response:
    id: str
    source: str  # llm | verbatim
    timings: TurnTimings
    task: asyncio.Task[None] | None = None
    turn: Any = None  # the Turn, once its text source exists
    text_queue: asyncio.Queue[str | None] | None = None  # verbatim text, None = committed
    text_chars: int = 0


@dataclass
class _Config:
    input_sample_rate: int = 16_000
    output_audio_format: OutputFormat = "pcm16"
    instructions: str | None = None
    language: str = "en"


@dataclass
class _Utterance:
    stream: AsrStream
    bytes: int = 0
    overflowed: bool = False


@dataclass
class _History:
    turns: int
    messages: list[ChatMessage] = field(default_factory=list)

    def add(self, message: ChatMessage) -> None:
        self.messages.append(message)
        # A turn is a user message and its answer; keep the last `turns` of them.
        if len(self.messages) > 2 * self.turns + 1:
            del self.messages[: len(self.messages) - (2 * self.turns + 1)]


class WsSession:
    def __init__(self, websocket: WebSocket, runtime: GatewayRuntime) -> None:
        self.ws = websocket
        self.runtime = runtime
        self.settings = runtime.settings
        self.id = "sess_" + uuid.uuid4().hex[:16]
        self.config = _Config(language=self.settings.language)
        self.history = _History(self.settings.history_turns)
        self.outbox = Outbox(self.settings.send_queue_frames)
        self.last_activity = time.monotonic()
        self.next_seq = 0
        self.audio_last_id = "0"
        self.response: _Response | None = None
        self.utterance: _Utterance | None = None

    # -- output ---------------------------------------------------------------------------------

    def _put(self, frame: Frame) -> None:
        self.outbox.put(frame)

    def send_event(self, event: dict[str, Any]) -> None:
        self._put(json.dumps(event))

    def send_error(self, error: GatewayError) -> None:
        self.send_event({"type": "error", "error": error.body()["error"]})

    def _session_info(self, untrained: bool | None = None) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": self.id,
            "input_sample_rate": self.config.input_sample_rate,
            "output_audio_format": self.config.output_audio_format,
            "output_sample_rate": OUTPUT_SAMPLE_RATE,
            "language": self.config.language,
        }
        if untrained is not None:
            info["tts_untrained"] = untrained
        return info

    # -- loops ----------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            pool = await self.runtime.pool_state(max_age_s=POOL_STATE_MAX_AGE_S)
            untrained: bool | None = pool.untrained
        except Exception:  # readiness reports Redis trouble; the session may still work later
            untrained = None
        self.send_event({"type": "session.created", "session": self._session_info(untrained)})
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._send_loop(), name="send")
                tasks.create_task(self._receive_loop(), name="receive")
                tasks.create_task(self._watchdog(), name="watchdog")
        except* (_Closed, WebSocketDisconnect):
            pass
        finally:
            await self._shutdown()

    async def _send_loop(self) -> None:
        while True:
            frame = await self.outbox.get()
            if isinstance(frame, CloseFrame):
                await self.ws.close(frame.code, frame.reason)
                raise _Closed
            if isinstance(frame, bytes):
                await self.ws.send_bytes(frame)
            else:
                await self.ws.send_text(frame)

    async def _receive_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                raise _Closed
            self.last_activity = time.monotonic()
            try:
                if message.get("bytes") is not None:
                    self._append_audio(message["bytes"])
                elif message.get("text") is not None:
                    await self._dispatch(message["text"])
            except GatewayError as error:
                self.send_error(error)

    async def _watchdog(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.outbox.overflowed.wait()
            if self.outbox.overflowed.is_set():
                metrics.SLOW_CLIENTS_DROPPED.inc()
                log.warning("session %s: client too slow, closing", self.id)
                await self.ws.close(WS_POLICY, "client too slow: send queue full")
                raise _Closed
            idle = time.monotonic() - self.last_activity
            if self.response is None and idle > self.settings.idle_timeout_s:
                self._put(CloseFrame(WS_NORMAL, "idle timeout"))
                return

    async def _shutdown(self) -> None:
        await self._barge_in(send_done=False)
        if self.utterance is not None:
            await self.utterance.stream.cancel()
            self.utterance = None

    # -- client events --------------------------------------------------------------------------

    async def _dispatch(self, text: str) -> None:
        try:
            event = CLIENT_EVENT.validate_json(text)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise GatewayError(
                400, "invalid_request_error", f"invalid event: {where}: {first.get('msg')}"
            ) from None
        match event:
            case SessionUpdate():
                self._update_session(event)
            case AudioAppend():
                try:
                    pcm = base64.b64decode(event.audio, validate=True)
                except (binascii.Error, ValueError):
                    raise GatewayError(400, "invalid_request_error", "audio: not base64") from None
                self._append_audio(pcm)
            case AudioCommit():
                await self._commit_audio()
            case AudioClear():
                if self.utterance is not None:
                    await self.utterance.stream.cancel()
                    self.utterance = None
                self.send_event({"type": "input_audio_buffer.cleared"})
            case ItemCreate():
                text = "".join(part.text for part in event.item.content)
                self._check_text(text)
                self.history.add(ChatMessage("user", text))
                self.send_event(
                    {"type": "conversation.item.created", "item": event.item.model_dump()}
                )
            case ResponseCreate():
                await self._start_response(
                    "llm", TurnTimings(), instructions=event.response.instructions
                )
            case ResponseCancel():
                await self._barge_in()
            case TextAppend():
                await self._append_text(event.text)
            case TextCommit():
                response = self.response
                if response is not None and response.text_queue is not None:
                    response.text_queue.put_nowait(None)
                    response.text_queue = None

    def _update_session(self, event: SessionUpdate) -> None:
        update = event.session
        if update.input_sample_rate is not None:
            if self.utterance is not None:
                raise GatewayError(
                    400, "invalid_request_error", "input_sample_rate: commit or clear audio first"
                )
            self.config.input_sample_rate = update.input_sample_rate
        if update.output_audio_format is not None:
            self.config.output_audio_format = update.output_audio_format
        if update.instructions is not None:
            self._check_text(update.instructions)
            self.config.instructions = update.instructions or None
        if update.language is not None:
            self.config.language = update.language
        self.send_event({"type": "session.updated", "session": self._session_info()})

    def _check_text(self, text: str) -> None:
        if len(text) > self.settings.max_text_chars:
            raise GatewayError(
                413,
                "too_large",
                f"text of {len(text)} characters, the limit is {self.settings.max_text_chars}",
            )

    # -- microphone audio -----------------------------------------------------------------------

    def _append_audio(self, pcm: bytes) -> None:
        if self.runtime.asr is None:
            raise GatewayError(503, "unavailable", "this gateway has no ASR service configured")
        if len(pcm) % 2:
            raise GatewayError(400, "invalid_request_error", "audio: odd number of bytes (PCM16)")
        if self.utterance is None:
            stream = self.runtime.asr.stream(
                self.config.input_sample_rate,
                language=self.config.language,
                on_partial=lambda text: self.send_event(
                    {"type": "transcript.partial", "text": text}
                ),
            )
            self.utterance = _Utterance(stream)
        utterance = self.utterance
        if utterance.overflowed:
            return
        limit = int(self.settings.max_audio_seconds * self.config.input_sample_rate * 2)
        if utterance.bytes + len(pcm) > limit:
            utterance.overflowed = True
            raise GatewayError(
                413,
                "too_large",
                f"input audio longer than {self.settings.max_audio_seconds:g} s; "
                "commit or clear it",
            )
        utterance.bytes += len(pcm)
        utterance.stream.send(pcm)

    async def _commit_audio(self) -> None:
        utterance, self.utterance = self.utterance, None
        if utterance is None or utterance.bytes == 0:
            if utterance is not None:
                await utterance.stream.cancel()
            raise GatewayError(
                400,
                "invalid_request_error",
                "input audio buffer is empty",
                code="input_audio_buffer_commit_empty",
            )
        timings = TurnTimings()
        seconds = utterance.bytes / 2 / self.config.input_sample_rate
        self.send_event({"type": "input_audio_buffer.committed", "audio_seconds": seconds})
        await self._start_response("llm", timings, asr=utterance.stream)

    # -- responses ------------------------------------------------------------------------------

    async def _append_text(self, text: str) -> None:
        response = self.response
        if response is None or response.text_queue is None:
            await self._start_response("verbatim", TurnTimings())
            response = self.response
            assert response is not None
            assert response.text_queue is not None
        response.text_chars += len(text)
        if response.text_chars > self.settings.max_text_chars:
            response.text_queue.put_nowait(None)
            response.text_queue = None
            raise GatewayError(
                413,
                "too_large",
                f"verbatim text over {self.settings.max_text_chars} characters; "
                "the rest of this response is ignored",
            )
        response.text_queue.put_nowait(text)

    async def _start_response(
        self,
        source: str,
        timings: TurnTimings,
        *,
        asr: AsrStream | None = None,
        instructions: str | None = None,
    ) -> None:
        await self._barge_in()
        if source == "llm" and self.runtime.llm is None:
            if asr is not None:
                await asr.cancel()
            raise GatewayError(503, "unavailable", "this gateway has no LLM service configured")
        response = _Response("resp_" + uuid.uuid4().hex[:16], source, timings)
        text_source: AsyncIterator[str] | None = None
        if source == "verbatim":
            # Bound now: the client may commit (and the session forget the queue) before the
            # response's task first runs.
            response.text_queue = asyncio.Queue()
            text_source = _queue_source(response.text_queue)
        self.response = response
        response.task = asyncio.create_task(
            self._run_response(response, asr, instructions, text_source),
            name=f"response {response.id}",
        )

    async def _run_response(
        self,
        response: _Response,
        asr: AsrStream | None,
        instructions: str | None,
        text_source: AsyncIterator[str] | None,
    ) -> None:
        self.send_event(
            {"type": "response.created", "response": {"id": response.id, "source": response.source}}
        )
        turn = None
        try:
            if asr is not None:
                transcript = await asr.finish()
                response.timings.mark("asr")
                metrics.ASR_SECONDS.observe(
                    (response.timings.asr or 0.0) - response.timings.started
                )
                self.send_event(
                    {
                        "type": "transcript.final",
                        "text": transcript.text,
                        "asr_seconds": response.timings.as_dict()["asr_s"],
                    }
                )
                if not transcript.text:
                    raise GatewayError(
                        422, "invalid_request_error", "no speech recognised", code="no_speech"
                    )
                self.history.add(ChatMessage("user", transcript.text))
            source = text_source or self._llm_source(instructions)
            turn = self.runtime.turn(
                self.id,
                source,
                first_seq=self.next_seq,
                source_is_llm=response.source == "llm",
                endpoint="ws",
                timings=response.timings,
                audio_start_id=self.audio_last_id,
            )
            response.turn = turn
            await self._play(response, turn)
        except asyncio.CancelledError:
            self._done(response, "cancelled", turn)
        except GatewayError as error:
            self.send_error(error)
            self._done(response, "failed", turn, error)
        except Exception as error:  # a bug must end the response visibly, not silently
            log.exception("session %s: response %s failed", self.id, response.id)
            failure = GatewayError(500, "server_error", f"internal error: {type(error).__name__}")
            self.send_error(failure)
            self._done(response, "failed", turn, failure)
        finally:
            if asr is not None:
                await asr.cancel()
            if turn is not None:
                self.next_seq = max(self.next_seq, turn.next_seq)
                self.audio_last_id = turn.audio_last_id
            if self.response is response:
                self.response = None

    def _llm_source(self, instructions: str | None) -> AsyncIterator[str]:
        llm = self.runtime.llm
        assert llm is not None
        messages = self.runtime.messages(
            self.history.messages,
            instructions if instructions is not None else self.config.instructions,
        )
        return llm.generate(messages, self.runtime.sampling)

    async def _play(self, response: _Response, turn: Any) -> None:
        fmt = self.config.output_audio_format
        async for event in turn.events():
            if isinstance(event, TextDelta):
                self.send_event(
                    {"type": "response.text.delta", "response_id": response.id, "delta": event.text}
                )
            elif isinstance(event, AudioChunk):
                self.send_event(
                    {
                        "type": "response.audio.delta",
                        "response_id": response.id,
                        "seq": event.seq,
                        "part": event.part,
                        "sample_offset": event.sample_offset,
                        "samples": event.samples,
                        "format": fmt,
                    }
                )
                self._put(encode(event.pcm, fmt))
                metrics.AUDIO_SECONDS.inc(event.samples / OUTPUT_SAMPLE_RATE)
            elif isinstance(event, TurnDone):
                if event.error is not None:
                    self.send_error(event.error)
                if response.source == "llm" and event.text.strip():
                    self.history.add(ChatMessage("assistant", event.text))
                self.send_event(
                    {"type": "response.text.done", "response_id": response.id, "text": event.text}
                )
                self.send_event({"type": "response.done", "response": event.summary(response.id)})

    def _done(
        self,
        response: _Response,
        status: str,
        turn: Any,
        error: GatewayError | None = None,
    ) -> None:
        """response.done for a response that ended before its turn could report it."""
        response.timings.mark("done")
        done = TurnDone(
            status,
            turn.text if turn is not None else "",
            0.0,
            response.timings.as_dict(),
            error,
        )
        self.send_event({"type": "response.done", "response": done.summary(response.id)})

    async def _barge_in(self, *, send_done: bool = True) -> None:
        """Stop the running response (LLM call, TTS jobs, queued audio) and wait for its end."""
        response = self.response
        if response is None or response.task is None:
            return
        self.response = None
        if response.text_queue is not None:
            response.text_queue.put_nowait(None)
        if response.turn is not None and send_done:
            await response.turn.cancel()  # the turn reports "cancelled" through response.done
        else:
            response.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await response.task


async def _queue_source(queue: asyncio.Queue[str | None]) -> AsyncIterator[str]:
    while (text := await queue.get()) is not None:
        yield text
