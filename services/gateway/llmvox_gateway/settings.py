"""Settings of the gateway: env prefix LLMVOX_GATEWAY_, the same names as the CLI flags.

The original server's flag names are kept where the gateway owns the setting (`--api_port`,
`--initial_dump_size_1`, ...). Every limit is a setting, so a deployment states its own bounds.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from llmvox_common.constants import (
    DEFAULT_FIRST_CHUNK,
    DEFAULT_LATER_FIRST_CHUNK,
    DEFAULT_MAX_CHUNK,
)

ChatType = Literal["text", "voice", "visual_speech", "multimodal"]
# grpc: the built-in `llmvox-llm` service at llm_addr; openai: any OpenAI-compatible chat server
# at llm_base_url (openai_llm.py).
LlmBackendKind = Literal["grpc", "openai"]

DEFAULT_API_PORT = 5003  # the original server's port, which its example client hard-codes


class GatewaySettings(BaseSettings):
    """Gateway settings (env prefix LLMVOX_GATEWAY_)."""

    model_config = SettingsConfigDict(env_prefix="LLMVOX_GATEWAY_", extra="ignore")

    host: str = "0.0.0.0"
    api_port: int = Field(DEFAULT_API_PORT, ge=0, le=65535, description="HTTP/WebSocket port")
    redis_url: str = "redis://127.0.0.1:6379/0"
    asr_addr: str = Field("127.0.0.1:50051", description="ASR gRPC HOST:PORT; '' = no ASR")
    llm_addr: str = Field("127.0.0.1:50052", description="LLM gRPC HOST:PORT; '' = no LLM")
    llm_backend: LlmBackendKind = Field(
        "grpc",
        description="grpc = the llmvox-llm service at llm_addr; openai = an OpenAI-compatible "
        "chat server at llm_base_url",
    )
    llm_base_url: str = Field(
        "", description="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1 (openai backend)"
    )
    llm_api_key: SecretStr | None = Field(
        None, description="API key of the OpenAI-compatible server (openai backend)"
    )
    llm_model: str = Field("", description="model name sent to the OpenAI-compatible server")
    llm_extra_body: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=dict,
        description="JSON object of extra request fields for the OpenAI-compatible server",
    )
    chat_type: ChatType = Field(
        "voice",
        description="the LLM's kind (upstream --chat_type): /vlmschat needs visual_speech or "
        "multimodal, /multimodalchat multimodal",
    )

    # Chunk schedule handed to the TTS jobs (upstream names): the first sentence of a turn starts
    # with initial_dump_size_1 tokens per part, later ones (which play while the first does)
    # with initial_dump_size_2; parts grow ×3 up to max_dump_size.
    initial_dump_size_1: int = Field(DEFAULT_FIRST_CHUNK, ge=1)
    initial_dump_size_2: int = Field(DEFAULT_LATER_FIRST_CHUNK, ge=1)
    max_dump_size: int = Field(DEFAULT_MAX_CHUNK, ge=1)

    # Sentence splitting: a clause that ends in , ; or : is cut off as its own TTS job once it
    # has this many words; nothing longer than max_sentence_words goes into one job.
    clause_words: int = Field(12, ge=1)
    max_sentence_words: int = Field(40, ge=1)

    # Sampling sent to the LLM; unset = the LLM server's own defaults.
    llm_temperature: float | None = Field(None, ge=0.0)
    llm_top_p: float | None = Field(None, gt=0.0, le=1.0)
    llm_top_k: int | None = Field(None, ge=0)
    llm_max_tokens: int | None = Field(None, ge=1)
    system_prompt: str | None = Field(None, description="unset = the LLM server's default")
    history_turns: int = Field(8, ge=0, description="earlier turns a WebSocket session sends")
    language: str = Field("en", description="ASR language when a request names none")

    # Limits.
    max_text_chars: int = Field(4000, ge=1, description="longest text input")
    max_audio_seconds: float = Field(60.0, gt=0, description="longest audio input")
    max_image_bytes: int = Field(10_000_000, ge=1, description="largest decoded image")
    max_images: int = Field(8, ge=1, description="images per request")
    max_sessions: int = Field(64, ge=1, description="concurrent turns + WebSockets, then 429/1013")
    send_queue_frames: int = Field(
        256, ge=8, description="frames waiting for a slow WebSocket client before it is dropped"
    )
    idle_timeout_s: float = Field(300.0, gt=0, description="WebSocket closed after this silence")
    turn_timeout_s: float = Field(120.0, gt=0, description="longest turn, LLM and audio")
    tts_part_timeout_s: float = Field(30.0, gt=0, description="wait for the next audio part")
    llm_timeout_s: float = Field(60.0, gt=0, description="LLM call deadline")
    asr_timeout_s: float = Field(60.0, gt=0, description="ASR call deadline")

    # Access.
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="accepted keys (comma-separated); empty = open"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="allowed browser origins (comma-separated; * = any)"
    )

    drain_seconds: float = Field(10.0, ge=0, description="SIGTERM: finish turns this long")
    log_level: str = "INFO"

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator(
        "asr_addr", "llm_addr", "system_prompt", "llm_base_url", "llm_model", mode="before"
    )
    @classmethod
    def _strip(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value

    @field_validator("llm_extra_body", mode="before")
    @classmethod
    def _json_object(cls, value: object) -> object:
        # A flag or an environment variable carries the object as JSON text.
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @model_validator(mode="after")
    def _openai_backend_complete(self) -> GatewaySettings:
        if self.llm_backend == "openai":
            missing = [n for n in ("llm_base_url", "llm_model") if not getattr(self, n)]
            if missing:
                raise ValueError(f"llm_backend openai needs {' and '.join(missing)}")
        return self
