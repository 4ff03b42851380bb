"""Encodings of the audio the gateway sends: the float32 PCM replicas write, PCM16, and a WAV
header for a stream whose length is not known when it starts."""

from __future__ import annotations

import struct
from typing import Literal

import numpy as np

from llmvox_common.audio import float_to_pcm16
from llmvox_common.constants import SAMPLE_RATE

OutputFormat = Literal["float32", "pcm16"]

# RIFF and data sizes of a stream of unknown length: the maximum, which players read as "until
# the end of the stream" (as ffmpeg and browsers do for streamed WAV).
_UNKNOWN_SIZE = 0xFFFFFFFF


def encode(pcm_float32: bytes, fmt: OutputFormat) -> bytes:
    if fmt == "float32":
        return pcm_float32
    return float_to_pcm16(np.frombuffer(pcm_float32, dtype="<f4")).tobytes()


def streaming_wav_header(sample_rate: int = SAMPLE_RATE, channels: int = 1) -> bytes:
    """A 44-byte PCM16 WAV header with unknown sizes, to be followed by PCM16 samples."""
    byte_rate = sample_rate * channels * 2
    return (
        b"RIFF"
        + struct.pack("<I", _UNKNOWN_SIZE)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, byte_rate, channels * 2, 16)
        + b"data"
        + struct.pack("<I", _UNKNOWN_SIZE)
    )
