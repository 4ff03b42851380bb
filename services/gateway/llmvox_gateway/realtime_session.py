"""One session of `GET /v1/realtime`, the OpenAI Realtime protocol (docs/gateway.md).

Same skeleton as the `/v1/ws` session (ws_session.py): a TaskGroup of `receive`, `send` (one
bounded outbox) and `watchdog`; each response is a `Turn` (turn.py), at most one at a time, and
every stop of a response goes through `Turn.cancel`. What differs is the conversation model of
the protocol:

- Input audio is decoded and resampled to 16 kHz (realtime_audio.py). With `server_vad` (the
  protocol's default) a VAD (vad.py) runs on it: speech opens an utterance (an ASR stream fed
  the prefix padding first), silence commits it and, with `create_response`, starts a response;
  speech while a response runs cancels it (`interrupt_response`). Without turn detection the
  client commits, and a commit only adds the user's item: `response.create` answers.
- A commit makes a user item whose transcription runs on its own; a response's text source waits
  for the transcripts of the items before it, so a response can start while the ASR finishes.
- Each response has one assistant item with one audio content part; the LLM's text is its
  transcript. The output item is announced with the response's first text or audio.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from fastapi import WebSocket
from openai.types.realtime import (
    ConversationItemAdded,
    ConversationItemCreateEvent,
    ConversationItemDeletedEvent,
    ConversationItemDeleteEvent,
    ConversationItemDone,
    ConversationItemInputAudioTranscriptionCompletedEvent,
    ConversationItemInputAudioTranscriptionDeltaEvent,
    ConversationItemInputAudioTranscriptionFailedEvent,
    ConversationItemRetrieveEvent,
    ConversationItemTruncatedEvent,
    ConversationItemTruncateEvent,
    InputAudioBufferAppendEvent,
    InputAudioBufferClearedEvent,
    InputAudioBufferClearEvent,
    InputAudioBufferCommitEvent,
    InputAudioBufferCommittedEvent,
    InputAudioBufferSpeechStartedEvent,
    InputAudioBufferSpeechStoppedEvent,
    RealtimeErrorEvent,
    ResponseAudioDeltaEvent,
    ResponseAudioDoneEvent,
    ResponseAudioTranscriptDeltaEvent,
    ResponseAudioTranscriptDoneEvent,
    ResponseCancelEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseCreateEvent,
    ResponseDoneEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    SessionCreatedEvent,
    SessionUpdatedEvent,
    SessionUpdateEvent,
)
from openai.types.realtime.realtime_audio_input_turn_detection import SemanticVad, ServerVad
from openai.types.realtime.realtime_server_event import ConversationItemRetrieved
from pydantic import BaseModel

from llmvox_common.audio import float_to_pcm16

from . import metrics
from .backends import ChatMessage, TranscriptStream
from .errors import GatewayError
from .outbox import Outbox
from .realtime_audio import FORMAT_RATES, AudioFormat, InputDecoder, OutputEncoder
from .realtime_protocol import (
    ClientEventError,
    TextAppend,
    TextCommit,
    Timings,
    TimingsEvent,
    dump,
    error_body,
    new_id,
    parse_client_event,
)
from .runtime import GatewayRuntime
from .socket_session import idled_out, receive_message, run_session_loops
from .turn import (
    AudioChunk,
    TextDelta,
    TextSource,
    Turn,
    TurnDone,
    TurnEvent,
    TurnTimings,
    VerbatimText,
)
from .vad import (
    WINDOW,
    SileroVad,
    SpeechModel,
    SpeechStarted,
    TurnDetector,
    VadSettings,
    WindowBuffer,
)

log = logging.getLogger(__name__)

ENDPOINT = "realtime"
VOICE = "llmvox"  # the one voice the TTS replicas have; a client's choice is echoed, not used


@dataclass
class _Config:
    input_format: AudioFormat = "audio/pcm"
    output_format: AudioFormat = "audio/pcm"
    instructions: str | None = None
    language: str = "en"
    voice: str = VOICE
    vad: VadSettings | None = field(default_factory=VadSettings)  # None: the client commits
    create_response: bool = True
    interrupt_response: bool = True


@dataclass
class _Item:
    """A conversation item: a user's utterance or text, an answer, or a system message."""

    id: str
    role: str  # user | assistant | system
    text: str = ""
    audio: bool = False  # content is input_audio (user) / output_audio (assistant)
    transcription: asyncio.Task[str] | None = None  # a user utterance's, while it runs
    audio_ms: int = 0  # an answer's audio sent so far

    def model(self, status: str = "completed") -> dict[str, Any]:
        if self.role == "user":
            content: dict[str, Any] = (
                {"type": "input_audio", "transcript": self.text if self.done else None}
                if self.audio
                else {"type": "input_text", "text": self.text}
            )
        elif self.role == "assistant":
            content = {"type": "output_audio", "transcript": self.text}
        else:
            content = {"type": "input_text", "text": self.text}
        return {
            "id": self.id,
            "object": "realtime.item",
            "type": "message",
            "role": self.role,
            "status": status,
            "content": [content],
        }

    @property
    def done(self) -> bool:
        return self.transcription is None or self.transcription.done()


