"""The `stack` fixture: the whole platform started once per test session (see stack.py).

`stack.base_url` is the gateway's `http://127.0.0.1:PORT`; `stack.start_gateway(name, *flags)`
starts another gateway over the same services (other limits, API keys). The Redis database is
`LLMVOX_TEST_E2E_REDIS_URL` (default db 13), flushed when the stack starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import ensure_espeak, scratch_redis_url

from .stack import DEFAULT_E2E_REDIS_URL, E2E_REDIS_ENV, Stack, running_stack

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "out" / "test-artifacts"


@pytest.fixture(scope="session")
def e2e_redis_url() -> str:
    url = scratch_redis_url(E2E_REDIS_ENV, DEFAULT_E2E_REDIS_URL)
    with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5) as client:
        client.flushdb()
    return url


@pytest.fixture(scope="session")
def stack(e2e_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("stack-logs")
    with running_stack(e2e_redis_url, log_dir) as running:
        yield running


@pytest.fixture(scope="session")
def espeak_bin() -> str:
    return ensure_espeak()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
