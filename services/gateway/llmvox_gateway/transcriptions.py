"""OpenAI-compatible speech to text: `POST /v1/audio/transcriptions` and
`POST /v1/audio/translations`, multipart forms as OpenAI's, answered by the ASR service.

The gateway is the platform's only HTTP front door (keys, limits, metrics, CORS and the error
shape live here), and it already holds the ASR's gRPC client; so these endpoints live here too
rather than in an HTTP server of the ASR's own. The uploaded file may be anything FFmpeg decodes
(WAV, MP3, Ogg/Opus, FLAC, M4A, WebM, ...): PyAV decodes it and resamples it to 16 kHz mono PCM16
on a worker thread, one `Recognize` call transcribes it (segments and word timings come back in
the ASR's `Transcript`), and the answer is rendered in the asked `response_format`.
"""

from __future__ import annotations

import asyncio
import io
import math
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

import av
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from llmvox_common._proto.llmvox.asr.v1 import asr_pb2

from . import metrics
from .auth import require_api_key
from .backends import require
from .errors import GatewayError, invalid_field, too_large
from .runtime import GatewayRuntime

router = APIRouter(dependencies=[Depends(require_api_key)])

RESPONSE_FORMATS: Final = ("json", "text", "verbose_json", "srt", "vtt")
GRANULARITIES: Final = ("word", "segment")
# OpenAI's own upload limit; the audio's duration is bounded by `max_audio_seconds` as well.
MAX_FILE_BYTES: Final = 25 * 1024 * 1024
ASR_RATE: Final = 16_000  # Whisper's rate: the ASR service then has nothing to resample


@runtime_checkable
class ClipTranscriber(Protocol):
    """The ASR call these endpoints need (`backends.AsrBackend.transcribe_clip`)."""

    async def transcribe_clip(
        self,
        pcm16: bytes,
        sample_rate: int,
        *,
        language: str,
        translate: bool,
        prompt: str = "",
        temperature: float | None = None,
        word_timestamps: bool = False,
    ) -> asr_pb2.Transcript: ...


def bad_file(message: str) -> GatewayError:
    # 400 as OpenAI answers a file it cannot read; a bad field is a 422.
    return GatewayError(400, "invalid_request_error", f"file: {message}", code="invalid_file")


@dataclass(frozen=True)
class TranscriptionForm:
    file: bytes
    filename: str
    language: str
    prompt: str
    response_format: str
    temperature: float | None
    granularities: tuple[str, ...]


def _text_field(form: Any, name: str) -> str:
    value = form.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise invalid_field(f"{name}: expected a text field, got a file")
    return value.strip()


