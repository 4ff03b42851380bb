"""Audio format helpers shared by services: float32 PCM ↔ PCM16 and WAV containers."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 24_000


def float_to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Clip to [-1, 1] and scale to int16 (little-endian on every platform we ship)."""
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return (clipped * 32767.0).round().astype("<i2")


def pcm16_to_float(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def wav_bytes(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A complete mono PCM16 WAV file in memory."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(float_to_pcm16(samples).tobytes())
    return buffer.getvalue()


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wav_bytes(samples, sample_rate))
    return path


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples and the sample rate of a PCM16 WAV file (channels averaged)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        channels, rate = wav.getnchannels(), wav.getframerate()
        samples = pcm16_to_float(wav.readframes(wav.getnframes()))
    return samples.reshape(-1, channels).mean(axis=1), rate
