"""Prometheus metrics of the LLM server (one process per container, so the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "llmvox_llm_requests_total",
    "Generate calls by outcome (ok, invalid_argument, resource_exhausted, cancelled, "
    "deadline_exceeded, internal)",
    ["status"],
)
REQUEST_SECONDS = Histogram(
    "llmvox_llm_request_duration_seconds",
    "From the call's arrival to its last message (or its end)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0),
)
TIME_TO_FIRST_TOKEN = Histogram(
    "llmvox_llm_time_to_first_token_seconds",
    "From the call's arrival to the first generated token (queueing and prefill included)",
    buckets=(0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
PROMPT_TOKENS = Counter("llmvox_llm_prompt_tokens_total", "Prompt tokens read")
GENERATED_TOKENS = Counter(
    "llmvox_llm_generated_tokens_total", "Tokens generated, all calls together (aggregate rate)"
)
TOKENS_PER_SECOND = Histogram(
    "llmvox_llm_tokens_per_second",
    "Generated tokens per second of generation, per call",
    buckets=(1, 2, 5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300),
)
REQUESTS_IN_PROGRESS = Gauge(
    "llmvox_llm_requests_in_progress", "Admitted calls: generating or waiting for the model"
)
GENERATIONS_ACTIVE = Gauge(
    "llmvox_llm_generations_active",
    "Calls generating on the model thread (the running batch; same as llmvox_llm_batch_size)",
)
BATCH_SIZE = Gauge(
    "llmvox_llm_batch_size", "Calls in the running batch (1 at most without continuous batching)"
)
MAX_BATCH = Gauge("llmvox_llm_max_batch", "Largest running batch this server allows")
BATCHING_ENABLED = Gauge(
    "llmvox_llm_batching_enabled",
    "1: calls share decode steps (continuous batching); 0: this model runs one call at a time",
)
QUEUE_DEPTH = Gauge("llmvox_llm_queue_depth", "Calls waiting for a place in the running batch")
QUEUE_WAIT_SECONDS = Histogram(
    "llmvox_llm_queue_wait_seconds",
    "From a call's hand-over to the model thread to its admission into the batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
)
