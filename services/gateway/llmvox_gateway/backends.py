"""What a turn talks to: the small interfaces (Protocols) of the ASR, the LLM and the TTS pool,
and the real gRPC clients of the ASR and LLM services (the TTS side is `llmvox_common.tts_client`).

Turns and sessions depend on the Protocols only, so tests drive them with in-memory fakes.
Errors leave the gRPC clients as `GatewayError`; cancelling the awaiting task cancels the call,
which stops the generation on the LLM server (its handler sees the cancellation).
An OpenAI-compatible chat server is the other `LlmClient` (`openai_llm.OpenAiLlm`, chosen by the
`llm_backend` setting in `runtime.llm_client`), with the same errors and cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmvox_common._proto.llmvox.asr.v1 import asr_pb2, asr_pb2_grpc
from llmvox_common._proto.llmvox.llm.v1 import llm_pb2, llm_pb2_grpc
from llmvox_common.constants import DEFAULT_FIRST_CHUNK, DEFAULT_MAX_CHUNK
from llmvox_common.tts_streams import AudioPart

from .errors import from_grpc, unavailable

_MAX_MESSAGE = 64 * 1024 * 1024
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
]
_ROLES = {
    "system": llm_pb2.ROLE_SYSTEM,
    "user": llm_pb2.ROLE_USER,
    "assistant": llm_pb2.ROLE_ASSISTANT,
}


@dataclass
class ChatMessage:
    role: str  # system | user | assistant
    text: str
    images: list[bytes] = field(default_factory=list)
    audios: list[bytes] = field(default_factory=list)  # WAV files


@dataclass
class Sampling:
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None

    def to_proto(self) -> llm_pb2.SamplingParams:
        params = llm_pb2.SamplingParams()
        for name in ("temperature", "top_p", "top_k", "max_tokens"):
            value = getattr(self, name)
            if value is not None:
                setattr(params, name, value)
        return params


@dataclass
class Transcript:
    text: str
    language: str
    audio_seconds: float


# -- interfaces ---------------------------------------------------------------------------------


class Service(Protocol):
    """A backend the readiness check asks about."""

    addr: str

    async def ready(self, check_s: float = 2.0) -> bool: ...

    async def close(self) -> None: ...


class LlmClient(Service, Protocol):
    def generate(
        self, messages: Sequence[ChatMessage], sampling: Sampling
    ) -> AsyncIterator[str]: ...


class TranscriptSource(Protocol):
    """A transcript still to come: `finish` waits for it, `cancel` abandons it (idempotent, also
    after `finish`)."""

    async def finish(self) -> Transcript: ...

    async def cancel(self) -> None: ...


class TranscriptStream(TranscriptSource, Protocol):
    """Streaming recognition: audio is sent while the user speaks."""

    def send(self, pcm16: bytes) -> None: ...


class AsrClient(Service, Protocol):
    async def recognize(
        self, pcm16: bytes, sample_rate: int, *, language: str, target_language: str = ""
    ) -> Transcript: ...

    def stream(
        self, sample_rate: int, *, language: str, on_partial: Callable[[str], object]
    ) -> TranscriptStream: ...


class AudioParts(Protocol):
    """A turn's audio parts in `(seq, part)` order (`TTSClient.parts`)."""

    @property
    def last_id(self) -> str: ...

    @property
    def duplicates_dropped(self) -> int: ...

    def done_after(self, seq: int) -> None: ...

    def close(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[AudioPart]: ...


class TtsJobs(Protocol):
    """The TTS pool as the gateway uses it (`llmvox_common.tts_client.TTSClient`)."""

    async def open_text_stream(
        self,
        session: str,
        seq: int,
        *,
        first_chunk: int = DEFAULT_FIRST_CHUNK,
        max_chunk: int = DEFAULT_MAX_CHUNK,
        deadline_ms: int = 0,
        first_piece: str | None = None,
    ) -> str: ...

    async def append_text(
        self, session: str, seq: int, piece: str, *, done: bool = False
    ) -> str: ...

    async def close_text(self, session: str, seq: int) -> str: ...

    async def cancel(
        self, session: str, ttl_s: int = 60, *, up_to_seq: int | None = None
    ) -> None: ...

    def parts(
        self,
        session: str,
        *,
        last_seq: int | None,
        first_seq: int = 0,
        start_id: str = "0",
        block_ms: int = 500,
        timeout_s: float = 30.0,
    ) -> AudioParts: ...


# -- gRPC clients ---------------------------------------------------------------------------------


class _Backend:
    """One gRPC channel to a service, its health check, and the deadline of its calls."""

    def __init__(self, addr: str, *, timeout_s: float) -> None:
        self.addr = addr
        self._timeout_s = timeout_s
        self._channel = grpc.aio.insecure_channel(addr, options=_CHANNEL_OPTIONS)

    async def ready(self, check_s: float = 2.0) -> bool:
        """Whether the server's standard health service says SERVING."""
        try:
            reply = await health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=check_s
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        await self._channel.close()


class LlmBackend(_Backend):
    def __init__(self, addr: str, *, timeout_s: float) -> None:
        super().__init__(addr, timeout_s=timeout_s)
        self._stub = llm_pb2_grpc.LlmServiceStub(self._channel)

    async def generate(
        self, messages: Sequence[ChatMessage], sampling: Sampling
    ) -> AsyncIterator[str]:
        """The answer's text deltas; leaving the loop early cancels the call."""
        request = llm_pb2.GenerateRequest(
            messages=[
                llm_pb2.Message(
                    role=_ROLES[m.role],
                    text=m.text,
                    images=[llm_pb2.Image(data=data) for data in m.images],
                    audios=[llm_pb2.Audio(data=data) for data in m.audios],
                )
                for m in messages
            ],
            sampling=sampling.to_proto(),
        )
        call = self._stub.Generate(request, timeout=self._timeout_s)
        try:
            async for response in call:
                if response.HasField("delta") and response.delta:
                    yield response.delta
        except grpc.aio.AioRpcError as error:
            raise from_grpc("llm", error) from None
        finally:
            call.cancel()


class AsrStream:
    """One streaming recognition: `send` audio as it arrives, `finish` for the final transcript.
    Partial transcripts go to `on_partial` as the server sends them."""

    def __init__(
        self,
        stub: asr_pb2_grpc.AsrServiceStub,
        config: asr_pb2.RecognitionConfig,
        on_partial: Callable[[str], object],
        timeout_s: float,
    ) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._config = config
        self._on_partial = on_partial
        self._call = stub.StreamingRecognize(self._requests(), timeout=timeout_s)
        self._final: asyncio.Task[Transcript] = asyncio.create_task(self._responses())
        self.started = time.monotonic()

    async def _requests(self) -> AsyncIterator[asr_pb2.StreamingRecognizeRequest]:
        yield asr_pb2.StreamingRecognizeRequest(config=self._config)
        while (chunk := await self._queue.get()) is not None:
            yield asr_pb2.StreamingRecognizeRequest(audio=chunk)

    async def _responses(self) -> Transcript:
        final = Transcript("", self._config.language, 0.0)
        try:
            async for response in self._call:
                transcript = response.transcript
                if response.is_final:
                    final = Transcript(
                        transcript.text.strip(), transcript.language, transcript.audio_seconds
                    )
                elif transcript.text.strip():
                    self._on_partial(transcript.text.strip())
        except grpc.aio.AioRpcError as error:
            raise from_grpc("asr", error) from None
        return final

    def send(self, pcm16: bytes) -> None:
        self._queue.put_nowait(pcm16)

    async def finish(self) -> Transcript:
        self._queue.put_nowait(None)
        return await self._final

    async def cancel(self) -> None:
        self._call.cancel()
        self._final.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._final


class AsrBackend(_Backend):
    def __init__(self, addr: str, *, timeout_s: float) -> None:
        super().__init__(addr, timeout_s=timeout_s)
        self._stub = asr_pb2_grpc.AsrServiceStub(self._channel)

    @staticmethod
    def _config(
        sample_rate: int, language: str, target_language: str, interim: bool
    ) -> asr_pb2.RecognitionConfig:
        # Whisper translates into English only: any other target means "transcribe".
        translate = (
            bool(target_language) and target_language != language and target_language == "en"
        )
        return asr_pb2.RecognitionConfig(
            sample_rate_hz=sample_rate,
            language="" if language in ("", "auto") else language,
            task=asr_pb2.TASK_TRANSLATE if translate else asr_pb2.TASK_TRANSCRIBE,
            interim_results=interim,
        )

    async def recognize(
        self, pcm16: bytes, sample_rate: int, *, language: str, target_language: str = ""
    ) -> Transcript:
        config = self._config(sample_rate, language, target_language, False)
        transcript = await self._recognize(config, pcm16)
        return Transcript(transcript.text.strip(), transcript.language, transcript.audio_seconds)

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
    ) -> asr_pb2.Transcript:
        """The ASR's whole answer for one clip, segments and timings included (the
        OpenAI-compatible transcription endpoints render it)."""
        config = asr_pb2.RecognitionConfig(
            sample_rate_hz=sample_rate,
            language="" if language in ("", "auto") else language,
            task=asr_pb2.TASK_TRANSLATE if translate else asr_pb2.TASK_TRANSCRIBE,
            prompt=prompt,
            word_timestamps=word_timestamps,
        )
        if temperature is not None:
            config.temperature = temperature
        return await self._recognize(config, pcm16)

    async def _recognize(
        self, config: asr_pb2.RecognitionConfig, pcm16: bytes
    ) -> asr_pb2.Transcript:
        """One `Recognize` call on a whole clip; a gRPC failure becomes the gateway's error."""
        request = asr_pb2.RecognizeRequest(config=config, audio=pcm16)
        try:
            reply = await self._stub.Recognize(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as error:
            raise from_grpc("asr", error) from None
        return reply.transcript

    def stream(
        self, sample_rate: int, *, language: str, on_partial: Callable[[str], object]
    ) -> AsrStream:
        return AsrStream(
            self._stub, self._config(sample_rate, language, "", True), on_partial, self._timeout_s
        )


T = TypeVar("T")


def require(backend: T | None, name: str) -> T:
    if backend is None:
        raise unavailable(f"this gateway has no {name} service configured")
    return backend
