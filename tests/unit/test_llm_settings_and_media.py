"""LLM server settings (env vars, CLI flags, upstream aliases) and request media decoding."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest
import soundfile
from PIL import Image

from llmvox_common.audio import wav_bytes
from llmvox_common.grpc_service import InvalidArgument
from llmvox_llm.cli import build_parser, settings_from_args
from llmvox_llm.media import decode_audio, decode_image, resample
from llmvox_llm.requests import AudioClip
from llmvox_llm.settings import DEFAULT_SYSTEM_PROMPT, LlmSettings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("LLMVOX_LLM_"):
            monkeypatch.delenv(name)


def serve_settings(*argv: str) -> LlmSettings:
    return settings_from_args(build_parser().parse_args(["serve", *argv]))


def test_defaults() -> None:
    settings = serve_settings()
    assert settings.model is None
    assert settings.chat_type == "text"
    assert settings.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert settings.max_tokens == 1000
    assert settings.eos_token is None


def test_every_flag_is_an_env_var_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMVOX_LLM_MODEL", "some/model")
    monkeypatch.setenv("LLMVOX_LLM_MAX_TOKENS", "77")
    monkeypatch.setenv("LLMVOX_LLM_TEMPERATURE", "0.2")
    monkeypatch.setenv("LLMVOX_LLM_CHAT_TYPE", "multimodal")
    monkeypatch.setenv("LLMVOX_LLM_EOS_TOKEN", "")
    settings = serve_settings("--temperature", "0.5")
    assert settings.model == "some/model"
    assert settings.max_tokens == 77
    assert settings.temperature == 0.5
    assert settings.chat_type == "multimodal"
    assert settings.eos_token is None


def test_upstream_flag_names_are_aliases() -> None:
    settings = serve_settings(
        "--llm_checkpoint",
        "meta-llama/Llama-3.1-8B-Instruct",
        "--chat_type",
        "voice",
        "--eos_token",
        "<|eot_id|>",
        "--system_prompt",
        "Short answers.",
        "--llm_temperature",
        "0.3",
        "--llm_top_p",
        "0.8",
        "--llm_top_k",
        "20",
        "--llm_max_tokens",
        "500",
        "--llm_device",
        "cpu",
    )
    assert settings.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert settings.chat_type == "text"  # upstream "voice" = ASR + text chat
    assert settings.eos_token == "<|eot_id|>"
    assert settings.system_prompt == "Short answers."
    assert (settings.temperature, settings.top_p, settings.top_k) == (0.3, 0.8, 20)
    assert settings.max_tokens == 500
    assert settings.device == "cpu"


def test_out_of_range_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="top_p"):
        serve_settings("--top_p", "0")
    with pytest.raises(ValueError, match="max_batch"):
        serve_settings("--max_batch", "0")
    with pytest.raises(ValueError, match="max_queue"):
        serve_settings("--max_queue", "-1")


def test_batch_and_queue_bounds_come_from_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMVOX_LLM_MAX_QUEUE", "3")
    settings = serve_settings("--max_batch", "5")
    assert (settings.max_batch, settings.max_queue) == (5, 3)


def png(size: tuple[int, int] = (8, 6), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_images_decode_to_rgb() -> None:
    image = decode_image(png(mode="L"), "messages[0].images[0]")
    assert image.mode == "RGB"
    assert image.size == (8, 6)


@pytest.mark.parametrize(
    "data", [b"", b"not an image", png()[:40]], ids=["empty", "garbage", "truncated"]
)
def test_unreadable_images_are_invalid_argument(data: bytes) -> None:
    with pytest.raises(InvalidArgument, match=r"messages\[2\]\.images\[1\]: not a readable image"):
        decode_image(data, "messages[2].images[1]")


def test_huge_images_are_refused_before_decoding() -> None:
    with pytest.raises(InvalidArgument, match="larger than"):
        decode_image(png((8000, 8000), mode="1"), "img")


def test_wav_and_raw_pcm_decode_to_the_same_samples() -> None:
    samples = np.linspace(-0.5, 0.5, 160, dtype=np.float32)
    from_wav, rate = decode_audio(AudioClip(wav_bytes(samples, 16000)), "a")
    pcm = (np.clip(samples, -1, 1) * 32767).round().astype("<i2").tobytes()
    from_pcm, pcm_rate = decode_audio(AudioClip(pcm, 16000), "a")
    assert rate == pcm_rate == 16000
    np.testing.assert_allclose(from_wav, from_pcm)
    np.testing.assert_allclose(from_wav, samples, atol=1e-4)


def test_stereo_wav_is_mixed_down() -> None:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(np.array([1000, 3000] * 10, dtype="<i2").tobytes())
    samples, rate = decode_audio(AudioClip(buffer.getvalue()), "a")
    assert rate == 8000
    assert samples.shape == (10,)
    np.testing.assert_allclose(samples, 2000 / 32768)


@pytest.mark.parametrize(
    ("clip", "message"),
    [
        (AudioClip(b"RIFFjunk"), "not a WAV file"),
        (AudioClip(b"\x00\x01\x02", 16000), "even number of bytes"),
    ],
)
def test_bad_audio_is_invalid_argument(clip: AudioClip, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        decode_audio(clip, "messages[0].audios[0]")


def test_eight_bit_wav_is_invalid_argument() -> None:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(1)
        wav.setframerate(8000)
        wav.writeframes(bytes(100))
    with pytest.raises(InvalidArgument, match="16-bit"):
        decode_audio(AudioClip(buffer.getvalue()), "a")


def test_float32_wav_is_accepted() -> None:
    buffer = io.BytesIO()
    soundfile.write(buffer, np.full(80, -0.25, np.float32), 8000, format="WAV", subtype="FLOAT")
    samples, rate = decode_audio(AudioClip(buffer.getvalue()), "a")
    assert (samples.dtype, samples.shape, rate) == (np.float32, (80,), 8000)
    np.testing.assert_allclose(samples, -0.25)


def test_resampling_keeps_the_duration_and_the_tone() -> None:
    t = np.arange(8000) / 8000
    tone = np.sin(2 * np.pi * 200 * t).astype(np.float32)
    out = resample(tone, 8000, 16000)
    assert out.shape == (16000,)
    assert out.dtype == np.float32
    expected = np.sin(2 * np.pi * 200 * np.arange(16000) / 16000)
    np.testing.assert_allclose(out[:-2], expected[:-2], atol=0.02)
    assert resample(tone, 8000, 8000) is tone
