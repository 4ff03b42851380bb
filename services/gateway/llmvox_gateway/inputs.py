"""Request bodies of the HTTP endpoints and the decoding of their media, with the limits.

Field names follow the original server (`audio_base64`, `image_list`, ...) and OpenAI's speech
endpoint. Everything is checked here, once, before a turn starts: a bad request never reaches
a backend.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llmvox_common.audio import WavError, decode_wav_pcm16

from .errors import invalid_field, too_large
from .settings import GatewaySettings


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TtsRequest(_Body):
    text: str = Field(min_length=1)
    verbatim: bool = False


class VoiceChatRequest(_Body):
    audio_base64: str = Field(min_length=1)
    source_language: str = ""
    target_language: str = ""


class MultimodalChatRequest(_Body):
    audio_base64: str = Field(min_length=1)
    image_list: list[str] = Field(default_factory=list)


class VlmsChatRequest(_Body):
    audio_base64: str = Field(min_length=1)
    image_base64: str = Field(min_length=1)
    source_language: str = ""
    target_language: str = ""


class SpeechRequest(_Body):
    """OpenAI `audio.speech.create`; `voice` and `model` are accepted, LLMVoX has one voice."""

    model: str = "llmvox"
    input: str = Field(min_length=1)
    voice: str = "default"
    response_format: str = "wav"
    speed: float = 1.0
    stream_format: Literal["audio"] = "audio"


@dataclass(frozen=True)
class AudioInput:
    pcm16: bytes
    sample_rate: int
    wav: bytes  # the file as sent (multimodal LLMs take it whole)

    @property
    def seconds(self) -> float:
        return len(self.pcm16) / 2 / self.sample_rate


def check_text(text: str, settings: GatewaySettings, field: str = "text") -> str:
    if not text.strip():
        raise invalid_field(f"{field}: empty")
    if len(text) > settings.max_text_chars:
        raise too_large(f"{field}: {len(text)} characters, the limit is {settings.max_text_chars}")
    return text


def _b64(data: str, field: str, limit: int) -> bytes:
    # Base64 is 4/3 of the bytes: refuse oversized input before decoding it.
    if len(data) > limit * 4 // 3 + 8:
        raise too_large(f"{field}: larger than {limit} bytes")
    if data.startswith("data:") and "," in data:  # a data URL from a browser
        data = data.split(",", 1)[1]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_field(f"{field}: not valid base64") from None


def decode_audio(data: str, settings: GatewaySettings, field: str = "audio_base64") -> AudioInput:
    """A base64 WAV file (16-bit PCM or 32-bit float, any rate 8..48 kHz, channels averaged)
    within the limit."""
    # The byte bound before decoding: float32 stereo at 48 kHz, the largest usual WAV, for the
    # whole allowed duration; the duration itself is checked once decoded.
    max_bytes = int(settings.max_audio_seconds * 48_000 * 4 * 2) + 1024
    raw = _b64(data, field, max_bytes)
    try:
        pcm16, rate = decode_wav_pcm16(raw)
    except WavError as error:
        raise invalid_field(f"{field}: {error}") from None
    if not 8000 <= rate <= 48000:
        raise invalid_field(f"{field}: sample rate {rate} Hz outside 8000..48000")
    audio = AudioInput(pcm16, rate, raw)
    if audio.seconds == 0:
        raise invalid_field(f"{field}: the audio is empty")
    if audio.seconds > settings.max_audio_seconds:
        raise too_large(
            f"{field}: {audio.seconds:.1f} s of audio, "
            f"the limit is {settings.max_audio_seconds:g} s"
        )
    return audio


_IMAGE_MAGIC = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"BM",
)


def decode_image(data: str, settings: GatewaySettings, field: str) -> bytes:
    raw = _b64(data, field, settings.max_image_bytes)
    if len(raw) > settings.max_image_bytes:
        raise too_large(f"{field}: {len(raw)} bytes, the limit is {settings.max_image_bytes}")
    is_webp = raw[:4] == b"RIFF" and raw[8:12] == b"WEBP"
    if not (is_webp or raw.startswith(_IMAGE_MAGIC)):
        raise invalid_field(f"{field}: not a PNG, JPEG, GIF, WebP or BMP image")
    return raw


def decode_images(items: list[str], settings: GatewaySettings, field: str) -> list[bytes]:
    if len(items) > settings.max_images:
        raise too_large(f"{field}: {len(items)} images, the limit is {settings.max_images}")
    return [decode_image(item, settings, f"{field}[{i}]") for i, item in enumerate(items)]
