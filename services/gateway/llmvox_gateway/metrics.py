"""Every metric the gateway exports (served at /metrics on the API port).

No per-session labels: endpoint and status are the only labels, both from small fixed sets.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

REQUESTS = Counter(
    "llmvox_gateway_requests_total", "Requests and WebSocket sessions", ["endpoint", "status"]
)
ERRORS = Counter(
    "llmvox_gateway_errors_total", "Requests answered with an error", ["endpoint", "status"]
)
SESSIONS_ACTIVE = Gauge("llmvox_sessions_active", "HTTP turns and WebSocket sessions open")
TIME_TO_FIRST_AUDIO = Histogram(
    "llmvox_time_to_first_audio_seconds",
    "From a turn's input being complete to its first audio sent",
    ["endpoint"],
    buckets=_LATENCY_BUCKETS,
)
LLM_FIRST_TOKEN = Histogram(
    "llmvox_llm_first_token_seen_seconds",
    "From the LLM call to its first text delta, as the gateway sees it",
    buckets=_LATENCY_BUCKETS,
)
ASR_SECONDS = Histogram(
    "llmvox_gateway_asr_seconds",
    "From the end of the input audio to the final transcript",
    buckets=_LATENCY_BUCKETS,
)
CHUNKS_RESEQUENCED = Counter(
    "llmvox_gateway_chunks_resequenced_total", "Audio parts released in (seq, part) order"
)
DUPLICATES_DROPPED = Counter(
    "llmvox_gateway_duplicates_dropped_total", "Audio parts dropped as already delivered"
)
INTER_CHUNK_GAP = Histogram(
    "llmvox_gateway_inter_chunk_gap_seconds",
    "Wall time between consecutive audio parts sent to a client",
    buckets=(0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0),
)
AUDIO_SECONDS = Counter("llmvox_gateway_audio_seconds_total", "Audio seconds sent to clients")
TURNS = Counter("llmvox_gateway_turns_total", "Turns finished", ["outcome"])
SLOW_CLIENTS_DROPPED = Counter(
    "llmvox_gateway_slow_clients_dropped_total", "WebSockets closed because their queue was full"
)
