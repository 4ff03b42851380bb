"""The shared gRPC plumbing: health follows loading, reflection lists services, errors map to
status codes, the concurrency limit refuses rather than queues."""

from __future__ import annotations

import asyncio
import socket
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from llmvox_common.grpc_service import (
    ConcurrencyLimit,
    InvalidArgument,
    ResourceExhausted,
    grpc_errors,
    run_grpc_service,
)

pytestmark = pytest.mark.integration

# Bound on waits for what a working server does at once; only a broken one reaches it.
WAIT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def health_status(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status


def test_health_is_serving_only_after_load_and_not_serving_on_stop() -> None:
    port = free_port()
    loaded = threading.Event()

    async def scenario() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        server = asyncio.create_task(
            run_grpc_service(
                register=lambda _: None,
                service_names=["demo.v1.Demo"],
                port=port,
                host="127.0.0.1",
                load=loaded.wait,
                ready=ready,
                stop=stop,
                drain_seconds=1,
            )
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await channel.channel_ready()
            assert await health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
            loaded.set()
            await asyncio.wait_for(ready.wait(), WAIT_S)
            assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING
            assert (
                await health_status(channel, "demo.v1.Demo")
                == health_pb2.HealthCheckResponse.SERVING
            )
            refl = reflection_pb2_grpc.ServerReflectionStub(channel)

            async def ask():
                yield reflection_pb2.ServerReflectionRequest(list_services="")

            async for reply in refl.ServerReflectionInfo(ask()):
                names = {s.name for s in reply.list_services_response.service}
                assert {"demo.v1.Demo", "grpc.health.v1.Health"} <= names
                break
        stop.set()
        await asyncio.wait_for(server, WAIT_S)

    asyncio.run(scenario())


def test_errors_map_to_status_codes_and_limit_refuses() -> None:
    class Servicer:
        def __init__(self) -> None:
            self.limit = ConcurrencyLimit(1)
            # Bound to the scenario's event loop (the server's too) when first awaited.
            self.holding = asyncio.Event()
            self.release = asyncio.Event()

        @grpc_errors
        async def unary(self, request: bytes, context: object) -> bytes:
            if request == b"bad":
                raise InvalidArgument("request must not be 'bad'")
            if request == b"boom":
                raise RuntimeError("secret detail")
            async with self.limit.slot():
                if request == b"hold":
                    self.holding.set()
                    await self.release.wait()
            return b"ok"

    servicer = Servicer()
    handler = grpc.method_handlers_generic_handler(
        "demo.v1.Demo", {"Call": grpc.unary_unary_rpc_method_handler(servicer.unary)}
    )
    port = free_port()

    async def scenario() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        server = asyncio.create_task(
            run_grpc_service(
                register=lambda s: s.add_generic_rpc_handlers((handler,)),
                service_names=["demo.v1.Demo"],
                port=port,
                host="127.0.0.1",
                ready=ready,
                stop=stop,
                drain_seconds=1,
            )
        )
        await asyncio.wait_for(ready.wait(), WAIT_S)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/demo.v1.Demo/Call")
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await call(b"bad")
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert bad.value.details() == "request must not be 'bad'"
            with pytest.raises(grpc.aio.AioRpcError) as boom:
                await call(b"boom")
            assert boom.value.code() == grpc.StatusCode.INTERNAL
            assert "secret" not in boom.value.details()
            # One call holds the only slot until released: the next is refused, not queued.
            holder = asyncio.ensure_future(call(b"hold"))
            await asyncio.wait_for(servicer.holding.wait(), WAIT_S)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(b"x")
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            servicer.release.set()
            assert await asyncio.wait_for(holder, WAIT_S) == b"ok"
            assert await call(b"y") == b"ok"  # the slot is free again
        stop.set()
        await asyncio.wait_for(server, WAIT_S)

    asyncio.run(scenario())


def test_concurrency_limit_counts_and_releases() -> None:
    async def scenario() -> None:
        limit = ConcurrencyLimit(2)
        async with limit.slot(), limit.slot():
            assert limit.in_progress == 2
            with pytest.raises(ResourceExhausted, match="2 requests"):
                async with limit.slot():
                    pass
        assert limit.in_progress == 0

    asyncio.run(scenario())
