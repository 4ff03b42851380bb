"""Settings of a TTS replica process: env prefix LLMVOX_TTS_, the same names as the CLI flags."""

from __future__ import annotations

import socket

from pydantic import Field

from ..settings import ModelSettings


class WorkerSettings(ModelSettings):
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="the pool's Redis")
    name: str = Field(
        default_factory=lambda: f"tts-{socket.gethostname()}",
        description="consumer name in the group, unique per replica; unset = tts-<hostname>",
    )
    max_batch: int = Field(32, ge=1, description="jobs decoded together")
    metrics_port: int = Field(0, ge=0, description="Prometheus port; 0 = no metrics server")
    # Chunk joins (worker/engine.py); 0 and 0 decode each chunk alone, as upstream.
    context_tokens: int = Field(
        24, ge=0, description="tokens already sent, decoded again before each chunk"
    )
    holdback_tokens: int = Field(
        4, ge=0, description="last tokens of a chunk sent with the next one, once it exists"
    )
    claim_idle_ms: int = Field(
        5000, ge=100, description="a pending job idle this long belongs to a dead replica"
    )
    max_deliveries: int = Field(3, ge=1, description="tries before a job goes to dead letters")
    text_timeout_s: float = Field(30.0, gt=0, description="wait for streamed text at most this")
    cancel_poll_ms: int = Field(20, ge=1, description="how often a job's cancel flag is read")
    drain_timeout_s: float = Field(30.0, ge=0, description="SIGTERM: finish active jobs this long")
    audio_ttl_s: int = Field(600, ge=1, description="expiry of audio streams after the last part")
