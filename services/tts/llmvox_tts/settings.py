"""Model settings of the TTS service: one name per setting across env vars and CLI flags."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .constants import (
    DEFAULT_INITIAL_DUMP_SIZE_1,
    DEFAULT_MAX_AUDIO_LENGTH,
    DEFAULT_MAX_DUMP_SIZE,
)
from .loading.hub import CHARSIU_REPO, LLMVOX_REPO


class ModelSettings(BaseSettings):
    """Where the weights come from and how a sentence is bounded (env prefix LLMVOX_TTS_)."""

    model_config = SettingsConfigDict(env_prefix="LLMVOX_TTS_", extra="ignore")

    profile: Literal["published", "tiny"] = Field(
        "published", description="published weights, or tiny random-weight models (untrained noise)"
    )
    llmvox_checkpoint: str = Field(LLMVOX_REPO, description="file, directory or hub id")
    wavtokenizer_checkpoint: str = Field(LLMVOX_REPO, description="file, directory or hub id")
    wavtokenizer_config: str | None = Field(None, description="WavTokenizer YAML (optional)")
    text_model: str = Field(CHARSIU_REPO, description="charsiu ByT5 g2p: directory or hub id")
    device: str = Field("cpu", description="cpu, cuda, cuda:N")
    precision: Literal["fp32", "bf16", "fp16", "int8"] = Field(
        "fp32", description="decoder weights; fp32 reproduces the original numbers"
    )
    seed: int = Field(0, description="seed of the tiny profile's random weights")
    initial_dump_size: int = Field(
        DEFAULT_INITIAL_DUMP_SIZE_1, ge=1, description="speech tokens in the first audio part"
    )
    max_dump_size: int = Field(
        DEFAULT_MAX_DUMP_SIZE, ge=1, description="largest audio part (tokens; parts grow ×3)"
    )
    max_audio_length: int = Field(
        DEFAULT_MAX_AUDIO_LENGTH, ge=1, description="speech tokens per sentence at most"
    )
    max_tokens_per_text_id: float = Field(
        12.0, gt=0, description="runaway guard: stop a sentence after this many tokens per text id"
    )
    max_text_chars: int = Field(4000, ge=1, description="longest text of one job")