@dataclass
class _Utterance:
    """The audio being spoken, streamed to the ASR; its item id is announced at speech start."""

    stream: TranscriptStream
    item_id: str
    samples: int = 0  # at 16 kHz
    overflowed: bool = False
    partial: str = ""  # the last partial transcript, to send deltas


@dataclass
class _Response:
    id: str
    turn: Turn
    item: _Item
    encoder: OutputEncoder
    from_llm: bool
    opened: bool = False  # output item and content part announced
    cancel_reason: str = "client_cancelled"


class _ConversationText:
    """A response's text source: the LLM's answer to the conversation up to the response's
    start, built once the transcripts it includes are final."""

    from_llm = True

    def __init__(
        self,
        session: RealtimeSession,
        items: list[_Item],
        instructions: str | None,
        timings: TurnTimings,
    ) -> None:
        self._session = session
        self._items = items
        self._instructions = instructions
        self._timings = timings

    async def open(self, transcript: str | None) -> AsyncIterator[str]:
        messages = await self._session.llm_messages(self._items, self._instructions, self._timings)
        llm = self._session.runtime.llm
        assert llm is not None
        stream = llm.generate(messages, self._session.runtime.sampling)
        try:
            async for delta in stream:
                yield delta
        finally:
            # Closing the LLM's generator cancels its gRPC call (the turn's cancel path).
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()


def _format_model(fmt: AudioFormat) -> dict[str, Any]:
    if fmt == "audio/pcm":
        return {"type": fmt, "rate": FORMAT_RATES[fmt]}
    return {"type": fmt}


