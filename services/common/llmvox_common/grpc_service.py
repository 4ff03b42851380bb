"""What every gRPC service of the platform shares: error mapping, a concurrency limit, the
standard health and reflection services, metrics, warm-up before SERVING, and a SIGTERM drain.

Errors are mapped once: handlers raise `ServiceError` (or a subclass); `grpc_errors` turns it into
the status code and message. Anything else becomes INTERNAL with a short message (and a log).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import signal
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ServiceError(Exception):
    """A failure the client should see: a status code and a clear message."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


async def _abort(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    if isinstance(error, ServiceError):
        await context.abort(error.code, error.message)
    log.exception("unexpected error in handler", exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}")


def grpc_errors(handler: F) -> F:
    """Map exceptions of a servicer method (unary or server-streaming) to gRPC statuses."""
    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def stream_wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for item in handler(self, request, context):
                    yield item
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as error:
                await _abort(context, error)

        return stream_wrapper  # type: ignore[return-value]

    @functools.wraps(handler)
    async def unary_wrapper(self: Any, request: Any, context: Any) -> Any:
        try:
            return await handler(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as error:
            await _abort(context, error)

    return unary_wrapper  # type: ignore[return-value]


class ConcurrencyLimit:
    """At most `limit` requests in progress; the next one is refused with RESOURCE_EXHAUSTED
    (clients retry or go elsewhere) rather than queued without bound."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.in_progress = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.in_progress >= self.limit:
            raise ResourceExhausted(f"server busy: {self.limit} requests already in progress")
        self.in_progress += 1
        try:
            yield
        finally:
            self.in_progress -= 1


async def run_grpc_service(
    *,
    register: Callable[[grpc.aio.Server], None],
    service_names: Iterable[str],
    port: int,
    host: str = "0.0.0.0",
    load: Callable[[], None] | None = None,
    metrics_port: int = 0,
    drain_seconds: float = 10.0,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or `stop`): NOT_SERVING until `load` (model loading and
    warm-up, run on a thread) returns, then SERVING; on stop NOT_SERVING, drain, exit."""
    names = list(service_names)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    log.info("gRPC listening on %s:%d (%s)", host, bound, ", ".join(names))
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        if load is not None:
            await asyncio.to_thread(load)
        for name in ["", *names]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving")
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        for name in ["", *names]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        log.info("draining for up to %.0f s", drain_seconds)
        await server.stop(grace=drain_seconds)
