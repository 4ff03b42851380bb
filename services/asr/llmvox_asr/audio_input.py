"""Audio as clients send it (PCM16 little-endian mono at 8..48 kHz) turned into what Whisper
reads (float32 at 16 kHz), with the limits checked on the way.

Pure functions and one small buffer class: no I/O, no model. Bad input raises `InvalidArgument`
with a message meant for the client (the gRPC layer maps it to INVALID_ARGUMENT).
"""

from __future__ import annotations

import numpy as np
import soxr

from llmvox_common.audio import pcm16_to_float
from llmvox_common.grpc_service import InvalidArgument

WHISPER_SAMPLE_RATE = 16_000
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 48_000
BYTES_PER_SAMPLE = 2


def check_sample_rate(sample_rate_hz: int) -> None:
    if not MIN_SAMPLE_RATE <= sample_rate_hz <= MAX_SAMPLE_RATE:
        raise InvalidArgument(
            f"sample_rate_hz must be between {MIN_SAMPLE_RATE} and {MAX_SAMPLE_RATE} Hz "
            f"(got {sample_rate_hz})"
        )


def _too_long(seconds: float, max_seconds: float) -> InvalidArgument:
    return InvalidArgument(
        f"audio is longer than the limit of {max_seconds:g} s (got at least {seconds:.1f} s; "
        "the server's asr_max_audio_length)"
    )


def check_whole_samples(n_bytes: int) -> None:
    if n_bytes % BYTES_PER_SAMPLE:
        raise InvalidArgument(
            f"audio has an odd number of bytes ({n_bytes}): PCM16 takes 2 bytes per sample"
        )


def decode_pcm16(data: bytes) -> np.ndarray:
    """PCM16 LE bytes → float32 in [-1, 1)."""
    check_whole_samples(len(data))
    return pcm16_to_float(data)


def resample_to_whisper(samples: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """float32 mono at `sample_rate_hz` → float32 mono at 16 kHz (soxr, high quality)."""
    samples = np.asarray(samples, dtype=np.float32)
    if sample_rate_hz == WHISPER_SAMPLE_RATE or samples.size == 0:
        return samples
    return soxr.resample(samples, sample_rate_hz, WHISPER_SAMPLE_RATE, quality="HQ").astype(
        np.float32, copy=False
    )


def pcm16_to_whisper(data: bytes, sample_rate_hz: int) -> np.ndarray:
    """PCM16 bytes at `sample_rate_hz` → float32 at 16 kHz (the CPU-heavy part: the server runs
    it on a worker thread)."""
    return resample_to_whisper(decode_pcm16(data), sample_rate_hz)


def check_clip(data: bytes, sample_rate_hz: int, max_seconds: float) -> None:
    """A whole clip (unary Recognize): rate, emptiness, length and byte count."""
    check_sample_rate(sample_rate_hz)
    if not data:
        raise InvalidArgument("no audio: the request carries 0 bytes of PCM16")
    seconds = len(data) / BYTES_PER_SAMPLE / sample_rate_hz
    if seconds > max_seconds:
        raise _too_long(seconds, max_seconds)
    check_whole_samples(len(data))


class Pcm16Stream:
    """Audio of one streaming call, appended chunk by chunk.

    Chunks may split a sample between them (a transport may cut bytes anywhere), so only the
    total byte count must be even, checked at `finish`. The raw bytes are kept and resampled as a
    whole each time: partial and final transcripts then see exactly the samples a unary call of
    the same audio sees, so the final text equals the unary one.
    """

    def __init__(self, sample_rate_hz: int, max_seconds: float) -> None:
        check_sample_rate(sample_rate_hz)
        self.sample_rate_hz = sample_rate_hz
        self.max_seconds = max_seconds
        self._data = bytearray()

    @property
    def seconds(self) -> float:
        return len(self._data) // BYTES_PER_SAMPLE / self.sample_rate_hz

    def append(self, chunk: bytes) -> None:
        self._data.extend(chunk)
        if self.seconds > self.max_seconds:
            raise _too_long(self.seconds, self.max_seconds)

    def snapshot(self) -> bytes:
        """A copy of every whole sample received so far (for a partial transcript)."""
        return bytes(self._data[: len(self._data) - len(self._data) % BYTES_PER_SAMPLE])

    def finish(self) -> bytes:
        """The whole stream's PCM16 once the client has closed its side, checked."""
        if not self._data:
            raise InvalidArgument("no audio: the stream ended after its config, without audio")
        check_whole_samples(len(self._data))
        return bytes(self._data)
