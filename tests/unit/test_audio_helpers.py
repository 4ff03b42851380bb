"""PCM16 / WAV helpers shared by the services: the one WAV reader every service uses."""

import io
import re
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile

from llmvox_common.audio import (
    WavError,
    decode_wav,
    decode_wav_pcm16,
    float_to_pcm16,
    pcm16_to_float,
    read_wav,
    read_wav_pcm16,
    wav_bytes,
    write_wav,
)

pytestmark = pytest.mark.unit


def pcm_wav(samples: np.ndarray, rate: int = 16_000, channels: int = 1, width: int = 2) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(samples.tobytes())
    return buffer.getvalue()


def sf_wav(samples: np.ndarray, rate: int, subtype: str, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def test_pcm16_clips_and_round_trips() -> None:
    x = np.array([0.0, 0.5, -0.5, 1.5, -2.0], dtype=np.float32)
    pcm = float_to_pcm16(x)
    assert pcm.dtype == np.dtype("<i2")
    assert pcm.tolist() == [0, 16384, -16384, 32767, -32767]
    back = pcm16_to_float(pcm.tobytes())
    np.testing.assert_allclose(back[:3], x[:3], atol=1e-4)


def test_wav_file_round_trip(tmp_path: Path) -> None:
    t = np.arange(2400) / 24000
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = write_wav(tmp_path / "sub" / "a.wav", x)
    y, rate = read_wav(path)
    assert rate == 24000
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x, atol=1e-4)
    assert wav_bytes(x)[:4] == b"RIFF"
    pcm, pcm_rate = read_wav_pcm16(path)
    assert (pcm, pcm_rate) == (float_to_pcm16(x).tobytes(), 24000)


def test_mono_pcm16_keeps_its_exact_samples() -> None:
    # Full scale included: a float round trip would turn 32767 into 32766.
    samples = np.array([-32768, -1, 0, 1, 12345, 32767], dtype="<i2")
    assert decode_wav_pcm16(pcm_wav(samples, 8_000)) == (samples.tobytes(), 8_000)
    np.testing.assert_array_equal(decode_wav(pcm_wav(samples))[0], samples / 32768.0)


def test_channels_are_averaged() -> None:
    stereo = np.stack([np.full(80, 1000, "<i2"), np.full(80, 3000, "<i2")], axis=1)
    data = pcm_wav(stereo, 44_100, channels=2)
    samples, rate = decode_wav(data)
    assert (samples.shape, rate) == ((80,), 44_100)
    np.testing.assert_allclose(samples, 2000 / 32768)
    pcm, _ = decode_wav_pcm16(data)
    assert set(np.frombuffer(pcm, "<i2").tolist()) == {2000}


def test_float32_wav_is_read() -> None:
    stereo = np.stack([np.full(50, 0.5), np.full(50, -0.25)], axis=1).astype(np.float32)
    samples, rate = decode_wav(sf_wav(stereo, 22_050, "FLOAT"))
    assert (samples.dtype, samples.shape, rate) == (np.float32, (50,), 22_050)
    np.testing.assert_allclose(samples, 0.125)
    pcm, _ = decode_wav_pcm16(sf_wav(np.full(10, 2.0, np.float32), 16_000, "FLOAT"))
    assert set(np.frombuffer(pcm, "<i2").tolist()) == {32767}  # clipped, not wrapped


def test_an_empty_wav_has_no_samples() -> None:
    assert decode_wav_pcm16(pcm_wav(np.zeros(0, "<i2"))) == (b"", 16_000)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "not a WAV file"),
        (b"RIFF....WAVEjunk", "not a WAV file"),
        (sf_wav(np.zeros(10, np.float32), 16_000, "PCM_16", fmt="FLAC"), "not a WAV file (FLAC"),
        (pcm_wav(np.zeros(10, "u1"), width=1), "8 bit PCM WAV is not supported; 16-bit PCM"),
        (sf_wav(np.zeros(10, np.float32), 16_000, "PCM_24"), "24 bit PCM WAV is not supported"),
    ],
    ids=["empty", "junk", "flac", "8-bit", "24-bit"],
)
def test_other_input_is_a_wav_error_with_its_reason(data: bytes, needle: str) -> None:
    with pytest.raises(WavError, match=re.escape(needle)) as caught:
        decode_wav(data)
    assert isinstance(caught.value, ValueError)  # callers that catch ValueError keep working
    with pytest.raises(WavError, match=re.escape(needle)):
        decode_wav_pcm16(data)


def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_wav(tmp_path / "absent.wav")
