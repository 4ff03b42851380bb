"""Model settings of the TTS service: one name per setting across env vars and CLI flags."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
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
    # The CPU default (docs/model.md#precision): int8 decoding keeps real time with margin at
    # the published size on 2 cores and speaks the same tokens in any batch; fp32 is the exact
    # mode. On other devices an unset precision means fp32 (int8 is CPU-only).
    precision: Literal["fp32", "bf16", "fp16", "int8"] = Field(
        "int8",
        description="decoder weights: int8 (CPU default, batch-invariant; fp32 on other devices)"
        " or fp32, which reproduces the original numbers",
    )
    vocoder_precision: Literal["auto", "fp32", "bf16", "int8"] = Field(
        "auto",
        description="WavTokenizer vocoder: auto = bf16 on CPUs with bf16 hardware (AMX, "
        "AVX512-BF16), int8 on other CPUs, fp32 on GPUs; fp32 reproduces the original audio",
    )
    threads: int = Field(
        0, ge=0, description="torch CPU threads of this process; 0 = torch's default (the cores)"
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

    @model_validator(mode="after")
    def _exact_off_the_cpu(self) -> ModelSettings:
        if "precision" not in self.model_fields_set and not self.device.startswith("cpu"):
            self.precision = "fp32"
        return self

    def resolve_numerics(self) -> None:
        """Settle `vocoder_precision` = auto for this machine (it asks torch about the CPU, which
        the settings of a health check must not import), before it is printed, sent in the
        heartbeat and exported: what they show is what runs."""
        if self.vocoder_precision == "auto":
            from .model.precision import default_vocoder_precision

            self.vocoder_precision = default_vocoder_precision(self.device)  # type: ignore[assignment]

    def numerics(self) -> str:
        """What the replica computes in (after `resolve_numerics`), as printed at start-up."""
        return f"decoder {self.precision}, vocoder {self.vocoder_precision}"
