"""Every Prometheus metric of the ASR service (one process per container: the default registry,
no multiprocess mode, no per-stream labels)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import grpc
from prometheus_client import Counter, Gauge, Histogram

from llmvox_common.grpc_service import ServiceError

# Whisper work from a few hundred ms (a partial on GPU) to minutes (a long clip on CPU).
_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
# Below 1 keeps up with live audio; partial re-decodes of a long stream push it up.
_RTF_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)

REQUESTS = Counter(
    "llmvox_asr_requests_total",
    "Finished ASR calls by method and gRPC status code",
    ["method", "code"],
)
REQUEST_DURATION = Histogram(
    "llmvox_asr_request_duration_seconds",
    "Wall time of an ASR call, from its start to its last response",
    ["method"],
    buckets=_SECONDS_BUCKETS,
)
IN_PROGRESS = Gauge("llmvox_asr_requests_in_progress", "ASR calls being served")
ASR_SECONDS = Histogram(
    "llmvox_asr_seconds",
    "Time spent in one Whisper decode (kind: partial re-decode of a stream, or final)",
    ["kind"],
    buckets=_SECONDS_BUCKETS,
)
REALTIME_FACTOR = Histogram(
    "llmvox_asr_realtime_factor",
    "Decode time divided by the audio duration it covered",
    ["kind"],
    buckets=_RTF_BUCKETS,
)
AUDIO_SECONDS = Counter(
    "llmvox_asr_audio_seconds_total",
    "Seconds of audio transcribed in final transcripts (partial re-decodes not counted again)",
)
DECODES_STOPPED = Counter(
    "llmvox_asr_decodes_stopped_total",
    "Decodes abandoned because their call was cancelled or ran out of time",
)


def observe_decode(kind: str, processing_seconds: float, audio_seconds: float) -> None:
    ASR_SECONDS.labels(kind).observe(processing_seconds)
    if audio_seconds > 0:
        REALTIME_FACTOR.labels(kind).observe(processing_seconds / audio_seconds)
    if kind == "final":
        AUDIO_SECONDS.inc(audio_seconds)


@contextlib.contextmanager
def observe_call(method: str, context: grpc.aio.ServicerContext) -> Iterator[None]:
    """Count the call by its final status and time it. Sits inside `grpc_errors`, so it sees the
    handler's own exceptions before they become statuses."""
    started = time.perf_counter()
    code = grpc.StatusCode.OK
    IN_PROGRESS.inc()
    try:
        yield
    except ServiceError as error:
        code = error.code
        raise
    except asyncio.CancelledError:
        remaining = context.time_remaining()
        timed_out = remaining is not None and remaining <= 0
        code = grpc.StatusCode.DEADLINE_EXCEEDED if timed_out else grpc.StatusCode.CANCELLED
        raise
    except BaseException:
        code = grpc.StatusCode.INTERNAL
        raise
    finally:
        IN_PROGRESS.dec()
        REQUESTS.labels(method, code.name).inc()
        REQUEST_DURATION.labels(method).observe(time.perf_counter() - started)
