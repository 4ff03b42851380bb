"""Request decoding and limits of the gateway (inputs.py), before any backend is called."""

from __future__ import annotations

import base64
import io
import wave

import numpy as np
import pytest
import soundfile

from llmvox_gateway.errors import GatewayError
from llmvox_gateway.inputs import check_text, decode_audio, decode_image, decode_images
from llmvox_gateway.settings import GatewaySettings

pytestmark = pytest.mark.unit

SETTINGS = GatewaySettings(max_audio_seconds=2.0, max_image_bytes=1000, max_images=2)
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def wav_b64(samples: np.ndarray, rate: int = 16_000, channels: int = 1, width: int = 2) -> str:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return base64.b64encode(buffer.getvalue()).decode()


def status_of(call: object) -> tuple[int, str]:
    with pytest.raises(GatewayError) as caught:
        call()  # type: ignore[operator]
    return caught.value.status, caught.value.message


def test_mono_wav_is_passed_through_and_stereo_is_averaged() -> None:
    mono = np.arange(1600, dtype="<i2")
    audio = decode_audio(wav_b64(mono), SETTINGS)
    assert audio.sample_rate == 16_000
    assert audio.pcm16 == mono.tobytes()
    assert audio.seconds == pytest.approx(0.1)
    stereo = np.stack([np.full(800, 1000, "<i2"), np.full(800, 3000, "<i2")], axis=1)
    averaged = np.frombuffer(decode_audio(wav_b64(stereo, channels=2), SETTINGS).pcm16, "<i2")
    assert len(averaged) == 800
    assert np.all(np.abs(averaged - 2000) <= 1)


def test_float32_wav_is_converted_to_pcm16() -> None:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.full(1600, 0.5, np.float32), 24_000, format="WAV", subtype="FLOAT")
    audio = decode_audio(base64.b64encode(buffer.getvalue()).decode(), SETTINGS)
    assert (audio.sample_rate, audio.wav) == (24_000, buffer.getvalue())
    assert set(np.frombuffer(audio.pcm16, "<i2").tolist()) == {16384}


def test_data_urls_are_accepted() -> None:
    data = "data:audio/wav;base64," + wav_b64(np.zeros(160, "<i2"))
    assert decode_audio(data, SETTINGS).seconds == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("data", "status", "needle"),
    [
        ("@@@", 422, "base64"),
        (base64.b64encode(b"RIFF....WAVEjunk").decode(), 422, "WAV"),
        (wav_b64(np.zeros(100, "u1"), width=1), 422, "16-bit"),
        (wav_b64(np.zeros(100, "<i2"), rate=4000), 422, "sample rate"),
        (wav_b64(np.zeros(0, "<i2")), 422, "empty"),
        (wav_b64(np.zeros(16_000 * 3, "<i2")), 413, "limit"),
        ("A" * 2_000_000, 413, "larger"),
    ],
)
def test_bad_audio_is_refused_with_its_reason(data: str, status: int, needle: str) -> None:
    got_status, message = status_of(lambda: decode_audio(data, SETTINGS))
    assert got_status == status
    assert needle in message


def test_images_are_sniffed_and_bounded() -> None:
    assert decode_image(base64.b64encode(PNG).decode(), SETTINGS, "image") == PNG
    webp = b"RIFF\0\0\0\0WEBPVP8 "
    assert decode_image(base64.b64encode(webp).decode(), SETTINGS, "image") == webp
    assert (
        status_of(lambda: decode_image(base64.b64encode(b"%PDF-1.7").decode(), SETTINGS, "i"))[0]
        == 422
    )
    big = base64.b64encode(PNG + b"\0" * 1000).decode()
    assert status_of(lambda: decode_image(big, SETTINGS, "image"))[0] == 413
    three = [base64.b64encode(PNG).decode()] * 3
    status, message = status_of(lambda: decode_images(three, SETTINGS, "image_list"))
    assert (status, "image_list" in message) == (413, True)


def test_text_limits() -> None:
    assert check_text("hello", SETTINGS) == "hello"
    assert status_of(lambda: check_text("   ", SETTINGS))[0] == 422
    status, message = status_of(lambda: check_text("x" * 4001, SETTINGS, "input"))
    assert status == 413
    assert message.startswith("input:")
