"""Small pure parts of the gateway: output encodings, admission, the outbox's overflow policy,
chunk plan, timings, error mapping, settings and flags."""

from __future__ import annotations

import asyncio
import io
import wave

import grpc
import numpy as np
import pytest

from llmvox_gateway.audio_format import encode, streaming_wav_header
from llmvox_gateway.cli import build_parser, settings_from_args
from llmvox_gateway.errors import from_grpc
from llmvox_gateway.limits import SessionLimiter
from llmvox_gateway.outbox import CloseFrame, Outbox
from llmvox_gateway.settings import GatewaySettings
from llmvox_gateway.turn import ChunkPlan, TurnTimings

pytestmark = pytest.mark.unit


def test_encodings() -> None:
    samples = np.array([0.0, 0.5, -1.0, 2.0], dtype="<f4")
    assert encode(samples.tobytes(), "float32") == samples.tobytes()
    pcm16 = np.frombuffer(encode(samples.tobytes(), "pcm16"), "<i2")
    assert pcm16.tolist() == [0, 16384, -32767, 32767]  # clipped, not wrapped


def test_streaming_wav_header_reads_as_24khz_mono_pcm16() -> None:
    header = streaming_wav_header()
    assert len(header) == 44
    with wave.open(io.BytesIO(header + b"\0\0"), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24000, 1, 2)


def test_session_limiter_refuses_at_the_limit() -> None:
    limiter = SessionLimiter(2)
    assert limiter.try_acquire()
    assert limiter.try_acquire()
    assert not limiter.try_acquire()
    limiter.release()
    assert limiter.try_acquire()
    limiter.release()
    limiter.release()
    with pytest.raises(RuntimeError):
        limiter.release()


def test_outbox_drops_a_client_that_falls_behind() -> None:
    async def scenario() -> None:
        outbox = Outbox(3)
        assert all(outbox.put(f"frame {i}") for i in range(3))
        assert not outbox.overflowed.is_set()
        assert not outbox.put(b"one too many")
        assert outbox.overflowed.is_set()
        assert not outbox.put(CloseFrame(1000, "late"))  # nothing more once overflowed
        assert len(outbox) == 3
        assert await outbox.get() == "frame 0"

    asyncio.run(scenario())


def test_chunk_plan_and_timings() -> None:
    plan = ChunkPlan(10, 160, 1280)
    assert [plan.first_chunk(i) for i in range(3)] == [10, 160, 160]
    clock = iter([1.5, 2.0]).__next__
    timings = TurnTimings(started=1.0)
    timings.mark("first_audio", clock)
    timings.mark("first_audio", clock)  # the first mark stays
    assert timings.as_dict()["first_audio_s"] == 0.5
    assert timings.as_dict()["asr_s"] is None


class _RpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="why")


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 422),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.INTERNAL, 502),
    ],
)
def test_grpc_errors_map_to_http_statuses(code: grpc.StatusCode, status: int) -> None:
    error = from_grpc("llm", _RpcError(code))
    assert error.status == status
    assert error.message == f"llm: {code.name}: why"


def test_flags_env_and_upstream_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMVOX_GATEWAY_MAX_SESSIONS", "7")
    monkeypatch.setenv("LLMVOX_GATEWAY_API_KEYS", "a, b,,c")
    args = build_parser().parse_args(
        ["serve", "--api_port", "6000", "--initial_dump_size_1", "5", "--cors_origins", "*"]
    )
    settings = settings_from_args(args)
    assert settings.api_port == 6000
    assert settings.initial_dump_size_1 == 5
    assert settings.max_sessions == 7  # from the environment
    assert settings.api_keys == ["a", "b", "c"]
    assert settings.cors_origins == ["*"]
    assert GatewaySettings().api_port == 5003  # the original server's port
