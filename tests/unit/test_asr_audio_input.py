"""ASR audio input: PCM16 validation and decoding, resampling to Whisper's 16 kHz, and the limits
with the messages clients see."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from llmvox_asr.audio_input import (
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    WHISPER_SAMPLE_RATE,
    Pcm16Stream,
    check_clip,
    check_sample_rate,
    decode_pcm16,
    pcm16_to_whisper,
    resample_to_whisper,
)
from llmvox_common.audio import float_to_pcm16
from llmvox_common.grpc_service import InvalidArgument

pytestmark = pytest.mark.unit

TONE_HZ = 1000.0


def tone(sample_rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


def pcm(samples: np.ndarray) -> bytes:
    return float_to_pcm16(samples).tobytes()


def clip_to_whisper(data: bytes, sample_rate_hz: int, max_seconds: float) -> np.ndarray:
    """What the servicer does with a unary call's audio: check it, then resample it."""
    check_clip(data, sample_rate_hz, max_seconds)
    return pcm16_to_whisper(data, sample_rate_hz)


def peak_frequency(samples: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / sample_rate)[np.argmax(spectrum)])


def test_decode_pcm16_reads_little_endian_int16() -> None:
    data = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()
    np.testing.assert_allclose(decode_pcm16(data), [0.0, 0.5, -1.0, 32767 / 32768])
    assert decode_pcm16(data).dtype == np.float32


def test_odd_byte_count_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match=r"odd number of bytes \(3\)") as caught:
        decode_pcm16(b"\x00\x01\x02")
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("rate", [MIN_SAMPLE_RATE, 16_000, 22_050, MAX_SAMPLE_RATE])
def test_supported_sample_rates_pass(rate: int) -> None:
    check_sample_rate(rate)


@pytest.mark.parametrize("rate", [0, -16_000, MIN_SAMPLE_RATE - 1, MAX_SAMPLE_RATE + 1, 96_000])
def test_unsupported_sample_rate_is_rejected_with_the_range(rate: int) -> None:
    with pytest.raises(InvalidArgument, match=rf"between 8000 and 48000 Hz \(got {rate}\)"):
        check_sample_rate(rate)


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
def test_resampled_tone_keeps_its_frequency_length_and_level(rate: int) -> None:
    source = tone(rate)
    resampled = resample_to_whisper(decode_pcm16(pcm(source)), rate)
    assert resampled.dtype == np.float32
    assert abs(len(resampled) - WHISPER_SAMPLE_RATE) <= 1  # 1 s in, 1 s out
    assert peak_frequency(resampled, WHISPER_SAMPLE_RATE) == pytest.approx(TONE_HZ, abs=2.0)
    # Away from the filter's start-up edges, the level is unchanged (RMS of a 0.5 sine).
    middle = resampled[1000:-1000]
    assert float(np.sqrt(np.mean(middle**2))) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_16khz_audio_is_not_touched() -> None:
    samples = decode_pcm16(pcm(tone(WHISPER_SAMPLE_RATE)))
    np.testing.assert_array_equal(resample_to_whisper(samples, WHISPER_SAMPLE_RATE), samples)


def test_clip_is_decoded_and_resampled() -> None:
    out = clip_to_whisper(pcm(tone(48_000, seconds=2.0)), 48_000, max_seconds=30)
    assert abs(len(out) - 2 * WHISPER_SAMPLE_RATE) <= 1


def test_empty_clip_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="no audio"):
        clip_to_whisper(b"", 16_000, max_seconds=30)


def test_clip_over_the_length_limit_names_the_limit() -> None:
    message = r"longer than the limit of 2 s \(got at least 3\.0 s"
    with pytest.raises(InvalidArgument, match=message):
        clip_to_whisper(pcm(tone(8_000, seconds=3.0)), 8_000, max_seconds=2)
    # Exactly at the limit is fine.
    clip_to_whisper(pcm(tone(8_000, seconds=2.0)), 8_000, max_seconds=2)


def test_clip_checks_the_rate_before_anything_else() -> None:
    with pytest.raises(InvalidArgument, match="sample_rate_hz"):
        clip_to_whisper(b"", 4_000, max_seconds=30)


def test_stream_equals_the_clip_even_when_chunks_split_samples() -> None:
    data = pcm(tone(22_050, seconds=1.5))
    stream = Pcm16Stream(22_050, max_seconds=30)
    for start in range(0, len(data), 1001):  # odd-sized chunks: samples cut in half
        stream.append(data[start : start + 1001])
    assert stream.seconds == pytest.approx(1.5, abs=1e-4)
    assert stream.finish() == data
    np.testing.assert_array_equal(pcm16_to_whisper(data, 22_050), clip_to_whisper(data, 22_050, 30))


def test_stream_snapshot_drops_a_trailing_half_sample() -> None:
    stream = Pcm16Stream(16_000, max_seconds=30)
    whole = pcm(tone(16_000, seconds=0.5))
    stream.append(whole + b"\x01")
    assert stream.snapshot() == whole


def test_stream_with_an_odd_total_fails_at_the_end() -> None:
    stream = Pcm16Stream(16_000, max_seconds=30)
    stream.append(b"\x00\x00\x00")
    with pytest.raises(InvalidArgument, match=r"odd number of bytes \(3\)"):
        stream.finish()


def test_stream_without_audio_fails_at_the_end() -> None:
    with pytest.raises(InvalidArgument, match="without audio"):
        Pcm16Stream(16_000, max_seconds=30).finish()


def test_stream_over_the_limit_fails_as_soon_as_it_is_crossed() -> None:
    stream = Pcm16Stream(8_000, max_seconds=1.0)
    stream.append(pcm(tone(8_000, seconds=1.0)))
    with pytest.raises(InvalidArgument, match="longer than the limit of 1 s"):
        stream.append(pcm(tone(8_000, seconds=0.1)))


def test_stream_rejects_an_unsupported_rate_up_front() -> None:
    with pytest.raises(InvalidArgument, match=r"\(got 96000\)"):
        Pcm16Stream(96_000, max_seconds=30)
