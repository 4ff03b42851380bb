"""HTTP endpoints: the original server's (`/tts`, `/voicechat`, `/vlmschat`, `/multimodalchat`,
raw float32 24 kHz PCM) and OpenAI's `/v1/audio/speech`, plus health and metrics.

Each endpoint validates its body, reserves a session slot, runs the steps that can still fail
with a status code (ASR, the LLM's first token), and only then starts the audio stream, which
closes when the answer is done. A client that disconnects cancels its turn (LLM call and TTS
jobs) through the stream generator's cleanup.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import metrics
from .audio_format import OutputFormat, encode, streaming_wav_header
from .auth import require_api_key
from .backends import ChatMessage, require
from .errors import GatewayError, invalid_field
from .inputs import (
    SPEECH_FORMATS,
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
from .turn import AudioChunk, TextDelta, Turn, TurnDone, TurnTimings

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


def runtime_of(request: Request) -> GatewayRuntime:
    runtime: GatewayRuntime = request.app.state.runtime
    return runtime


async def _text_source(text: str) -> AsyncIterator[str]:
    yield text


async def _llm_source(runtime: GatewayRuntime, messages: list[ChatMessage]) -> AsyncIterator[str]:
    llm = require(runtime.llm, "LLM")
    async for delta in llm.generate(messages, runtime.sampling):
        yield delta


async def _stream_turn(
    runtime: GatewayRuntime,
    endpoint: str,
    build: Callable[[str, TurnTimings], Awaitable[Turn]],
    fmt: OutputFormat,
    *,
    media_type: str,
    header: bytes = b"",
) -> Response:
    """Run a turn behind a session slot; errors before the first audio keep their status."""
    if not runtime.limiter.try_acquire():
        raise GatewayError(
            429, "busy", f"too many sessions (max_sessions={runtime.settings.max_sessions})"
        )
    session = uuid.uuid4().hex
    timings = TurnTimings()
    try:
        turn = await build(session, timings)
        events = turn.events()
        # Nothing is sent before the first audio (these endpoints send audio only), so a turn
        # that fails before it (LLM refused, Redis down) is a 4xx/5xx, not an empty 200.
        first = await anext(events)
        while isinstance(first, TextDelta):
            first = await anext(events)
    except BaseException:
        runtime.limiter.release()
        raise
    if isinstance(first, TurnDone) and first.error is not None:
        runtime.limiter.release()
        raise first.error

    async def body() -> AsyncIterator[bytes]:
        try:
            if header:
                yield header
            item = first
            last_sent: float | None = None
            while True:
                if isinstance(item, AudioChunk):
                    now = time.monotonic()
                    if last_sent is not None:
                        metrics.INTER_CHUNK_GAP.observe(now - last_sent)
                    last_sent = now
                    metrics.AUDIO_SECONDS.inc(item.samples / 24_000)
                    yield encode(item.pcm, fmt)
                elif isinstance(item, TurnDone):
                    break
                item = await anext(events)
        finally:
            await events.aclose()
            runtime.limiter.release()

    metrics.REQUESTS.labels(endpoint, "200").inc()
    return StreamingResponse(body(), media_type=media_type, headers={"X-LLMVoX-Session": session})


def _upstream_stream(
    runtime: GatewayRuntime, endpoint: str, build: Callable[[str, TurnTimings], Awaitable[Turn]]
) -> Awaitable[Response]:
    return _stream_turn(runtime, endpoint, build, "float32", media_type="application/octet-stream")


# -- the original server's endpoints -------------------------------------------------------------


def _llm_turn(
    runtime: GatewayRuntime,
    endpoint: str,
    message: ChatMessage,
    session: str,
    timings: TurnTimings,
) -> Turn:
    messages = runtime.messages([message])
    return runtime.turn(
        session,
        _llm_source(runtime, messages),
        source_is_llm=True,
        endpoint=endpoint,
        timings=timings,
    )


async def _transcribe(
    runtime: GatewayRuntime,
    audio: AudioInput,
    source_language: str,
    target_language: str,
    timings: TurnTimings,
) -> str:
    asr = require(runtime.asr, "ASR")
    require(runtime.llm, "LLM")  # before the ASR's work, which would be wasted without it
    transcript = await asr.recognize(
        audio.pcm16,
        audio.sample_rate,
        language=source_language or runtime.settings.language,
        target_language=target_language,
    )
    timings.mark("asr")
    metrics.ASR_SECONDS.observe((timings.asr or 0.0) - timings.started)
    if not transcript.text:
        raise GatewayError(
            422, "invalid_request_error", "audio_base64: no speech recognised", code="no_speech"
        )
    return transcript.text


@protected.post("/tts")
async def tts(body: TtsRequest, request: Request) -> Response:
    runtime = runtime_of(request)
    text = check_text(body.text, runtime.settings)

    async def build(session: str, timings: TurnTimings) -> Turn:
        if body.verbatim:
            return runtime.turn(
                session, _text_source(text), source_is_llm=False, endpoint="tts", timings=timings
            )
        require(runtime.llm, "LLM")
        return _llm_turn(runtime, "tts", ChatMessage("user", text), session, timings)

    return await _upstream_stream(runtime, "tts", build)


@protected.post("/voicechat")
async def voicechat(body: VoiceChatRequest, request: Request) -> Response:
    runtime = runtime_of(request)
    audio = decode_audio(body.audio_base64, runtime.settings)

    async def build(session: str, timings: TurnTimings) -> Turn:
        text = await _transcribe(
            runtime, audio, body.source_language, body.target_language, timings
        )
        return _llm_turn(runtime, "voicechat", ChatMessage("user", text), session, timings)

    return await _upstream_stream(runtime, "voicechat", build)


@protected.post("/vlmschat")
async def vlmschat(body: VlmsChatRequest, request: Request) -> Response:
    runtime = runtime_of(request)
    audio = decode_audio(body.audio_base64, runtime.settings)
    images = decode_images([body.image_base64], runtime.settings, "image_base64")
    _require_chat_type(runtime, "vlmschat", _IMAGE_CHAT_TYPES)

    async def build(session: str, timings: TurnTimings) -> Turn:
        text = await _transcribe(
            runtime, audio, body.source_language, body.target_language, timings
        )
        message = ChatMessage("user", text, images=images)
        return _llm_turn(runtime, "vlmschat", message, session, timings)

    return await _upstream_stream(runtime, "vlmschat", build)


@protected.post("/multimodalchat")
async def multimodalchat(body: MultimodalChatRequest, request: Request) -> Response:
    runtime = runtime_of(request)
    audio = decode_audio(body.audio_base64, runtime.settings)
    images = decode_images(body.image_list, runtime.settings, "image_list")
    _require_chat_type(runtime, "multimodalchat", ("multimodal",))

    async def build(session: str, timings: TurnTimings) -> Turn:
        require(runtime.llm, "LLM")
        message = ChatMessage("user", MULTIMODAL_PROMPT, images=images, audios=[audio.wav])
        return _llm_turn(runtime, "multimodalchat", message, session, timings)

    return await _upstream_stream(runtime, "multimodalchat", build)


# -- OpenAI-compatible speech --------------------------------------------------------------------


@protected.post("/v1/audio/speech")
async def speech(body: SpeechRequest, request: Request) -> Response:
    runtime = runtime_of(request)
    text = check_text(body.input, runtime.settings, "input")
    if body.response_format not in SPEECH_FORMATS:
        raise invalid_field(
            f"response_format: {body.response_format!r} is not supported; use one of "
            f"{', '.join(SPEECH_FORMATS)}"
        )
    if body.speed != 1.0:
        raise invalid_field("speed: only 1.0 is supported")

    async def build(session: str, timings: TurnTimings) -> Turn:
        return runtime.turn(
            session, _text_source(text), source_is_llm=False, endpoint="speech", timings=timings
        )

    if body.response_format == "wav":
        return await _stream_turn(
            runtime,
            "speech",
            build,
            "pcm16",
            media_type="audio/wav",
            header=streaming_wav_header(),
        )
    return await _stream_turn(runtime, "speech", build, "pcm16", media_type="audio/pcm")


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
