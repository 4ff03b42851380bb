"""One try of each readiness check: ready or not yet, and what was seen (for the message when a
service never gets ready).

Each try is bounded by `per_try_s` seconds; a service that is still starting (port closed, model
loading, key not written) is simply "not yet". `LogLine` is answered by the supervisor, which
sees the output.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import NamedTuple

from .plan import GrpcHealth, HttpOk, LogLine, Readiness, RedisKeyExists, RedisPing


class Probe(NamedTuple):
    ready: bool
    seen: str  # e.g. "NOT_SERVING", "HTTP 503: {...}", "no key ..."


async def grpc_serving(addr: str, per_try_s: float) -> Probe:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=per_try_s)
        except grpc.aio.AioRpcError as error:
            return Probe(False, f"gRPC health at {addr}: {error.code().name}")
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return Probe(reply.status == health_pb2.HealthCheckResponse.SERVING, status)


def written_at_ms(value: bytes | str) -> int | None:
    """`at_ms` of a heartbeat's JSON (docs/redis-contract.md); None when it has none."""
    try:
        at_ms = json.loads(value).get("at_ms")
    except (ValueError, AttributeError):
        return None
    if isinstance(at_ms, bool) or not isinstance(at_ms, int | float):
        return None
    return int(at_ms)


async def redis_probe(
    url: str, key: str | None, per_try_s: float, since_ms: int | None = None
) -> Probe:
    """PING, or the key exists; with `since_ms`, a heartbeat written before then (by the run of
    the child before a restart: the key outlives it by its expiry) does not count."""
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    client = Redis.from_url(url, socket_connect_timeout=per_try_s, socket_timeout=per_try_s)
    try:
        if key is None:
            return Probe(bool(await client.ping()), "PING answered")
        value = await client.get(key)
        if value is None:
            return Probe(False, f"no heartbeat key {key} yet")
        at_ms = written_at_ms(value) if since_ms is not None else None
        if since_ms is not None and at_ms is not None and at_ms < since_ms:
            return Probe(False, f"{key} is from before this start")
        return Probe(True, f"{key} exists")
    except (RedisError, OSError) as error:
        return Probe(False, f"Redis at {url}: {error}")
    finally:
        await client.aclose()


def _http_get(url: str, per_try_s: float) -> Probe:
    try:
        with urllib.request.urlopen(url, timeout=per_try_s) as response:
            return Probe(response.status == 200, f"HTTP {response.status}")
    except urllib.error.HTTPError as error:
        body = error.read(500).decode("utf-8", "replace").strip()
        return Probe(False, f"HTTP {error.code} from {url}: {body}")
    except (urllib.error.URLError, OSError, ValueError) as error:
        return Probe(False, f"{url}: {getattr(error, 'reason', error)}")


async def check(ready: Readiness, per_try_s: float = 2.0, since_ms: int | None = None) -> Probe:
    match ready:
        case GrpcHealth(addr):
            return await grpc_serving(addr, per_try_s)
        case RedisKeyExists(url, key):
            return await redis_probe(url, key, per_try_s, since_ms)
        case RedisPing(url):
            return await redis_probe(url, None, per_try_s)
        case HttpOk(url):
            return await asyncio.to_thread(_http_get, url, per_try_s)
        case LogLine():
            raise TypeError("LogLine readiness is decided from the child's output")
