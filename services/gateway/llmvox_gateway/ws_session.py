"""One WebSocket session of `GET /v1/ws` (protocol in docs/gateway.md).

A session is a TaskGroup of named loops: `receive` (client events → actions), `send` (one bounded
outbox → the socket) and `watchdog` (idle timeout, slow client). The session admits client events
and renders server events; each response is a `Turn` (turn.py), which owns the response's whole
life. At most one runs at a time; a commit, `response.create` or new verbatim text barges in on
it (`Turn.cancel`, which returns once the old response's `response.done` is queued). A client that
falls `send_queue_frames` behind is closed (1008): audio is never buffered without bound.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import WebSocket
from pydantic import ValidationError

from llmvox_common.constants import SAMPLE_RATE

from . import metrics
from .audio_format import OutputFormat, encode
from .backends import ChatMessage, TranscriptStream
from .errors import GatewayError
from .outbox import Frame, Outbox
from .runtime import GatewayRuntime
from .socket_session import idled_out, receive_message, run_session_loops
from .turn import (
    AudioChunk,
    LlmText,
    TextDelta,
    TextSource,
    TranscriptFinal,
    Turn,
    TurnDone,
    TurnEvent,
    TurnTimings,
    VerbatimText,
)
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

# How stale the `tts_untrained` flag of session.created may be (a replica's profile rarely changes).
POOL_STATE_MAX_AGE_S = 5.0


@dataclass
class _Config:
    input_sample_rate: int = 16_000
    output_audio_format: OutputFormat = "pcm16"
    instructions: str | None = None
    language: str = "en"


@dataclass
class _Utterance:
    stream: TranscriptStream
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
        self.turn: Turn | None = None  # the running response
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
            "output_sample_rate": SAMPLE_RATE,
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
            await run_session_loops(
                self.ws,
                self.outbox,
                receive=self._receive_loop,
                idle=self._idled_out,
                log=log,
                label=f"session {self.id}",
            )
        finally:
            await self._shutdown()

    async def _receive_loop(self) -> None:
        while True:
            message = await receive_message(self.ws)
            self.last_activity = time.monotonic()
            try:
                if message.get("bytes") is not None:
                    self._append_audio(message["bytes"])
                elif message.get("text") is not None:
                    await self._dispatch(message["text"])
            except GatewayError as error:
                self.send_error(error)

    def _idled_out(self) -> bool:
        return self.turn is None and idled_out(self.last_activity, self.settings.idle_timeout_s)

    async def _shutdown(self) -> None:
        turn, self.turn = self.turn, None
        if turn is not None:
            await turn.close()  # the client is gone: stop everything, report nothing
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
                await self._start_llm_turn(TurnTimings(), instructions=event.response.instructions)
            case ResponseCancel():
                await self._barge_in()
            case TextAppend():
                await self._append_text(event.text)
            case TextCommit():
                if (feed := self._verbatim_feed()) is not None:
                    feed.commit()

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
        await self._start_llm_turn(timings, speech=utterance.stream)

    # -- responses ------------------------------------------------------------------------------

    def _verbatim_feed(self) -> VerbatimText | None:
        """The running response's verbatim text, while the client may still add to it."""
        turn = self.turn
        if turn is not None and isinstance(turn.source, VerbatimText):
            return None if turn.source.committed else turn.source
        return None

    async def _append_text(self, text: str) -> None:
        feed = self._verbatim_feed()
        if feed is None:
            # Refused before a response starts: an oversized first frame is only an `error`.
            self._check_text(text)
            feed = VerbatimText(max_chars=self.settings.max_text_chars)
            await self._start_turn(feed, TurnTimings())
        feed.append(text)  # over the limit: commits what came so far, then raises

    async def _start_llm_turn(
        self,
        timings: TurnTimings,
        *,
        speech: TranscriptStream | None = None,
        instructions: str | None = None,
    ) -> None:
        await self._barge_in()
        if self.runtime.llm is None:
            if speech is not None:
                await speech.cancel()
            raise GatewayError(503, "unavailable", "this gateway has no LLM service configured")
        text = LlmText(
            self.runtime.llm,
            self.runtime.sampling,
            functools.partial(self._llm_messages, instructions),
        )
        await self._start_turn(text, timings, speech=speech)

    def _llm_messages(self, instructions: str | None, transcript: str | None) -> list[ChatMessage]:
        """The LLM's input, built when the turn calls it: after the transcript, which joins the
        history first."""
        if transcript is not None:
            self.history.add(ChatMessage("user", transcript))
        return self.runtime.messages(
            self.history.messages,
            instructions if instructions is not None else self.config.instructions,
        )

    async def _start_turn(
        self, text: TextSource, timings: TurnTimings, *, speech: TranscriptStream | None = None
    ) -> None:
        await self._barge_in()
        response_id = "resp_" + uuid.uuid4().hex[:16]
        turn = self.runtime.turn(
            self.id,
            text,
            speech=speech,
            first_seq=self.next_seq,
            endpoint="ws",
            timings=timings,
            audio_start_id=self.audio_last_id,
        )
        self.turn = turn
        source = "llm" if text.from_llm else "verbatim"
        self.send_event(
            {"type": "response.created", "response": {"id": response_id, "source": source}}
        )
        turn.start(functools.partial(self._render, turn, response_id))

    async def _render(self, turn: Turn, response_id: str, event: TurnEvent) -> None:
        """One event of `turn` as server events (the turn's sink; never waits: the outbox
        drops a client that falls behind)."""
        fmt = self.config.output_audio_format
        if isinstance(event, TranscriptFinal):
            self.send_event(
                {"type": "transcript.final", "text": event.text, "asr_seconds": event.asr_seconds}
            )
        elif isinstance(event, TextDelta):
            self.send_event(
                {"type": "response.text.delta", "response_id": response_id, "delta": event.text}
            )
        elif isinstance(event, AudioChunk):
            self.send_event(
                {
                    "type": "response.audio.delta",
                    "response_id": response_id,
                    "seq": event.seq,
                    "part": event.part,
                    "sample_offset": event.sample_offset,
                    "samples": event.samples,
                    "format": fmt,
                }
            )
            self._put(encode(event.pcm, fmt))
            metrics.AUDIO_SECONDS.inc(event.samples / SAMPLE_RATE)
        elif isinstance(event, TurnDone):
            if event.error is not None:
                self.send_error(event.error)
            if turn.source.from_llm and event.text.strip():
                self.history.add(ChatMessage("assistant", event.text))
            self.send_event(
                {"type": "response.text.done", "response_id": response_id, "text": event.text}
            )
            self.send_event({"type": "response.done", "response": event.summary(response_id)})
            # Seqs and the audio stream's read position carry over to the next response.
            self.next_seq = max(self.next_seq, turn.next_seq)
            self.audio_last_id = turn.audio_last_id
            if self.turn is turn:
                self.turn = None

    async def _barge_in(self) -> None:
        """Stop the running response (LLM call, TTS jobs); returns after its response.done."""
        turn, self.turn = self.turn, None
        if turn is not None:
            await turn.cancel()
