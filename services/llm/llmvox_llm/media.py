"""Request media → model inputs: images through PIL, audio from WAV or raw PCM16. Any decoding
failure is the client's bad input (INVALID_ARGUMENT), never an internal error."""

from __future__ import annotations

import io
import warnings

import numpy as np
import soxr
from PIL import Image

from llmvox_common.audio import WavError, decode_wav, pcm16_to_float
from llmvox_common.grpc_service import InvalidArgument

from .requests import AudioClip

# Larger images are refused before decoding: a few kilobytes of PNG can claim gigapixels.
MAX_IMAGE_PIXELS = 50_000_000


def decode_image(data: bytes, where: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise InvalidArgument(
                    f"{where}: {width}x{height} image is larger than {MAX_IMAGE_PIXELS} pixels"
                )
            # open() only reads the header; load() decodes, so truncated data fails here.
            image.load()
            return image.convert("RGB")
    except InvalidArgument:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as error:
        # PIL raises UnidentifiedImageError (an OSError) for unknown formats and OSError,
        # ValueError or SyntaxError for corrupt ones.
        raise InvalidArgument(f"{where}: not a readable image ({error})") from error


def decode_audio(clip: AudioClip, where: str) -> tuple[np.ndarray, int]:
    """Mono float32 samples and their sample rate."""
    if clip.sample_rate_hz > 0:
        if len(clip.data) % 2:
            raise InvalidArgument(f"{where}: raw PCM16 needs an even number of bytes")
        return pcm16_to_float(clip.data), clip.sample_rate_hz
    try:
        return decode_wav(clip.data)
    except WavError as error:
        raise InvalidArgument(f"{where}: {error}; or send raw PCM16 with sample_rate_hz") from error


def resample(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Mono float32 at `target_rate`, the rate the model's feature extractor was trained on
    (soxr, as the ASR service resamples)."""
    if rate == target_rate or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, rate, target_rate, quality="HQ").astype(np.float32, copy=False)
