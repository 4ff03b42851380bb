"""Prometheus metrics of a TTS replica (one process per replica, so the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TOKENS = Counter("llmvox_tts_tokens_total", "Speech tokens generated")
PARTS = Counter("llmvox_tts_parts_total", "Audio parts written")
STARVED_STEPS = Counter(
    "llmvox_tts_starved_steps_total", "Job-steps skipped because streamed text had run dry"
)
BATCH_SIZE = Histogram(
    "llmvox_tts_batch_size",
    "Jobs advanced by one decoder step",
    buckets=(1, 2, 4, 8, 16, 32, 48, 64, 96, 128),
)
STEP_SECONDS = Histogram(
    "llmvox_tts_step_seconds",
    "Duration of one batched decoder step",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
)
REALTIME_FACTOR = Gauge(
    "llmvox_tts_realtime_factor",
    "Compute seconds per second of audio produced, over the last reporting window",
)
JOBS_ACTIVE = Gauge("llmvox_tts_jobs_active", "Jobs decoding on this replica")
JOBS_PENDING = Gauge(
    "llmvox_tts_jobs_pending", "Jobs delivered to the consumer group but not yet acknowledged"
)
JOBS_WAITING = Gauge(
    "llmvox_tts_jobs_waiting",
    "Jobs in the stream not yet delivered to any replica (the group's lag; scale on this)",
)
TIME_TO_FIRST_PART = Histogram(
    "llmvox_tts_time_to_first_part_seconds",
    "From job enqueue to its first audio part written",
    buckets=(0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0),
)
ERRORS = Counter("llmvox_tts_errors_total", "Jobs answered with an error part", ["kind"])
JOBS_DONE = Counter("llmvox_tts_jobs_total", "Jobs finished", ["outcome"])
JOBS_CLAIMED = Counter(
    "llmvox_tts_jobs_claimed_total",
    "Jobs taken over from another consumer: heartbeat_lapsed (its replica's heartbeat expired), "
    "idle (pending longer than claim_idle_ms), restarted (this replica's own, from before a "
    "restart under the same name)",
    ["reason"],
)
REDIS_OUTAGES = Counter(
    "llmvox_tts_redis_outages_total", "Times Redis became unreachable (one per outage)"
)
REDIS_UP = Gauge("llmvox_tts_redis_up", "1 while Redis answers this replica, 0 during an outage")
NUMERICS = Gauge(
    "llmvox_tts_numerics",
    "1 for the numerics this replica runs: decoder and vocoder precision, CPU threads",
    ["precision", "vocoder_precision", "threads"],
)
