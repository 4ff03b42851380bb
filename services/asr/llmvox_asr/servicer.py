"""`llmvox.asr.v1.AsrService` over gRPC: requests checked at the edge, Whisper run on a worker
thread (never on the event loop), one shared model behind a concurrency limit.

A stream keeps at most one decode in flight: while one runs, audio keeps arriving into the
buffer, and the next partial starts only after the previous one has finished.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator

import grpc

from llmvox_common._proto.llmvox.asr.v1 import asr_pb2, asr_pb2_grpc
from llmvox_common.grpc_service import (
    ConcurrencyLimit,
    InvalidArgument,
    ServiceError,
    Unavailable,
    grpc_errors,
)

from . import metrics
from .audio_input import Pcm16Stream, check_clip, pcm16_to_whisper
from .settings import AsrSettings
from .transcriber import DecodeOptions, Task, Transcriber, Transcript, TranscriptionStopped

log = logging.getLogger(__name__)

SERVICE_NAME = asr_pb2.DESCRIPTOR.services_by_name["AsrService"].full_name

_TASKS: dict[int, Task] = {
    asr_pb2.TASK_UNSPECIFIED: "transcribe",
    asr_pb2.TASK_TRANSCRIBE: "transcribe",
    asr_pb2.TASK_TRANSLATE: "translate",
}


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


def transcript_message(transcript: Transcript) -> asr_pb2.Transcript:
    return asr_pb2.Transcript(
        text=transcript.text,
        segments=[
            asr_pb2.Segment(
                text=s.text,
                start_s=s.start_s,
                end_s=s.end_s,
                seek=s.seek,
                tokens=s.tokens,
                temperature=s.temperature,
                avg_logprob=s.avg_logprob,
                compression_ratio=s.compression_ratio,
                no_speech_prob=s.no_speech_prob,
            )
            for s in transcript.segments
        ],
        words=[
            asr_pb2.Word(text=w.text, start_s=w.start_s, end_s=w.end_s, probability=w.probability)
            for w in transcript.words
        ],
        language=transcript.language,
        language_probability=transcript.language_probability,
        audio_seconds=transcript.audio_seconds,
        processing_seconds=transcript.processing_seconds,
    )


class AsrServicer(asr_pb2_grpc.AsrServiceServicer):
    def __init__(self, settings: AsrSettings) -> None:
        self.settings = settings
        self.limit = ConcurrencyLimit(settings.max_concurrency)
        self.transcriber: Transcriber | None = None

    def attach(self, transcriber: Transcriber) -> None:
        """Called once the model is loaded and warmed up; calls before that are UNAVAILABLE."""
        self.transcriber = transcriber

    def _loaded(self) -> Transcriber:
        if self.transcriber is None:
            raise Unavailable("the Whisper model is still loading; retry shortly")
        return self.transcriber

    def _options(
        self, transcriber: Transcriber, config: asr_pb2.RecognitionConfig
    ) -> DecodeOptions:
        task = _TASKS.get(config.task)
        if task is None:
            raise InvalidArgument(
                f"unknown task {config.task}: use TASK_TRANSCRIBE or TASK_TRANSLATE"
            )
        options = transcriber.options(config.language, task, config.target_language)
        temperature = config.temperature if config.HasField("temperature") else None
        if temperature is not None and not 0.0 <= temperature <= 1.0:
            raise InvalidArgument(f"temperature must be between 0 and 1 (got {temperature:g})")
        return dataclasses.replace(
            options,
            prompt=config.prompt.strip(),
            temperature=temperature,
            word_timestamps=config.word_timestamps,
        )

    async def _decode(
        self,
        context: grpc.aio.ServicerContext,
        transcriber: Transcriber,
        pcm: bytes,
        sample_rate_hz: int,
        options: DecodeOptions,
        *,
        vad: bool,
        kind: str,
    ) -> Transcript:
        """Resampling and one Whisper decode on a worker thread, stopped early when the call
        goes away."""
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded("the deadline passed before decoding started")
        deadline = None if remaining is None else time.monotonic() + remaining
        # Set when the awaiting coroutine is cancelled: the thread itself cannot be interrupted,
        # so it checks this between Whisper windows and drops the rest of its work.
        cancelled = threading.Event()

        def should_stop() -> bool:
            return cancelled.is_set() or (deadline is not None and time.monotonic() >= deadline)

        def work() -> Transcript:
            samples = pcm16_to_whisper(pcm, sample_rate_hz)
            return transcriber.transcribe(
                samples, options, vad=vad or self.settings.vad, should_stop=should_stop
            )

        try:
            transcript = await asyncio.to_thread(work)
        except asyncio.CancelledError:
            cancelled.set()
            metrics.DECODES_STOPPED.inc()
            raise
        except TranscriptionStopped:
            metrics.DECODES_STOPPED.inc()
            raise DeadlineExceeded("the deadline passed while decoding") from None
        metrics.observe_decode(kind, transcript.processing_seconds, transcript.audio_seconds)
        return transcript

    @grpc_errors
    async def Recognize(
        self, request: asr_pb2.RecognizeRequest, context: grpc.aio.ServicerContext
    ) -> asr_pb2.RecognizeResponse:
        with metrics.observe_call("Recognize", context):
            transcriber = self._loaded()
            if not request.HasField("config"):
                raise InvalidArgument("config is required (RecognitionConfig with sample_rate_hz)")
            config = request.config
            options = self._options(transcriber, config)
            check_clip(request.audio, config.sample_rate_hz, self.settings.asr_max_audio_length)
            async with self.limit.slot():
                transcript = await self._decode(
                    context,
                    transcriber,
                    request.audio,
                    config.sample_rate_hz,
                    options,
                    vad=config.vad_filter,
                    kind="final",
                )
            return asr_pb2.RecognizeResponse(transcript=transcript_message(transcript))

    @grpc_errors
    async def StreamingRecognize(
        self,
        request_iterator: AsyncIterator[asr_pb2.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        # Responses go out with context.write (not yield) so that a partial can be sent from the
        # decode task while this coroutine keeps reading audio.
        with metrics.observe_call("StreamingRecognize", context):
            async with self.limit.slot():
                await self._stream(request_iterator, context)

    async def _stream(
        self,
        request_iterator: AsyncIterator[asr_pb2.StreamingRecognizeRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        transcriber = self._loaded()
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None:
            raise InvalidArgument("the stream ended before its first message (the config)")
        if first.WhichOneof("request") != "config":
            raise InvalidArgument("the first message must carry config; audio comes after it")
        config = first.config
        options = self._options(transcriber, config)
        audio = Pcm16Stream(config.sample_rate_hz, self.settings.asr_max_audio_length)
        interval = self.settings.interim_interval

        async def send(pcm: bytes, *, final: bool) -> None:
            transcript = await self._decode(
                context,
                transcriber,
                pcm,
                config.sample_rate_hz,
                options,
                vad=config.vad_filter,
                kind="final" if final else "partial",
            )
            await context.write(
                asr_pb2.StreamingRecognizeResponse(
                    is_final=final, transcript=transcript_message(transcript)
                )
            )

        partial: asyncio.Task[None] | None = None
        next_partial_at = interval
        try:
            async for request in requests:
                kind = request.WhichOneof("request")
                if kind == "config":
                    raise InvalidArgument("config may only be sent once, as the first message")
                if kind != "audio":
                    continue
                audio.append(request.audio)
                if partial is not None and partial.done():
                    partial.result()  # surfaces its failure (e.g. the deadline) here
                    partial = None
                if config.interim_results and partial is None and audio.seconds >= next_partial_at:
                    next_partial_at = audio.seconds + interval
                    partial = asyncio.create_task(
                        send(audio.snapshot(), final=False), name="asr-partial"
                    )
            pcm = audio.finish()
            if partial is not None:
                # Its partial goes out before the final; cancelling would not free the CPU
                # sooner (the decode thread finishes its window either way).
                await partial
                partial = None
            await send(pcm, final=True)
        finally:
            if partial is not None:
                partial.cancel()
                await asyncio.wait({partial})
                if not partial.cancelled() and partial.exception() is not None:
                    log.debug("partial decode ended with %r", partial.exception())
