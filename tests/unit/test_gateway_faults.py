"""The gateway's fault paths with in-memory FAKES of the TTS pool (tests/unit/gateway_fakes.py):
an oversized first verbatim frame runs no response; no live replica refuses a turn before any job
is opened; a pool that dies while a turn waits for audio fails the turn and cancels its jobs.
The same cases run against real processes in tests/chaos."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from llmvox_gateway.runtime import GatewayRuntime
from llmvox_gateway.ws_session import WsSession

from .gateway_fakes import WAIT_S, FakeSocket, FakeTts, fake_runtime

pytestmark = pytest.mark.unit


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 3 * WAIT_S))


@asynccontextmanager
async def session(runtime: GatewayRuntime) -> AsyncIterator[FakeSocket]:
    socket = FakeSocket()
    task = asyncio.create_task(WsSession(socket, runtime).run())  # type: ignore[arg-type]
    await socket.wait_for("session.created")
    try:
        yield socket
    finally:
        socket.disconnect()
        await task


class FakePool:
    """A FAKE count of live replicas, changed by the test."""

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.asked = 0

    async def __call__(self) -> int:
        self.asked += 1
        return self.replicas


def watched(runtime: GatewayRuntime, pool: FakePool) -> GatewayRuntime:
    runtime.watch_pool = True
    runtime.live_replicas = pool  # type: ignore[method-assign]
    return runtime


def test_an_oversized_first_frame_is_an_error_and_runs_no_response() -> None:
    tts = FakeTts()

    async def scenario() -> None:
        async with session(fake_runtime(tts=tts, max_text_chars=100)) as socket:
            socket.send({"type": "llmvox.text.append", "text": "x" * 2_000_000})
            error = await socket.wait_for("error")
            socket.send({"type": "llmvox.text.append", "text": "Hello there."})
            socket.send({"type": "llmvox.text.commit"})
            done = await socket.wait_for("response.done")
        assert error["error"]["type"] == "too_large"
        assert done["response"]["status"] == "completed"
        assert [e["type"] for e in socket.events].count("response.created") == 1
        types = [e["type"] for e in socket.events]
        assert types.index("error") < types.index("response.created")
        assert list(tts.jobs) == [0]  # only the second response's sentence

    run(scenario)


def test_no_live_replica_refuses_the_turn_before_any_job() -> None:
    tts = FakeTts()
    pool = FakePool(0)

    async def scenario() -> None:
        async with session(watched(fake_runtime(tts=tts), pool)) as socket:
            socket.send({"type": "llmvox.text.append", "text": "Nobody will say this."})
            socket.send({"type": "llmvox.text.commit"})
            done = await socket.wait_for("response.done")
        assert [e["error"]["code"] for e in socket.of("error")] == ["no_tts_replica"]
        assert done["response"]["status"] == "failed"
        assert done["response"]["error"]["status"] == 503
        assert tts.jobs == {}
        assert tts.cancels == []  # nothing was opened, nothing to cancel

    run(scenario)


def test_a_pool_that_dies_mid_turn_fails_it_and_cancels_its_jobs() -> None:
    tts = FakeTts(hold=True)  # the audio never comes: the replica that took the job is gone
    pool = FakePool(1)

    async def scenario() -> None:
        async with session(watched(fake_runtime(tts=tts), pool)) as socket:
            socket.send({"type": "llmvox.text.append", "text": "Half of this. Then nothing."})
            socket.send({"type": "llmvox.text.commit"})
            await tts.changes.until(lambda: len(tts.jobs) == 2)
            pool.replicas = 0  # every heartbeat lapsed
            done = await socket.wait_for("response.done")
        assert [e["error"]["code"] for e in socket.of("error")] == ["no_tts_replica"]
        assert done["response"]["status"] == "failed"
        assert tts.cancels == [1]  # up to the last opened seq

    run(scenario)
