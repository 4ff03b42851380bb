"""HTTP endpoints: the original server's (`/tts`, `/voicechat`, `/vlmschat`, `/multimodalchat`,
raw float32 24 kHz PCM) and OpenAI's `/v1/audio/speech`, plus health and metrics.

Each endpoint validates its body, says what to speak (a `TextSource`, after a `TranscriptSource`
for spoken questions) and hands it to `_stream_turn`, which reserves a session slot and runs one
`Turn` (turn.py): the steps that can still fail with a status code (ASR, the LLM's first token)
run before the status is sent, which is at the first audio; the stream closes when the answer is
done. A turn that fails after that aborts the connection (`StreamAborted`: no terminating chunk),
so the client sees an error, never a short body that looks complete. A client that disconnects
closes the turn's event stream, which cancels the turn (LLM call and TTS jobs).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llmvox_common.constants import SAMPLE_RATE

from . import metrics
from .audio_format import OutputFormat, encode
from .auth import require_api_key
from .backends import AsrClient, ChatMessage, Transcript, TranscriptSource, require
from .errors import GatewayError, invalid_field
from .inputs import (
    AudioInput,
    MultimodalChatRequest,
    SpeechRequest,
    TtsRequest,
    VlmsChatRequest,
    VoiceChatRequest,
    check_text,
    decode_audio,
    decode_images,
)
from .runtime import GatewayRuntime
from .speech_encoding import SPEECH_FORMATS, SpeechStream, check_speed
from .turn import AudioChunk, LlmText, TextSource, TurnDone, VerbatimText

log = logging.getLogger(__name__)

router = APIRouter()
protected = APIRouter(dependencies=[Depends(require_api_key)])

# The multimodal endpoint sends audio without a transcript; the model still needs a user turn.
MULTIMODAL_PROMPT = "Answer the request in the audio."


# Which LLM kinds (upstream --chat_type) can answer an endpoint that sends images or audio.
_IMAGE_CHAT_TYPES = ("visual_speech", "multimodal")


def _require_chat_type(runtime: GatewayRuntime, endpoint: str, allowed: tuple[str, ...]) -> None:
    """Refuse early (before any ASR work) what the configured LLM cannot take."""
    if runtime.settings.chat_type not in allowed:
        raise GatewayError(
            422,
            "invalid_request_error",
            f"/{endpoint} needs an LLM of chat_type {' or '.join(allowed)}; this gateway "
            f"serves chat_type={runtime.settings.chat_type}",
            code="unsupported_chat_type",
        )


class StreamAborted(Exception):
    """A streamed response failed after its status was sent. Raised out of the body, it makes
    the ASGI server drop the connection without the terminating chunk, so HTTP clients raise
    (incomplete chunked body) instead of taking the truncated audio for the whole answer."""


class HideStreamAborted(logging.Filter):
    """Keeps uvicorn from logging an aborted stream as a crash with a traceback; the gateway
    logs it itself, on one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, StreamAborted):
                return False
            group = exc.exceptions if isinstance(exc, BaseExceptionGroup) else ()
            exc = next((e for e in group if isinstance(e, StreamAborted)), exc.__cause__)
        return True


def runtime_of(request: Request) -> GatewayRuntime:
    runtime: GatewayRuntime = request.app.state.runtime
    return runtime


async def _stream_turn(
    runtime: GatewayRuntime,
    endpoint: str,
    text: TextSource,
    *,
    speech: TranscriptSource | None = None,
    fmt: OutputFormat = "float32",
    media_type: str = "application/octet-stream",
    header: bytes = b"",
    encoder: SpeechStream | None = None,
) -> Response:
    """Run a turn behind a session slot; errors before the first audio keep their status.
    `encoder`, when given, encodes the audio instead of `fmt` and owns the stream's end."""
    if not runtime.limiter.try_acquire():
        raise GatewayError(
            429, "busy", f"too many sessions (max_sessions={runtime.settings.max_sessions})"
        )
    session = uuid.uuid4().hex
    events = runtime.turn(session, text, speech=speech, endpoint=endpoint).events()
    try:
        # Nothing is sent before the first audio (these endpoints send audio only), so a turn
        # that fails before it (no speech, LLM refused, Redis down) is a 4xx/5xx, not an empty 200.
        first = await anext(events)
        while not isinstance(first, AudioChunk | TurnDone):
            first = await anext(events)
    except BaseException:
        await events.aclose()
        runtime.limiter.release()
        raise
    if isinstance(first, TurnDone) and first.error is not None:
        await events.aclose()
        runtime.limiter.release()
        raise first.error

    async def body() -> AsyncIterator[bytes]:
        try:
            if header:
                yield header
            item = first
            last_sent: float | None = None
            while isinstance(item, AudioChunk):
                now = time.monotonic()
                if last_sent is not None:
                    metrics.INTER_CHUNK_GAP.observe(now - last_sent)
                last_sent = now
                metrics.AUDIO_SECONDS.inc(item.samples / SAMPLE_RATE)
                data = encode(item.pcm, fmt) if encoder is None else await encoder.feed(item.pcm)
                if data:  # a compressed encoder may hold a part back until a frame fills
                    yield data
                item = await anext(events)
                while not isinstance(item, AudioChunk | TurnDone):
                    item = await anext(events)
            if item.status != "completed":
                reason = item.error.body()["error"] if item.error is not None else item.status
                log.warning("session %s: stream aborted after the first audio: %s", session, reason)
                metrics.ERRORS.labels(endpoint, "aborted").inc()
                raise StreamAborted(f"session {session}: {reason}")
            if encoder is not None:
                tail = await encoder.finish()  # the codec's last frames and the trailer
                if tail:
                    yield tail
        finally:
            if encoder is not None:
                encoder.close()
            await events.aclose()  # the client left early: the turn is cancelled
            runtime.limiter.release()

    metrics.REQUESTS.labels(endpoint, "200").inc()
    return StreamingResponse(body(), media_type=media_type, headers={"X-LLMVoX-Session": session})


