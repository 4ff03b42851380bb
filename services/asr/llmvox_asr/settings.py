"""Settings of the ASR service: one name per setting across env vars and CLI flags.

`--beam_size` on the command line is `LLMVOX_ASR_BEAM_SIZE` in the environment; a flag given on
the command line wins over the environment.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORT = 50051
# Whisper decodes 30 s windows, so longer clips work; the cap bounds memory per stream and the
# cost of re-decoding the accumulated audio for every partial transcript.
DEFAULT_MAX_AUDIO_SECONDS = 120.0


class AsrSettings(BaseSettings):
    """Server settings (env prefix LLMVOX_ASR_)."""

    model_config = SettingsConfigDict(env_prefix="LLMVOX_ASR_", extra="ignore")

    host: str = "0.0.0.0"
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    model: str = Field(
        "small",
        description="local CTranslate2 Whisper directory, size name (tiny.en, small, ...) "
        "or hub id; a size name or hub id needs the Hugging Face hub",
    )
    device: str = Field("auto", description="cpu, cuda or auto")
    compute_type: str = Field(
        "auto", description="CTranslate2 compute type: auto, int8, int8_float16, float16, ..."
    )
    cpu_threads: int = Field(0, ge=0, description="CTranslate2 threads per decode; 0 = its default")
    num_workers: int = Field(
        1, ge=1, description="decodes the model runs in parallel (each holds its own buffers)"
    )
    vad: bool = Field(False, description="Silero VAD on every request, whatever its config says")
    max_concurrency: int = Field(4, ge=1, description="requests in progress before refusing")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus port; 0 = no endpoint")
    asr_max_audio_length: float = Field(
        DEFAULT_MAX_AUDIO_SECONDS, gt=0, description="longest clip or stream, in seconds"
    )
    beam_size: int = Field(5, ge=1, le=16)
    interim_interval: float = Field(
        1.0, gt=0, description="seconds of new audio between partial transcripts of a stream"
    )
    drain_seconds: float = Field(10.0, ge=0, description="grace period on SIGTERM")
    log_level: str = "INFO"
