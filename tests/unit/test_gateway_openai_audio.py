"""OpenAI's audio endpoints on the gateway without servers: the speech encoders (every
`response_format`, `speed`) decoded back with PyAV, and `/v1/audio/speech`, `/transcriptions` and
`/translations` called by the official `openai` client through the app in-process (Starlette's
TestClient is an httpx client), over the in-memory fakes of gateway_fakes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
from collections.abc import Iterator
from typing import Any

import av
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

from llmvox_common._proto.llmvox.asr.v1 import asr_pb2
from llmvox_gateway.app import create_app
from llmvox_gateway.errors import GatewayError
from llmvox_gateway.settings import GatewaySettings
from llmvox_gateway.speech_encoding import (
    CONTENT_TYPES,
    SPEECH_FORMATS,
    SpeechStream,
    check_speed,
    tempo_stages,
)
from llmvox_gateway.transcriptions import decode_to_pcm16, to_srt, to_vtt

from .gateway_fakes import FakeAsr, FakeTts, fake_runtime

pytestmark = pytest.mark.unit

RATE = 24_000
# Lossy codecs add their encoder delay and pad the last frame (MP3 at 24 kHz: 576-sample frames,
# AAC: 1024 samples of priming plus the last frame's padding); Ogg Opus and FLAC record the
# exact length. atempo's output is within about 2 % of duration / speed.
PADDING_S = {"mp3": 3 * 576 / RATE, "aac": 2 * 1024 / RATE}


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def decoded(data: bytes, fmt: str) -> tuple[int, float]:
    """(sample rate, seconds) of a response body, as a player would decode it."""
    if fmt == "pcm":
        return RATE, len(data) / 2 / RATE
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return stream.rate, samples / stream.rate


def encode_parts(fmt: str, speed: float, parts: list[np.ndarray]) -> list[bytes]:
    async def run() -> list[bytes]:
        encoder = SpeechStream(fmt, speed)
        try:
            out = [encoder.header()]
            for part in parts:
                out.append(await encoder.feed(part.tobytes()))
            out.append(await encoder.finish())
            return out
        finally:
            encoder.close()

    return asyncio.run(run())


# -- encoders ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", SPEECH_FORMATS)
@pytest.mark.parametrize("speed", [1.0, 0.25, 1.5, 4.0])
def test_each_format_decodes_to_the_expected_duration_and_rate(fmt: str, speed: float) -> None:
    audio = tone(2.0)
    chunks = encode_parts(fmt, speed, np.array_split(audio, 10))
    rate, seconds = decoded(b"".join(chunks), fmt)
    assert rate == (48_000 if fmt == "opus" else RATE)
    expected = 2.0 / speed
    assert seconds == pytest.approx(expected, abs=0.03 * expected + PADDING_S.get(fmt, 0.0))
    # Streamed: bytes leave with the parts, not all at the end.
    assert sum(1 for chunk in chunks[:-1] if chunk) >= 4


def test_pcm_and_wav_at_speed_one_are_the_samples_themselves() -> None:
    audio = tone(0.5)
    pcm = b"".join(encode_parts("pcm", 1.0, [audio]))
    wav = b"".join(encode_parts("wav", 1.0, [audio]))
    assert wav[:4] == b"RIFF"
    assert wav[44:] == pcm
    np.testing.assert_allclose(np.frombuffer(pcm, "<i2") / 32767.0, audio, atol=1e-4)


def test_speed_keeps_the_pitch() -> None:
    chunks = encode_parts("pcm", 2.0, [tone(2.0)])
    samples = np.frombuffer(b"".join(chunks), "<i2").astype(np.float32)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    peak_hz = np.argmax(spectrum) * RATE / samples.size
    assert peak_hz == pytest.approx(440, abs=10)


@pytest.mark.parametrize(
    ("speed", "stages"),
    [(1.0, [1.0]), (0.25, [0.5, 0.5]), (0.3, [0.5, 0.6]), (3.0, [2.0, 1.5]), (4.0, [2.0, 2.0])],
)
def test_tempo_stages_stay_within_atempo_range(speed: float, stages: list[float]) -> None:
    assert tempo_stages(speed) == pytest.approx(stages)
    assert math.prod(tempo_stages(speed)) == pytest.approx(speed)


def test_speed_bounds() -> None:
    assert check_speed(0.25) is None
    assert check_speed(4.0) is None
    assert "0.25..4" in str(check_speed(0.2))
    assert "0.25..4" in str(check_speed(4.5))


# -- the app in-process ----------------------------------------------------------------------------


class FakeClipAsr(FakeAsr):
    """FakeAsr that also answers whole files, with two timed segments and word timings."""

    def __init__(self) -> None:
        super().__init__("Hello there. General Kenobi.")
        self.calls: list[dict[str, Any]] = []

    async def transcribe_clip(
        self, pcm16: bytes, sample_rate: int, **options: Any
    ) -> asr_pb2.Transcript:
        self.calls.append({"samples": len(pcm16) // 2, "sample_rate": sample_rate, **options})
        return asr_pb2.Transcript(
            text="Hello there. General Kenobi.",
            segments=[
                asr_pb2.Segment(text="Hello there.", start_s=0.0, end_s=1.25, tokens=[1, 2]),
                asr_pb2.Segment(text="General Kenobi.", start_s=1.25, end_s=3661.5),
            ],
            words=[asr_pb2.Word(text="Hello", start_s=0.0, end_s=0.5)],
            language="en",
            audio_seconds=len(pcm16) / 2 / sample_rate,
        )


@contextlib.contextmanager
def app_with(**fakes: Any) -> Iterator[TestClient]:
    app = create_app(GatewaySettings())
    # The runtime is the fakes', not one connected to Redis and gRPC: the client is not entered
    # as a context manager, which would run the app's lifespan and make the real one.
    app.state.runtime = fake_runtime(**fakes)
    http = TestClient(app, raise_server_exceptions=True)
    try:
        yield http
    finally:
        http.close()


@pytest.fixture
def fake_asr() -> FakeClipAsr:
    return FakeClipAsr()


@pytest.fixture
def client(fake_asr: FakeClipAsr) -> Iterator[openai.OpenAI]:
    with app_with(asr=fake_asr, tts=FakeTts(parts_per_job=3, samples=2400)) as http:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)


def wav_file(seconds: float = 1.0, rate: int = 22_050) -> bytes:
    """A short tone as a WAV file, written by PyAV."""
    out = io.BytesIO()
    with av.open(out, mode="w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        t = np.arange(int(seconds * rate)) / rate
        samples = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


@pytest.mark.parametrize("fmt", SPEECH_FORMATS)
def test_openai_client_gets_each_speech_format(client: openai.OpenAI, fmt: str) -> None:
    response = client.audio.speech.create(
        model="llmvox",
        voice="default",
        input="One. Two.",
        response_format=fmt,  # type: ignore[arg-type]
    )
    assert response.response.headers["content-type"] == CONTENT_TYPES[fmt]
    # Two sentences, three parts of 2400 samples each: 0.6 s.
    _, seconds = decoded(response.content, fmt)
    assert seconds == pytest.approx(0.6, abs=0.02 + PADDING_S.get(fmt, 0.0))


def test_openai_client_speed_and_bad_values(client: openai.OpenAI) -> None:
    fast = client.audio.speech.create(
        model="llmvox", voice="default", input="One. Two.", response_format="flac", speed=2.0
    )
    assert decoded(fast.content, "flac")[1] == pytest.approx(0.3, abs=0.02)
    with pytest.raises(openai.UnprocessableEntityError, match="speed"):
        client.audio.speech.create(model="llmvox", voice="default", input="Hi.", speed=4.5)
    with pytest.raises(openai.UnprocessableEntityError, match="response_format"):
        client.audio.speech.create(
            model="llmvox",
            voice="default",
            input="Hi.",
            response_format="ogg",  # type: ignore[arg-type]
        )


def test_transcription_formats(client: openai.OpenAI, fake_asr: FakeClipAsr) -> None:
    audio = ("tone.wav", wav_file(1.0, 22_050), "audio/wav")
    plain = client.audio.transcriptions.create(model="whisper-1", file=audio)
    assert plain.text == "Hello there. General Kenobi."
    # Decoded and resampled to 16 kHz mono in the gateway: 1 s of 22.05 kHz is 16 000 samples.
    assert fake_asr.calls[-1]["sample_rate"] == 16_000
    assert fake_asr.calls[-1]["samples"] == pytest.approx(16_000, abs=32)
    assert fake_asr.calls[-1]["translate"] is False
    assert fake_asr.calls[-1]["language"] == "en"  # the gateway's default language

    text = client.audio.transcriptions.create(
        model="whisper-1", file=audio, response_format="text", language="en", prompt="Kenobi"
    )
    assert text.strip() == "Hello there. General Kenobi."
    assert fake_asr.calls[-1]["prompt"] == "Kenobi"

    srt = client.audio.transcriptions.create(model="whisper-1", file=audio, response_format="srt")
    assert srt.splitlines()[:4] == ["1", "00:00:00,000 --> 00:00:01,250", "Hello there.", ""]
    assert "2\n00:00:01,250 --> 01:01:01,500\nGeneral Kenobi.\n" in srt

    vtt = client.audio.transcriptions.create(model="whisper-1", file=audio, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.250\nHello there.\n")

    verbose = client.audio.transcriptions.create(
        model="whisper-1",
        file=audio,
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
        temperature=0.2,
    )
    assert fake_asr.calls[-1]["word_timestamps"] is True
    assert fake_asr.calls[-1]["temperature"] == pytest.approx(0.2)
    assert verbose.language == "en"
    assert verbose.duration == pytest.approx(1.0, abs=0.01)
    assert verbose.segments is not None
    assert [(s.id, s.start, s.end) for s in verbose.segments] == [
        (0, 0.0, 1.25),
        (1, 1.25, 3661.5),
    ]
    assert verbose.segments[0].tokens == [1, 2]
    assert verbose.words is not None
    assert verbose.words[0].word == "Hello"


# The SDK marks its translations resource deprecated; the endpoint is still OpenAI's.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_translation_asks_the_asr_to_translate(
    client: openai.OpenAI, fake_asr: FakeClipAsr
) -> None:
    result = client.audio.translations.create(
        model="whisper-1", file=("tone.wav", wav_file(0.5), "audio/wav")
    )
    assert result.text == "Hello there. General Kenobi."
    assert fake_asr.calls[-1]["translate"] is True
    assert fake_asr.calls[-1]["language"] == ""  # detected: a translation names no language


def test_bad_uploads_are_clear_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="FFmpeg can decode") as caught:
        client.audio.transcriptions.create(
            model="whisper-1", file=("notes.txt", b"this is not audio at all", "text/plain")
        )
    assert caught.value.body["code"] == "invalid_file"  # type: ignore[index]
    with pytest.raises(openai.UnprocessableEntityError, match="verbose_json"):
        client.audio.transcriptions.create(
            model="whisper-1",
            file=("tone.wav", wav_file(0.2), "audio/wav"),
            timestamp_granularities=["word"],
        )
    with pytest.raises(openai.UnprocessableEntityError, match="response_format"):
        client.audio.transcriptions.create(
            model="whisper-1",
            file=("tone.wav", wav_file(0.2), "audio/wav"),
            response_format="xml",  # type: ignore[arg-type]
        )


def test_missing_file_and_non_multipart_bodies() -> None:
    with app_with(asr=FakeClipAsr()) as http:
        # A multipart form with its text fields but no file part.
        missing = http.post("/v1/audio/transcriptions", files={"model": (None, "whisper-1")})
        assert missing.status_code == 422
        assert "file" in missing.json()["error"]["message"]
        as_json = http.post("/v1/audio/transcriptions", json={"file": "x"})
        assert as_json.status_code == 400
        assert "multipart" in as_json.json()["error"]["message"]


def test_no_asr_configured_is_a_503() -> None:
    with app_with() as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=http)
        with pytest.raises(openai.InternalServerError) as caught:
            client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav_file(0.2)))
    assert caught.value.status_code == 503
    assert "no ASR service" in str(caught.value)


def test_decode_limit_and_subtitle_rendering() -> None:
    with pytest.raises(GatewayError, match=r"more than 0\.5 s") as caught:
        decode_to_pcm16(wav_file(1.0), 0.5)
    assert caught.value.status == 413
    segment = asr_pb2.Segment(text=" Hi. ", start_s=0.0004, end_s=59.9996)
    assert to_srt([segment]) == "1\n00:00:00,000 --> 00:01:00,000\nHi.\n"
    assert to_vtt([segment]) == "WEBVTT\n\n00:00:00.000 --> 00:01:00.000\nHi.\n"