class RealtimeSession:
    def __init__(
        self,
        websocket: WebSocket,
        runtime: GatewayRuntime,
        *,
        model: str = "llmvox",
        speech_model: Callable[[], SpeechModel] = SileroVad,
    ) -> None:
        self.ws = websocket
        self.runtime = runtime
        self.settings = runtime.settings
        self.id = new_id("sess")
        self.model = model
        self.conversation_id = new_id("conv")
        self.config = _Config(language=self.settings.language)
        self.outbox = Outbox(self.settings.send_queue_frames)
        self.last_activity = time.monotonic()
        self.next_seq = 0
        self.audio_last_id = "0"
        self.items: list[_Item] = []
        self.response: _Response | None = None  # the running one
        self.utterance: _Utterance | None = None
        self._make_speech_model = speech_model
        self._speech_model: SpeechModel | None = None
        self._decoder = InputDecoder(self.config.input_format)
        self._windows = WindowBuffer()
        self._detector: TurnDetector | None = None
        self._recent = np.zeros(0, dtype=np.float32)  # the prefix padding, while nobody speaks
        self._samples_in = 0  # 16 kHz samples of input so far (the timeline of audio_*_ms)
        self._transcriptions: set[asyncio.Task[str]] = set()

    # -- output ---------------------------------------------------------------------------------

    def send(self, event: BaseModel) -> None:
        self.outbox.put(dump(event))

    def send_error(self, error: GatewayError, event_id: str | None = None) -> None:
        self.send(
            RealtimeErrorEvent(
                type="error", event_id=new_id("event"), error=error_body(error, event_id)
            )
        )

    def _event(self, cls: type[BaseModel], **fields: Any) -> None:
        self.send(cls(event_id=new_id("event"), **fields))

    def session_model(self) -> dict[str, Any]:
        vad = self.config.vad
        turn_detection: dict[str, Any] | None = None
        if vad is not None:
            turn_detection = {
                "type": "server_vad",
                "threshold": vad.threshold,
                "prefix_padding_ms": vad.prefix_padding_ms,
                "silence_duration_ms": vad.silence_duration_ms,
                "create_response": self.config.create_response,
                "interrupt_response": self.config.interrupt_response,
            }
        session: dict[str, Any] = {
            "type": "realtime",
            "id": self.id,
            "object": "realtime.session",
            "model": self.model,
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": _format_model(self.config.input_format),
                    "transcription": {"model": "whisper", "language": self.config.language},
                    "turn_detection": turn_detection,
                },
                "output": {
                    "format": _format_model(self.config.output_format),
                    "voice": self.config.voice,
                    "speed": 1.0,
                },
            },
        }
        instructions = self.config.instructions or self.settings.system_prompt
        if instructions:
            session["instructions"] = instructions
        return session

    # -- loops ----------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            self._configure_vad()
            startup_error: GatewayError | None = None
        except GatewayError as error:  # no VAD model: the session starts with manual turns
            startup_error = error
        self._event(SessionCreatedEvent, type="session.created", session=self.session_model())
        if startup_error is not None:
            self.send_error(startup_error)
        try:
            await run_session_loops(
                self.ws,
                self.outbox,
                receive=self._receive_loop,
                idle=self._idled_out,
                log=log,
                label=f"realtime session {self.id}",
            )
        finally:
            await self._shutdown()

    async def _receive_loop(self) -> None:
        while True:
            message = await receive_message(self.ws)
            self.last_activity = time.monotonic()
            event_id: str | None = None
            try:
                if message.get("text") is None:
                    raise GatewayError(
                        400, "invalid_request_error", "binary frames are not part of this protocol"
                    )
                event, event_id = parse_client_event(message["text"])
                await self._dispatch(event)
            except ClientEventError as error:
                self.send_error(error, error.event_id)
            except GatewayError as error:
                self.send_error(error, event_id)

    def _idled_out(self) -> bool:
        return self.response is None and idled_out(self.last_activity, self.settings.idle_timeout_s)

    async def _shutdown(self) -> None:
        response, self.response = self.response, None
        if response is not None:
            await response.turn.close()  # the client is gone: stop everything, report nothing
        if self.utterance is not None:
            await self.utterance.stream.cancel()
            self.utterance = None
        for task in list(self._transcriptions):
            task.cancel()
        await asyncio.gather(*self._transcriptions, return_exceptions=True)

    # -- client events --------------------------------------------------------------------------

    async def _dispatch(self, event: Any) -> None:
        match event:
            case SessionUpdateEvent():
                self._update_session(event)
            case InputAudioBufferAppendEvent():
                try:
                    data = base64.b64decode(event.audio, validate=True)
                except (binascii.Error, ValueError):
                    raise GatewayError(400, "invalid_request_error", "audio: not base64") from None
                await self._append_audio(data)
            case InputAudioBufferCommitEvent():
                await self._commit(by_client=True)
            case InputAudioBufferClearEvent():
                await self._clear_audio()
                self._event(InputAudioBufferClearedEvent, type="input_audio_buffer.cleared")
            case ConversationItemCreateEvent():
                self._create_item(event)
            case ConversationItemDeleteEvent():
                self._delete_item(event.item_id)
            case ConversationItemRetrieveEvent():
                item = self._find_item(event.item_id)
                self._event(
                    ConversationItemRetrieved, type="conversation.item.retrieved", item=item.model()
                )
            case ConversationItemTruncateEvent():
                self._truncate_item(event)
            case ResponseCreateEvent():
                instructions = event.response.instructions if event.response else None
                await self._start_llm_response(TurnTimings(), instructions, "client_cancelled")
            case ResponseCancelEvent():
                if self.response is None or (
                    event.response_id is not None and event.response_id != self.response.id
                ):
                    raise GatewayError(
                        400,
                        "invalid_request_error",
                        "no response is active",
                        code="response_cancel_not_active",
                    )
                await self._cancel_response("client_cancelled")
            case TextAppend():
                await self._append_text(event.text)
            case TextCommit():
                if (feed := self._verbatim_feed()) is not None:
                    feed.commit()
            case _:
                kind = getattr(event, "type", "?")
                raise GatewayError(
                    400,
                    "invalid_request_error",
                    f"{kind} is not supported by this server",
                    code="unsupported_event",
                )

    def _update_session(self, event: SessionUpdateEvent) -> None:
        session = event.session
        if session.type != "realtime":
            raise GatewayError(
                400, "invalid_request_error", "only realtime sessions (type: realtime) are served"
            )
        if session.instructions is not None:
            self._check_text(session.instructions)
        audio_in = session.audio.input if session.audio is not None else None
        audio_out = session.audio.output if session.audio is not None else None
        # Check everything first: an update that fails changes nothing.
        detection_given = audio_in is not None and "turn_detection" in audio_in.model_fields_set
        if detection_given:
            assert audio_in is not None
            turn_detection = self._turn_detection(audio_in.turn_detection)
        input_format = self.config.input_format
        if audio_in is not None and audio_in.format is not None:
            input_format = audio_in.format.type or "audio/pcm"
            if input_format != self.config.input_format and self.utterance is not None:
                raise GatewayError(
                    400, "invalid_request_error", "audio.input.format: commit or clear audio first"
                )
        if session.instructions is not None:
            self.config.instructions = session.instructions or None
        if input_format != self.config.input_format:
            self.config.input_format = input_format
            self._decoder = InputDecoder(input_format)
        if audio_out is not None:
            if audio_out.format is not None:
                self.config.output_format = audio_out.format.type or "audio/pcm"
            if isinstance(audio_out.voice, str):
                self.config.voice = audio_out.voice
        if audio_in is not None and audio_in.transcription and audio_in.transcription.language:
            self.config.language = audio_in.transcription.language
        unavailable: GatewayError | None = None
        if detection_given:
            vad, self.config.create_response, self.config.interrupt_response = turn_detection
            self.config.vad = vad
            try:
                self._configure_vad()  # loads the model the first time
            except GatewayError as error:  # no model: the rest applies, turns stay manual
                unavailable = error
        self._event(SessionUpdatedEvent, type="session.updated", session=self.session_model())
        if unavailable is not None:
            raise unavailable

    def _turn_detection(
        self, detection: ServerVad | SemanticVad | None
    ) -> tuple[VadSettings | None, bool, bool]:
        """The VAD settings, create_response and interrupt_response a `turn_detection` asks for;
        a GatewayError for values out of range, before anything changes."""
        if detection is None:
            return None, self.config.create_response, self.config.interrupt_response
        # semantic_vad is served by the same VAD with the defaults (docs/gateway.md).
        defaults = VadSettings()
        server = detection if isinstance(detection, ServerVad) else None
        vad = VadSettings(
            threshold=_pick(server.threshold if server else None, defaults.threshold),
            prefix_padding_ms=_pick(
                server.prefix_padding_ms if server else None, defaults.prefix_padding_ms
            ),
            silence_duration_ms=_pick(
                server.silence_duration_ms if server else None, defaults.silence_duration_ms
            ),
        )
        if (
            not 0.0 < vad.threshold < 1.0
            or vad.prefix_padding_ms < 0
            or vad.silence_duration_ms < 0
        ):
            raise GatewayError(
                400,
                "invalid_request_error",
                "turn_detection: threshold in (0, 1), durations >= 0",
                code="invalid_value",
            )
        return (
            vad,
            _pick(detection.create_response, True),
            _pick(detection.interrupt_response, True),
        )

    def _configure_vad(self) -> None:
        vad = self.config.vad
        if vad is None:
            self._detector = None
            return
        if self._speech_model is None:
            try:
                self._speech_model = self._make_speech_model()
            except Exception as error:  # no model installed: the session still works manually
                self.config.vad = None
                self._detector = None
                raise GatewayError(
                    503, "unavailable", f"server_vad unavailable ({error}); turn_detection is null"
                ) from None
        self._windows.clear()
        self._detector = TurnDetector(vad, first_window=self._samples_in // WINDOW)

    def _check_text(self, text: str) -> None:
        if len(text) > self.settings.max_text_chars:
            raise GatewayError(
                413,
                "too_large",
                f"text of {len(text)} characters, the limit is {self.settings.max_text_chars}",
            )

    # -- conversation items ---------------------------------------------------------------------

    def _previous_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    def _add_item(self, item: _Item) -> str | None:
        previous = self._previous_id()
        self.items.append(item)
        # A turn is a user item and its answer; keep the last `history_turns` of them.
        keep = 2 * self.settings.history_turns + 1
        if len(self.items) > keep:
            del self.items[: len(self.items) - keep]
        return previous

    def _find_item(self, item_id: str) -> _Item:
        for item in self.items:
            if item.id == item_id:
                return item
        raise GatewayError(
            400, "invalid_request_error", f"no item {item_id!r}", code="item_not_found"
        )

    def _create_item(self, event: ConversationItemCreateEvent) -> None:
        raw = event.item
        role = getattr(raw, "role", None)
        if getattr(raw, "type", None) != "message" or role not in ("user", "assistant", "system"):
            raise GatewayError(
                400,
                "invalid_request_error",
                "only message items (user, assistant, system) are supported",
                code="unsupported_item",
            )
        texts = []
        for part in raw.content:  # type: ignore[union-attr]
            text = getattr(part, "text", None) or getattr(part, "transcript", None)
            if text is None:
                raise GatewayError(
                    400,
                    "invalid_request_error",
                    "only text content is supported in conversation.item.create",
                    code="unsupported_content",
                )
            texts.append(text)
        text = "".join(texts)
        self._check_text(text)
        item = _Item(getattr(raw, "id", None) or new_id("item"), role, text)
        previous = self._add_item(item)
        self._event(
            ConversationItemAdded,
            type="conversation.item.added",
            previous_item_id=previous,
            item=item.model(),
        )
        self._event(
            ConversationItemDone,
            type="conversation.item.done",
            previous_item_id=previous,
            item=item.model(),
        )

    def _delete_item(self, item_id: str) -> None:
        item = self._find_item(item_id)
        self.items.remove(item)
        self._event(ConversationItemDeletedEvent, type="conversation.item.deleted", item_id=item.id)

    def _truncate_item(self, event: ConversationItemTruncateEvent) -> None:
        """The client played only `audio_end_ms` of an answer (it was interrupted): the answer's
        text in the conversation is cut in proportion, at a word boundary, so the LLM does not
        think the user heard the rest. Without word timings the cut is an estimate."""
        item = self._find_item(event.item_id)
        if item.role != "assistant":
            raise GatewayError(
                400, "invalid_request_error", "only assistant audio can be truncated"
            )
        if event.audio_end_ms > item.audio_ms:
            raise GatewayError(
                400,
                "invalid_request_error",
                f"audio_end_ms {event.audio_end_ms} is past the item's audio ({item.audio_ms} ms)",
            )
        if item.audio_ms:
            words = item.text.split()
            keep = int(len(words) * event.audio_end_ms / item.audio_ms)
            item.text = " ".join(words[:keep])
        item.audio_ms = event.audio_end_ms
        self._event(
            ConversationItemTruncatedEvent,
            type="conversation.item.truncated",
            item_id=item.id,
            content_index=event.content_index,
            audio_end_ms=event.audio_end_ms,
        )

    # -- input audio ----------------------------------------------------------------------------

    async def _append_audio(self, data: bytes) -> None:
        if self.runtime.asr is None:
            raise GatewayError(503, "unavailable", "this gateway has no ASR service configured")
        try:
            self._decoder.check(data)
        except ValueError as error:
            raise GatewayError(400, "invalid_request_error", f"audio: {error}") from None
        samples = self._decoder.decode(data)
        if self._detector is None:
            self._feed(samples)
            self._samples_in += len(samples)
            return
        windows = self._windows.push(samples)
        if not len(windows):
            return
        assert self._speech_model is not None
        # onnxruntime releases the GIL: the loop serves other sessions meanwhile, and this
        # session's events stay in order (the receive loop waits for this append).
        probabilities = await asyncio.to_thread(self._speech_model.probabilities, windows)
        for window, probability in zip(windows, probabilities, strict=True):
            detector = self._detector
            if detector is None:  # a commit or update in between switched it off
                self._feed(window)
                continue
            event = detector.push(float(probability))
            if isinstance(event, SpeechStarted):
                await self._speech_started(event.audio_start_ms)
            if detector.speaking or self.utterance is not None:
                self._feed(window)
            else:
                self._remember(window)
            self._samples_in += len(window)
            if event is not None and not isinstance(event, SpeechStarted):
                await self._speech_stopped(event.audio_end_ms)
            elif self.utterance is not None and self.utterance.overflowed:
                # The utterance reached max_audio_seconds: end it there, as a pause would.
                stopped = detector.stop()
                if stopped is not None:
                    await self._speech_stopped(stopped.audio_end_ms)

    def _remember(self, window: np.ndarray) -> None:
        keep = (self.config.vad or VadSettings()).prefix_padding_ms * 16
        self._recent = np.concatenate([self._recent, window])[-keep:] if keep else self._recent[:0]

    def _open_utterance(self, item_id: str | None = None) -> _Utterance:
        assert self.runtime.asr is not None
        utterance: _Utterance

        def partial(text: str) -> None:
            # Whisper's partials may revise earlier words; only an extension is a delta.
            if text.startswith(utterance.partial) and len(text) > len(utterance.partial):
                delta = text[len(utterance.partial) :]
                utterance.partial = text
                self._event(
                    ConversationItemInputAudioTranscriptionDeltaEvent,
                    type="conversation.item.input_audio_transcription.delta",
                    item_id=utterance.item_id,
                    content_index=0,
                    delta=delta,
                )

        stream = self.runtime.asr.stream(16_000, language=self.config.language, on_partial=partial)
        utterance = _Utterance(stream, item_id or new_id("item"))
        self.utterance = utterance
        return utterance

    def _feed(self, samples: np.ndarray) -> None:
        utterance = self.utterance or self._open_utterance()
        if utterance.overflowed or not len(samples):
            return
        limit = int(self.settings.max_audio_seconds * 16_000)
        if utterance.samples + len(samples) > limit:
            utterance.overflowed = True
            if self._detector is None:  # manual turns: the client has to commit or clear
                raise GatewayError(
                    413,
                    "too_large",
                    f"input audio longer than {self.settings.max_audio_seconds:g} s; "
                    "commit or clear it",
                )
            return
        utterance.samples += len(samples)
        utterance.stream.send(float_to_pcm16(samples).tobytes())

    async def _speech_started(self, audio_start_ms: int) -> None:
        if self.utterance is None:
            utterance = self._open_utterance()
            prefix, self._recent = self._recent, self._recent[:0]
            self._feed(prefix)
        else:
            utterance = self.utterance
        self._event(
            InputAudioBufferSpeechStartedEvent,
            type="input_audio_buffer.speech_started",
            audio_start_ms=audio_start_ms,
            item_id=utterance.item_id,
        )
        if self.config.interrupt_response and self.response is not None:
            await self._cancel_response("turn_detected")

    async def _speech_stopped(self, audio_end_ms: int) -> None:
        if self.utterance is None:
            return
        self._event(
            InputAudioBufferSpeechStoppedEvent,
            type="input_audio_buffer.speech_stopped",
            audio_end_ms=audio_end_ms,
            item_id=self.utterance.item_id,
        )
        await self._commit(by_client=False)

    async def _clear_audio(self) -> None:
        utterance, self.utterance = self.utterance, None
        if utterance is not None:
            await utterance.stream.cancel()
        self._recent = self._recent[:0]
        if self._detector is not None:
            self._detector.stop()
            self._windows.clear()

    async def _commit(self, *, by_client: bool) -> None:
        if by_client and self._detector is None and self.utterance is not None:
            # Manual turns end where the client says: the resampler's tail belongs to them.
            # (With the VAD, that tail is in the silence after the speech.)
            self._feed(self._decoder.flush())
        utterance, self.utterance = self.utterance, None
        if by_client and self._detector is not None:
            self._detector.stop()  # a manual commit ends the speech: no speech_stopped follows
        if utterance is None or utterance.samples == 0:
            if utterance is not None:
                await utterance.stream.cancel()
            if by_client:
                raise GatewayError(
                    400,
                    "invalid_request_error",
                    "input audio buffer is empty",
                    code="input_audio_buffer_commit_empty",
                )
            return
        item = _Item(utterance.item_id, "user", audio=True)
        task = asyncio.create_task(
            self._transcribe(item, utterance), name=f"transcribe {utterance.item_id}"
        )
        item.transcription = task
        self._transcriptions.add(task)
        task.add_done_callback(self._transcriptions.discard)
        previous = self._add_item(item)
        self._event(
            InputAudioBufferCommittedEvent,
            type="input_audio_buffer.committed",
            item_id=item.id,
            previous_item_id=previous,
        )
        self._event(
            ConversationItemAdded,
            type="conversation.item.added",
            previous_item_id=previous,
            item=item.model(),
        )
        if not by_client and self.config.create_response:
            await self._start_llm_response(TurnTimings(), None, "turn_detected")

    async def _transcribe(self, item: _Item, utterance: _Utterance) -> str:
        """The utterance's final transcript, announced before anyone awaiting it reads it."""
        try:
            result = await utterance.stream.finish()
        except asyncio.CancelledError:  # the session ends: the ASR call goes with it
            await utterance.stream.cancel()
            raise
        except GatewayError as error:
            self._event(
                ConversationItemInputAudioTranscriptionFailedEvent,
                type="conversation.item.input_audio_transcription.failed",
                item_id=item.id,
                content_index=0,
                error={"type": error.kind, "code": error.code, "message": error.message},
            )
            return ""
        item.text = result.text
        self._event(
            ConversationItemInputAudioTranscriptionCompletedEvent,
            type="conversation.item.input_audio_transcription.completed",
            item_id=item.id,
            content_index=0,
            transcript=result.text,
            usage={"type": "duration", "seconds": round(utterance.samples / 16_000, 3)},
        )
        done = {**item.model(), "content": [{"type": "input_audio", "transcript": result.text}]}
        self._event(ConversationItemDone, type="conversation.item.done", item=done)
        return result.text

    async def llm_messages(
        self, items: list[_Item], instructions: str | None, timings: TurnTimings
    ) -> list[ChatMessage]:
        """The LLM's input for a response: the conversation as it was when the response was
        asked for, once the utterances in it are transcribed."""
        pending = [item.transcription for item in items if item.transcription is not None]
        if pending:
            # Shielded: a cancelled response must not cancel the transcription of the item.
            await asyncio.shield(asyncio.gather(*pending))
            timings.mark("asr")
            metrics.ASR_SECONDS.observe((timings.asr or 0.0) - timings.started)
        if items and items[-1].role == "user" and items[-1].audio and not items[-1].text:
            raise GatewayError(
                422, "invalid_request_error", "no speech recognised", code="no_speech"
            )
        history = [ChatMessage(item.role, item.text) for item in items if item.text]
        return self.runtime.messages(
            history, instructions if instructions is not None else self.config.instructions
        )

    # -- responses ------------------------------------------------------------------------------

    def _verbatim_feed(self) -> VerbatimText | None:
        response = self.response
        if response is not None and isinstance(response.turn.source, VerbatimText):
            source = response.turn.source
            return None if source.committed else source
        return None

    async def _append_text(self, text: str) -> None:
        feed = self._verbatim_feed()
        if feed is None:
            feed = VerbatimText(max_chars=self.settings.max_text_chars)
            await self._start_response(feed, TurnTimings(), "client_cancelled")
        feed.append(text)  # over the limit: commits what came so far, then raises

    async def _start_llm_response(
        self, timings: TurnTimings, instructions: str | None, barge_in_reason: str
    ) -> None:
        if self.runtime.llm is None:
            raise GatewayError(503, "unavailable", "this gateway has no LLM service configured")
        await self._cancel_response(barge_in_reason)
        source = _ConversationText(self, list(self.items), instructions, timings)
        await self._start_response(source, timings, barge_in_reason)

    async def _start_response(
        self, source: TextSource, timings: TurnTimings, barge_in_reason: str
    ) -> None:
        await self._cancel_response(barge_in_reason)
        turn = self.runtime.turn(
            self.id,
            source,
            first_seq=self.next_seq,
            endpoint=ENDPOINT,
            timings=timings,
            audio_start_id=self.audio_last_id,
        )
        response = _Response(
            new_id("resp"),
            turn,
            _Item(new_id("item"), "assistant", audio=True),
            OutputEncoder(self.config.output_format),
            from_llm=source.from_llm,
        )
        self.response = response
        self._event(
            ResponseCreatedEvent,
            type="response.created",
            response=self._response_model(response, "in_progress"),
        )
        turn.start(functools.partial(self._render, response))

    async def _cancel_response(self, reason: str) -> None:
        """Stop the running response (LLM call, TTS jobs); returns after its response.done."""
        response, self.response = self.response, None
        if response is not None:
            response.cancel_reason = reason
            await response.turn.cancel()

    def _response_model(
        self, response: _Response, status: str, done: TurnDone | None = None
    ) -> dict[str, Any]:
        model: dict[str, Any] = {
            "id": response.id,
            "object": "realtime.response",
            "status": status,
            "conversation_id": self.conversation_id,
            "output_modalities": ["audio"],
            "audio": {
                "output": {
                    "format": _format_model(self.config.output_format),
                    "voice": self.config.voice,
                }
            },
            "output": [],
        }
        if done is not None:
            if response.opened:
                item_status = "completed" if status == "completed" else "incomplete"
                model["output"] = [response.item.model(item_status)]
            details: dict[str, Any] = {"type": status}
            if status == "cancelled":
                details["reason"] = response.cancel_reason
            if done.error is not None:
                details["error"] = {
                    "type": done.error.kind,
                    "code": done.error.code,
                    "message": done.error.message,
                }
            model["status_details"] = details
        return model

    def _open_output(self, response: _Response) -> None:
        if response.opened:
            return
        response.opened = True
        previous = self._add_item(response.item)
        item = response.item.model("in_progress")
        item["content"] = []
        self._event(
            ResponseOutputItemAddedEvent,
            type="response.output_item.added",
            response_id=response.id,
            output_index=0,
            item=item,
        )
        self._event(
            ConversationItemAdded,
            type="conversation.item.added",
            previous_item_id=previous,
            item=item,
        )
        self._event(
            ResponseContentPartAddedEvent,
            type="response.content_part.added",
            response_id=response.id,
            item_id=response.item.id,
            output_index=0,
            content_index=0,
            part={"type": "audio", "transcript": ""},
        )

    def _part(self, response: _Response) -> dict[str, Any]:
        return {
            "response_id": response.id,
            "item_id": response.item.id,
            "output_index": 0,
            "content_index": 0,
        }

    def _send_audio(self, response: _Response, data: bytes) -> None:
        if not data:
            return
        self._event(
            ResponseAudioDeltaEvent,
            type="response.output_audio.delta",
            delta=base64.b64encode(data).decode("ascii"),
            **self._part(response),
        )
        encoder = response.encoder
        response.item.audio_ms = encoder.samples_out * 1000 // encoder.rate

    async def _render(self, response: _Response, event: TurnEvent) -> None:
        """One event of the response's turn as server events (its sink; never waits: the
        outbox drops a client that falls behind)."""
        if isinstance(event, TextDelta):
            self._open_output(response)
            response.item.text += event.text
            self._event(
                ResponseAudioTranscriptDeltaEvent,
                type="response.output_audio_transcript.delta",
                delta=event.text,
                **self._part(response),
            )
        elif isinstance(event, AudioChunk):
            self._open_output(response)
            self._send_audio(response, response.encoder.encode(event.pcm))
            metrics.AUDIO_SECONDS.inc(event.samples / 24_000)
        elif isinstance(event, TurnDone):
            self._finish(response, event)

    def _finish(self, response: _Response, done: TurnDone) -> None:
        if response.opened:
            if done.status == "completed":
                self._send_audio(response, response.encoder.flush())
            transcript = response.item.text
            part = self._part(response)
            self._event(ResponseAudioDoneEvent, type="response.output_audio.done", **part)
            self._event(
                ResponseAudioTranscriptDoneEvent,
                type="response.output_audio_transcript.done",
                transcript=transcript,
                **part,
            )
            self._event(
                ResponseContentPartDoneEvent,
                type="response.content_part.done",
                part={"type": "audio", "transcript": transcript},
                **part,
            )
            status = "completed" if done.status == "completed" else "incomplete"
            self._event(
                ResponseOutputItemDoneEvent,
                type="response.output_item.done",
                response_id=response.id,
                output_index=0,
                item=response.item.model(status),
            )
            self._event(
                ConversationItemDone,
                type="conversation.item.done",
                item=response.item.model(status),
            )
        self._event(
            ResponseDoneEvent,
            type="response.done",
            response=self._response_model(response, done.status, done),
        )
        self.send(
            TimingsEvent(
                type="llmvox.timings",
                event_id=new_id("event"),
                response_id=response.id,
                timings=Timings.model_validate(done.timings),
            )
        )
        # Seqs and the audio stream's read position carry over to the next response.
        self.next_seq = max(self.next_seq, response.turn.next_seq)
        self.audio_last_id = response.turn.audio_last_id
        if self.response is response:
            self.response = None


T = TypeVar("T")


def _pick(value: T | None, default: T) -> T:
    return default if value is None else value
