"""Settings of a TTS replica process: env prefix LLMVOX_TTS_, the same names as the CLI flags."""

from __future__ import annotations

import socket

from pydantic import Field, model_validator

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
    # A lapsed heartbeat is how the pool learns that a replica died: its jobs are taken over
    # within about heartbeat_ttl_ms + takeover_interval_ms, without waiting for claim_idle_ms.
    heartbeat_interval_ms: int = Field(250, ge=10, description="how often the heartbeat is set")
    heartbeat_ttl_ms: int = Field(
        1000, ge=50, description="heartbeat expiry: a replica silent this long counts as dead"
    )
    takeover_interval_ms: int = Field(
        250, ge=10, description="how often replicas look for dead ones' jobs to take over"
    )
    max_deliveries: int = Field(3, ge=1, description="tries before a job goes to dead letters")
    text_timeout_s: float = Field(30.0, gt=0, description="wait for streamed text at most this")
    cancel_poll_ms: int = Field(20, ge=1, description="how often a job's cancel flag is read")
    drain_timeout_s: float = Field(30.0, ge=0, description="SIGTERM: finish active jobs this long")
    audio_ttl_s: int = Field(600, ge=1, description="expiry of audio streams after the last part")

    @model_validator(mode="after")
    def _heartbeat_outlives_its_interval(self) -> WorkerSettings:
        # Two missed refreshes at least before the key expires: a busy event loop is not a
        # dead replica.
        if self.heartbeat_ttl_ms < 2 * self.heartbeat_interval_ms:
            raise ValueError("heartbeat_ttl_ms must be at least 2 x heartbeat_interval_ms")
        return self