class _Recognition:
    """The transcript of a whole recording, recognised when the turn asks for it, so the ASR
    call runs under the turn's deadline and cancel path."""

    def __init__(
        self, asr: AsrClient, audio: AudioInput, language: str, target_language: str
    ) -> None:
        self._asr = asr
        self._audio = audio
        self._language = language
        self._target_language = target_language

    async def finish(self) -> Transcript:
        transcript = await self._asr.recognize(
            self._audio.pcm16,
            self._audio.sample_rate,
            language=self._language,
            target_language=self._target_language,
        )
        if not transcript.text:
            raise GatewayError(
                422, "invalid_request_error", "audio_base64: no speech recognised", code="no_speech"
            )
        return transcript

    async def cancel(self) -> None:
        """Nothing runs outside `finish`, which the turn's cancel interrupts."""


def _recognition(
    runtime: GatewayRuntime, audio: AudioInput, source_language: str, target_language: str
) -> _Recognition:
    asr = require(runtime.asr, "ASR")
    require(runtime.llm, "LLM")  # before the ASR's work, which would be wasted without it
    return _Recognition(asr, audio, source_language or runtime.settings.language, target_language)


def _llm_text(runtime: GatewayRuntime, message: Callable[[str | None], ChatMessage]) -> LlmText:
    """The LLM's answer to one user message, made from the transcript when there is one."""
    llm = require(runtime.llm, "LLM")
    return LlmText(
        llm, runtime.sampling, lambda transcript: runtime.messages([message(transcript)])
    )


# -- the original server's endpoints -------------------------------------------------------------


@protected.post("/tts")
async def tts(body: TtsRequest, request: Request) -> Response:
    runtime = runtime_of(request)
    text = check_text(body.text, runtime.settings)
    if body.verbatim:
        return await _stream_turn(runtime, "tts", VerbatimText(text))
    return await _stream_turn(
        runtime, "tts", _llm_text(runtime, lambda _: ChatMessage("user", text))
    )


@protected.post("/voicechat")
async def voicechat(body: VoiceChatRequest, request: Request) -> Response:
    runtime = runtime_of(request)
    audio = decode_audio(body.audio_base64, runtime.settings)
    speech = _recognition(runtime, audio, body.source_language, body.target_language)
    text = _llm_text(runtime, lambda transcript: ChatMessage("user", transcript or ""))
    return await _stream_turn(runtime, "voicechat", text, speech=speech)


@protected.post("/vlmschat")
async def vlmschat(body: VlmsChatRequest, request: Request) -> Response:
    runtime = runtime_of(request)
    audio = decode_audio(body.audio_base64, runtime.settings)
    images = decode_images([body.image_base64], runtime.settings, "image_base64")
    _require_chat_type(runtime, "vlmschat", _IMAGE_CHAT_TYPES)
    speech = _recognition(runtime, audio, body.source_language, body.target_language)
    text = _llm_text(
        runtime, lambda transcript: ChatMessage("user", transcript or "", images=images)
    )
    return await _stream_turn(runtime, "vlmschat", text, speech=speech)


@protected.post("/multimodalchat")
async def multimodalchat(body: MultimodalChatRequest, request: Request) -> Response:
    runtime = runtime_of(request)
    audio = decode_audio(body.audio_base64, runtime.settings)
    images = decode_images(body.image_list, runtime.settings, "image_list")
    _require_chat_type(runtime, "multimodalchat", ("multimodal",))
    message = ChatMessage("user", MULTIMODAL_PROMPT, images=images, audios=[audio.wav])
    return await _stream_turn(runtime, "multimodalchat", _llm_text(runtime, lambda _: message))


# -- OpenAI-compatible speech --------------------------------------------------------------------


@protected.post("/v1/audio/speech")
async def speech(body: SpeechRequest, request: Request) -> Response:
    runtime = runtime_of(request)
    text = check_text(body.input, runtime.settings, "input")
    fmt = body.response_format
    if fmt not in SPEECH_FORMATS:
        raise invalid_field(
            f"response_format: {fmt!r} is not supported; use one of {', '.join(SPEECH_FORMATS)}"
        )
    if (problem := check_speed(body.speed)) is not None:
        raise invalid_field(problem)
    encoder = SpeechStream(fmt, body.speed)
    try:
        return await _stream_turn(
            runtime,
            "speech",
            VerbatimText(text),
            media_type=encoder.media_type,
            header=encoder.header(),
            encoder=encoder,
        )
    except BaseException:
        encoder.close()  # the turn failed before its first audio: the body never runs
        raise


# -- health and metrics --------------------------------------------------------------------------


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    state = await runtime_of(request).readiness()
    return JSONResponse(state, status_code=200 if state["ready"] else 503)


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
