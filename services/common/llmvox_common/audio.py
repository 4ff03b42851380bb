"""Audio format helpers shared by services: float32 PCM ↔ PCM16 and WAV containers.

Every service reads WAV through `decode_wav` / `decode_wav_pcm16` here, so a file one service
accepts the others accept too. Reading goes through libsndfile (`soundfile`): the stdlib `wave`
module of Python 3.11 refuses float WAV and WAVE_FORMAT_EXTENSIBLE headers, which browsers and
audio tools write.
"""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import soundfile

from .constants import SAMPLE_RATE

# Containers libsndfile reports for RIFF WAV (WAVEX is the WAVE_FORMAT_EXTENSIBLE header).
_WAV_CONTAINERS = frozenset({"WAV", "WAVEX"})
# Sample formats read, libsndfile's subtype → how a client calls it. Others (8-bit, 24-bit,
# A-law, ADPCM...) are refused rather than guessed at: clients send one of these two.
_SAMPLE_FORMATS = {"PCM_16": "16-bit PCM", "FLOAT": "32-bit float"}


class WavError(ValueError):
    """Bytes that are not a WAV file the services read. The message is written for the client;
    callers map it to HTTP 422 or gRPC INVALID_ARGUMENT."""


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


def _read_frames(data: bytes, keep_mono_pcm16: bool) -> tuple[np.ndarray, int]:
    """(frames, channels) and the sample rate: int16 (the exact samples) for a mono PCM16 file
    when `keep_mono_pcm16`, float32 in [-1, 1] otherwise."""
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as wav:
            if wav.format not in _WAV_CONTAINERS:
                raise WavError(f"not a WAV file ({wav.format_info})")
            if wav.subtype not in _SAMPLE_FORMATS:
                accepted = " or ".join(_SAMPLE_FORMATS.values())
                raise WavError(f"{wav.subtype_info} WAV is not supported; {accepted} is required")
            exact = keep_mono_pcm16 and wav.subtype == "PCM_16" and wav.channels == 1
            return wav.read(dtype="int16" if exact else "float32", always_2d=True), wav.samplerate
    except soundfile.LibsndfileError as error:
        # `error_string` is libsndfile's reason alone; str(error) also names the BytesIO object.
        raise WavError(f"not a WAV file ({error.error_string})") from None
    except soundfile.SoundFileError as error:
        raise WavError(f"not a WAV file ({error})") from None


def _mono(frames: np.ndarray) -> np.ndarray:
    if frames.shape[1] == 1:
        return np.ascontiguousarray(frames[:, 0])
    return frames.mean(axis=1, dtype=np.float32)


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate of a WAV file in memory (16-bit PCM or
    32-bit float, any rate; several channels are averaged). Raises `WavError`."""
    frames, rate = _read_frames(data, keep_mono_pcm16=False)
    return _mono(frames), rate


def decode_wav_pcm16(data: bytes) -> tuple[bytes, int]:
    """Mono PCM16 LE bytes and the sample rate of a WAV file in memory: a mono 16-bit file's
    samples unchanged, anything else averaged and converted. Raises `WavError`."""
    frames, rate = _read_frames(data, keep_mono_pcm16=True)
    if frames.dtype == np.int16:
        return frames.astype("<i2", copy=False).tobytes(), rate
    return float_to_pcm16(_mono(frames)).tobytes(), rate


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """`decode_wav` of a file (OSError when it cannot be read, WavError when it is no WAV)."""
    return decode_wav(Path(path).read_bytes())


def read_wav_pcm16(path: str | Path) -> tuple[bytes, int]:
    """`decode_wav_pcm16` of a file (OSError when it cannot be read, WavError when it is no WAV)."""
    return decode_wav_pcm16(Path(path).read_bytes())
