"""Audio formats of the Realtime protocol (`/v1/realtime`): PCM16 at 24 kHz (the protocol's
default), and G.711 μ-law (`audio/pcmu`) and A-law (`audio/pcma`) at 8 kHz for telephony.

The ASR and the VAD want 16 kHz and the TTS replicas write float32 at 24 kHz, so input is
decoded and resampled to 16 kHz, and output resampled to the client's rate, each through a soxr
stream that keeps its filter state between chunks (no clicks at chunk edges).

The G.711 codec is vectorised numpy: the stdlib `audioop` is deprecated in 3.11 and gone in 3.13.
Both laws are the ITU-T G.711 segment tables: 8 segments, 4-bit mantissa, sign on top.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import soxr

from llmvox_common.audio import float_to_pcm16
from llmvox_common.constants import SAMPLE_RATE

AudioFormat = Literal["audio/pcm", "audio/pcmu", "audio/pcma"]
FORMAT_RATES: dict[str, int] = {"audio/pcm": SAMPLE_RATE, "audio/pcmu": 8000, "audio/pcma": 8000}
ASR_RATE = 16_000

_ULAW_BIAS = 0x84  # shifts every magnitude into a segment whose top bit marks its exponent
_ULAW_CLIP = 32635  # the largest magnitude that still fits after the bias


def _exponent(magnitude: np.ndarray) -> np.ndarray:
    """floor(log2(m)) - 7 for m >= 128: the segment of a biased magnitude."""
    bits = np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32)
    return np.clip(bits - 7, 0, 7)


def ulaw_encode(pcm16: np.ndarray) -> bytes:
    x = pcm16.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    # A negative sample rounds away from zero on the 14-bit grid the law is defined on, as
    # the reference implementation (Sun's g711.c, and audioop) does.
    magnitude = np.where(x < 0, (3 - x) & ~3, x)
    magnitude = np.minimum(magnitude, _ULAW_CLIP) + _ULAW_BIAS
    exponent = _exponent(magnitude)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    # μ-law transmits the bits inverted (an idle line of zeros is then 0xFF).
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    code = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = (((mantissa << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return np.where(code & 0x80, -magnitude, magnitude).astype("<i2")


def alaw_encode(pcm16: np.ndarray) -> bytes:
    x = pcm16.astype(np.int32)
    sign = np.where(x >= 0, 0x80, 0)  # A-law's sign bit is set for positive samples
    # One's complement for negatives (-1 → 0), as the reference implementation does.
    magnitude = np.where(x < 0, ~x, x)
    exponent = _exponent(magnitude)
    # Segment 0 is linear (step 16); segment e >= 1 covers [2^(e+7), 2^(e+8)) in 16 steps.
    mantissa = np.where(exponent == 0, magnitude >> 4, magnitude >> (exponent + 3)) & 0x0F
    # Even bits inverted, as G.711 sends A-law, so silence is not a run of zeros.
    return ((sign | (exponent << 4) | mantissa) ^ 0x55).astype(np.uint8).tobytes()


def alaw_decode(data: bytes) -> np.ndarray:
    code = np.frombuffer(data, dtype=np.uint8).astype(np.int32) ^ 0x55
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    # The middle of each step: +8 in the linear segment, 0x108 = 256 + half a step above it.
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0),
    )
    return np.where(code & 0x80, magnitude, -magnitude).astype("<i2")


def bytes_per_second(fmt: AudioFormat) -> int:
    return FORMAT_RATES[fmt] * (2 if fmt == "audio/pcm" else 1)


class InputDecoder:
    """Client audio in `fmt` → float32 at 16 kHz, continuous across appends."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._resampler = soxr.ResampleStream(FORMAT_RATES[fmt], ASR_RATE, 1, dtype="float32")

    def check(self, data: bytes) -> None:
        """Raises ValueError for bytes that cannot be samples of the format."""
        if self.format == "audio/pcm" and len(data) % 2:
            raise ValueError("audio/pcm is 16-bit: an odd number of bytes")

    def decode(self, data: bytes) -> np.ndarray:
        if self.format == "audio/pcm":
            pcm = np.frombuffer(data, dtype="<i2")
        elif self.format == "audio/pcmu":
            pcm = ulaw_decode(data)
        else:
            pcm = alaw_decode(data)
        samples = pcm.astype(np.float32) / 32768.0
        return np.asarray(self._resampler.resample_chunk(samples), dtype=np.float32)

    def flush(self) -> np.ndarray:
        """What the resampler still holds (its filter delay, ~30 ms): the end of an utterance
        the client committed. The stream then starts afresh."""
        tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._resampler.clear()
        return np.asarray(tail, dtype=np.float32)


class OutputEncoder:
    """The replicas' float32 24 kHz audio → the client's format, for one response (`flush` at
    its end returns what the resampler still holds)."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        rate = FORMAT_RATES[fmt]
        self._resampler = (
            None if rate == SAMPLE_RATE else soxr.ResampleStream(SAMPLE_RATE, rate, 1, "float32")
        )
        self.samples_out = 0  # at the client's rate

    @property
    def rate(self) -> int:
        return FORMAT_RATES[self.format]

    def encode(self, pcm_float32: bytes, *, last: bool = False) -> bytes:
        samples = np.frombuffer(pcm_float32, dtype="<f4")
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples, last=last)
        self.samples_out += len(samples)
        pcm16 = float_to_pcm16(samples)
        if self.format == "audio/pcmu":
            return ulaw_encode(pcm16)
        if self.format == "audio/pcma":
            return alaw_encode(pcm16)
        return pcm16.tobytes()

    def flush(self) -> bytes:
        if self._resampler is None:
            return b""
        return self.encode(b"", last=True)