async def read_form(request: Request, *, translation: bool) -> TranscriptionForm:
    """The multipart form, checked: every field as OpenAI names it, the file within the limit."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise GatewayError(
            400, "invalid_request_error", "expected a multipart/form-data body with a `file`"
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FILE_BYTES + 64 * 1024:
        raise too_large(f"file: larger than {MAX_FILE_BYTES} bytes")
    try:
        form = await request.form(max_files=1, max_fields=32)
    except HTTPException as error:  # Starlette's parser: a malformed multipart body
        raise GatewayError(400, "invalid_request_error", f"bad form: {error.detail}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise invalid_field("file: required (the audio file, as a multipart file field)")
        data = await upload.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise too_large(f"file: larger than {MAX_FILE_BYTES} bytes")
        response_format = _text_field(form, "response_format") or "json"
        if response_format not in RESPONSE_FORMATS:
            raise invalid_field(
                f"response_format: {response_format!r} is not supported; use one of "
                f"{', '.join(RESPONSE_FORMATS)}"
            )
        temperature: float | None = None
        if raw := _text_field(form, "temperature"):
            try:
                temperature = float(raw)
            except ValueError:
                raise invalid_field(f"temperature: {raw!r} is not a number") from None
            if not 0.0 <= temperature <= 1.0:
                raise invalid_field(f"temperature: {temperature:g} is outside 0..1")
        granularities = tuple(
            str(g).strip()
            for g in form.getlist("timestamp_granularities[]")
            + form.getlist("timestamp_granularities")
        )
        if unknown := [g for g in granularities if g not in GRANULARITIES]:
            raise invalid_field(f"timestamp_granularities: unknown {unknown}; use word, segment")
        if granularities and response_format != "verbose_json":
            raise invalid_field("timestamp_granularities: needs response_format verbose_json")
        if _text_field(form, "stream").lower() == "true":
            raise invalid_field("stream: streamed transcription is not supported")
        return TranscriptionForm(
            file=data,
            filename=upload.filename or "",
            # A translation names no language (OpenAI's has no such field): detected.
            language="" if translation else _text_field(form, "language").lower(),
            prompt=_text_field(form, "prompt"),
            response_format=response_format,
            temperature=temperature,
            granularities=granularities,
        )
    finally:
        await form.close()


def decode_to_pcm16(data: bytes, max_seconds: float) -> bytes:
    """Any audio file FFmpeg reads → PCM16 LE mono at 16 kHz. Blocking (a worker thread's job).
    Stops as soon as the audio runs past `max_seconds`, so a small file that decodes to hours of
    audio costs no more than the limit."""
    limit = int(max_seconds * ASR_RATE)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=ASR_RATE)
    pieces: list[bytes] = []
    samples = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise bad_file("no audio stream in the file")
            stream = container.streams.audio[0]
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    pieces.append(bytes(out.planes[0])[: out.samples * 2])
                    samples += out.samples
                if samples > limit:
                    raise too_large(f"file: more than {max_seconds:g} s of audio")
            for out in resampler.resample(None):
                pieces.append(bytes(out.planes[0])[: out.samples * 2])
                samples += out.samples
    except av.FFmpegError as error:
        raise bad_file(f"not an audio file FFmpeg can decode ({error.strerror})") from None
    if samples == 0:
        raise bad_file("the audio is empty")
    if samples > limit:
        raise too_large(f"file: more than {max_seconds:g} s of audio")
    return b"".join(pieces)


# -- renderings --------------------------------------------------------------------------------


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(segments: list[asr_pb2.Segment]) -> str:
    cues = [
        f"{i}\n{_timestamp(s.start_s, ',')} --> {_timestamp(s.end_s, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate((s for s in segments if s.text.strip()), start=1)
    ]
    return "\n".join(cues)


def to_vtt(segments: list[asr_pb2.Segment]) -> str:
    cues = [
        f"{_timestamp(s.start_s, '.')} --> {_timestamp(s.end_s, '.')}\n{s.text.strip()}\n"
        for s in segments
        if s.text.strip()
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


def verbose_json(
    transcript: asr_pb2.Transcript, *, task: str, granularities: tuple[str, ...]
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "task": task,
        "language": transcript.language,
        "duration": round(transcript.audio_seconds, 3),
        "text": transcript.text.strip(),
    }
    # OpenAI: segments by default; only words when only words were asked for.
    if not granularities or "segment" in granularities:
        body["segments"] = [
            {
                "id": i,
                "seek": s.seek,
                "start": round(s.start_s, 3),
                "end": round(s.end_s, 3),
                "text": s.text,
                "tokens": list(s.tokens),
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
            }
            for i, s in enumerate(transcript.segments)
        ]
    if "word" in granularities:
        body["words"] = [
            {"word": w.text, "start": round(w.start_s, 3), "end": round(w.end_s, 3)}
            for w in transcript.words
        ]
    body["usage"] = {"type": "duration", "seconds": math.ceil(transcript.audio_seconds)}
    return body


def render(transcript: asr_pb2.Transcript, form: TranscriptionForm, *, task: str) -> Response:
    text = transcript.text.strip()
    match form.response_format:
        case "text":
            return PlainTextResponse(text + "\n")
        case "srt":
            return PlainTextResponse(to_srt(list(transcript.segments)))
        case "vtt":
            return PlainTextResponse(to_vtt(list(transcript.segments)), media_type="text/vtt")
        case "verbose_json":
            return JSONResponse(
                verbose_json(transcript, task=task, granularities=form.granularities)
            )
        case _:
            usage = {"type": "duration", "seconds": math.ceil(transcript.audio_seconds)}
            return JSONResponse({"text": text, "usage": usage})


# -- the endpoints -----------------------------------------------------------------------------


def _runtime(request: Request) -> GatewayRuntime:
    runtime: GatewayRuntime = request.app.state.runtime
    return runtime


async def _transcribe(request: Request, *, translation: bool) -> Response:
    runtime = _runtime(request)
    endpoint = "translations" if translation else "transcriptions"
    asr = require(runtime.asr, "ASR")  # 503 before the upload is even read
    if not isinstance(asr, ClipTranscriber):
        raise GatewayError(501, "unsupported", "this gateway's ASR client cannot transcribe files")
    form = await read_form(request, translation=translation)
    # A session slot, as any request that makes a backend work: the decode holds the audio.
    if not runtime.limiter.try_acquire():
        raise GatewayError(
            429, "busy", f"too many sessions (max_sessions={runtime.settings.max_sessions})"
        )
    try:
        pcm16 = await asyncio.to_thread(
            decode_to_pcm16, form.file, runtime.settings.max_audio_seconds
        )
        transcript = await asr.transcribe_clip(
            pcm16,
            ASR_RATE,
            language=form.language or ("" if translation else runtime.settings.language),
            translate=translation,
            prompt=form.prompt,
            temperature=form.temperature,
            word_timestamps="word" in form.granularities,
        )
    finally:
        runtime.limiter.release()
    metrics.REQUESTS.labels(endpoint, "200").inc()
    return render(transcript, form, task="translate" if translation else "transcribe")


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request) -> Response:
    return await _transcribe(request, translation=False)


@router.post("/v1/audio/translations")
async def translations(request: Request) -> Response:
    return await _transcribe(request, translation=True)
