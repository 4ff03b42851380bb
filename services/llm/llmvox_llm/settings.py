"""Settings of the LLM server: env prefix LLMVOX_LLM_, the same names as the CLI flags
(`--max_tokens` ↔ LLMVOX_LLM_MAX_TOKENS)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The upstream server's default asked for short answers without abbreviations, because every
# word of the answer is spoken; this keeps that meaning in our own words.
DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Answer briefly and clearly, and do not use abbreviations."
)

ChatType = Literal["text", "visual_speech", "multimodal"]
# The upstream `voice` mode is ASR + text chat: for the LLM alone it is the text adapter.
CHAT_TYPE_ALIASES = {"voice": "text"}


class LlmSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMVOX_LLM_", extra="ignore")

    host: str = "0.0.0.0"
    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    model: str | None = Field(
        None, description="hub id, model directory, or a .gguf file (its directory + file)"
    )
    gguf_file: str | None = Field(None, description="GGUF file inside --model (dequantised)")
    trust_remote_code: bool = Field(
        False, description="run the model repository's own Python code (some multimodal models)"
    )
    device: str = Field("auto", description="auto (cuda when available, else cpu), cpu, cuda:0…")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    chat_type: ChatType = Field(
        "text", description="model adapter: text (voice = text), visual_speech, multimodal"
    )
    eos_token: str | None = Field(
        None, description="extra end-of-turn token (<|eot_id|>, <|im_end|>, <|end|>…)"
    )
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    temperature: float = Field(0.7, ge=0.0, description="default; 0 = greedy")
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    top_k: int = Field(50, ge=0, description="0 = no top-k filtering")
    max_tokens: int = Field(1000, ge=1, description="default and hard limit of new tokens")
    max_prompt_tokens: int = Field(
        0, ge=0, description="longest accepted prompt; 0 = the model's context length"
    )
    max_batch: int = Field(
        16, ge=1, description="calls generating together (continuous batching); text models"
    )
    max_queue: int = Field(
        32, ge=0, description="calls waiting for the batch; beyond them RESOURCE_EXHAUSTED"
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus port; 0 = none")
    drain_seconds: float = Field(10.0, ge=0.0, description="SIGTERM: finish streams this long")

    @field_validator("chat_type", mode="before")
    @classmethod
    def _upstream_chat_types(cls, value: object) -> object:
        return CHAT_TYPE_ALIASES.get(value, value) if isinstance(value, str) else value

    @field_validator("eos_token", "gguf_file", "model", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # Env vars and Helm values cannot express None; an empty string means "not set".
        return None if value == "" else value
