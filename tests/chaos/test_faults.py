"""Faults with real processes: a TTS replica killed (SIGKILL) in the middle of an HTTP stream and
of a WebSocket response, the Redis server killed and restarted while idle and while audio
streams, the gateway killed under the launcher, an oversized WebSocket frame, and a gateway
whose TTS pool is empty or dies mid-turn.

What a client sees is asserted (complete audio equal to the fault-free run; a failed turn an
`error` + `response.done` failed, or an HTTP stream aborted so the client library raises); how
long things took is measured and recorded (conftest `Chaos.record`), never asserted against the
wall clock, except that success after a recovery must happen at all (within a failsafe bound).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import numpy as np
import openai
import pytest
import redis
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from llmvox_common.constants import JOBS_STREAM
from llmvox_common.tts_streams import WORKERS_KEY_PREFIX, cancel_key

from .conftest import Chaos
from .support import (
    Timed,
    http_speech,
    readyz,
    replicas_holding_jobs,
    wait_until,
    ws_open,
    ws_read_response,
    ws_speak,
)

pytestmark = pytest.mark.integration

# Long enough that a fault lands while audio still streams (about 5 s of work on two cores).
LONG_TEXT = " ".join(f"This is sentence number {i} of the chaos test." for i in range(30))
SHORT_TEXT = "Back again after the fault."
# Near the gateway's max_text_chars (4000): a turn still speaking when Redis is killed.
LONGEST_TEXT = " ".join(f"Sentence {i} keeps the stream going." for i in range(100))[:3990]
RECOVERY_FAILSAFE_S = 60.0  # success must come; the measured time is what the target is about
RECOVERY_TARGET_S = 5.0


def assert_same_audio(got: Timed, want: Timed) -> None:
    """The same samples (float32) as the fault-free run: equal count, and values equal up to
    float rounding (a replica's batch composition changes the last bits, with or without a
    fault)."""
    a = np.frombuffer(bytes(got.audio), dtype="<f4")
    b = np.frombuffer(bytes(want.audio), dtype="<f4")
    assert len(a) == len(b), f"{len(a)} samples, the fault-free run had {len(b)}"
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def replica_child(name: str) -> str:
    """The launcher's child (`tts1`) of a replica's consumer name (`tts1-<host>-<pid>`)."""
    return name.split("-", 1)[0]


def kill_busy_replica(chaos: Chaos) -> tuple[str, int]:
    """SIGKILL one replica that holds a job now; returns its child name and old pid."""
    holders = replicas_holding_jobs(chaos.redis.url)
    assert holders, "no replica holds a job: the fault would miss the turn"
    child = replica_child(sorted(holders)[0])
    pid = chaos.pid(child)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return child, pid


def restarted(chaos: Chaos, child: str, old_pid: int) -> None:
    """The launcher restarted `child` and said so; the others were left running."""
    wait_until(
        lambda: chaos.pid(child) not in (None, old_pid) and chaos.stack.launcher.is_ready(child),
        120.0,
        f"{child} restarted by the launcher",
    )
    assert f"{child} exited (SIGKILL); restarting in" in chaos.stack.launcher.log(200_000)


def new_turn_succeeds(chaos: Chaos) -> bool:
    status, timed = http_speech(chaos.base_url, SHORT_TEXT, timeout_s=30)
    return status == 200 and timed.error is None and len(timed.audio) > 0


# -- TTS replica killed ---------------------------------------------------------------------------


def test_replica_killed_during_an_http_stream(healed: Chaos) -> None:
    chaos = healed
    status, reference = http_speech(chaos.base_url, LONG_TEXT)
    assert status == 200
    assert reference.error is None
    killed: dict[str, Any] = {}

    def kill() -> None:
        killed["child"], killed["pid"] = kill_busy_replica(chaos)
        killed["at"] = time.monotonic()

    status, timed = http_speech(chaos.base_url, LONG_TEXT, on_first_audio=kill)
    assert status == 200
    assert timed.error is None
    assert_same_audio(timed, reference)  # complete, in order, no duplicate
    gap = timed.gaps_around(killed["at"])
    chaos.record(
        "replica_kill_http",
        longest_gap_after_kill_s=round(gap, 3),
        fault_free_longest_gap_s=round(reference.longest_gap, 3),
        audio_bytes=len(timed.audio),
        target_gap_s=1.5,
    )
    restarted(chaos, killed["child"], killed["pid"])


def test_replica_killed_during_a_websocket_response(healed: Chaos) -> None:
    chaos = healed
    killed: dict[str, Any] = {}

    def kill() -> None:
        killed["child"], killed["pid"] = kill_busy_replica(chaos)
        killed["at"] = time.monotonic()

    with ws_open(chaos.base_url) as socket:
        reference = ws_speak(socket, LONG_TEXT)
        assert reference.done["status"] == "completed"
        faulted = ws_speak(socket, LONG_TEXT, on_first_audio=kill)
    assert faulted.errors == []
    assert faulted.done["status"] == "completed"
    assert_same_audio(faulted.timed, reference.timed)
    # Parts came in order, each once (seqs continue from the first response).
    assert faulted.parts == sorted(set(faulted.parts))
    gap = faulted.timed.gaps_around(killed["at"])
    chaos.record(
        "replica_kill_ws",
        longest_gap_after_kill_s=round(gap, 3),
        fault_free_longest_gap_s=round(reference.timed.longest_gap, 3),
        parts=len(faulted.parts),
        target_gap_s=1.5,
    )
    restarted(chaos, killed["child"], killed["pid"])


# -- Redis killed and restarted -------------------------------------------------------------------


def _pids(chaos: Chaos) -> dict[str, int | None]:
    return {name: chaos.pid(name) for name in ("tts1", "tts2", "gateway")}


def _recover(chaos: Chaos, name: str, **figures: Any) -> None:
    """Restart Redis; poll until a new turn succeeds; record how long after Redis answered."""
    chaos.redis.start()
    answered = time.monotonic()
    took = wait_until(lambda: new_turn_succeeds(chaos), RECOVERY_FAILSAFE_S, "a new turn")
    wait_until(lambda: readyz(chaos.base_url)[0] == 200, RECOVERY_FAILSAFE_S, "/readyz 200")
    ready_after = time.monotonic() - answered
    chaos.record(
        name,
        new_turn_ok_after_redis_answered_s=round(took, 3),
        readyz_200_after_s=round(ready_after, 3),
        target_s=RECOVERY_TARGET_S,
        **figures,
    )


def test_redis_killed_and_restarted_while_idle(healed: Chaos) -> None:
    chaos = healed
    before = _pids(chaos)
    log_mark = len(chaos.stack.launcher.log(10_000_000))
    chaos.redis.kill()
    wait_until(lambda: readyz(chaos.base_url)[0] == 503, 30.0, "/readyz 503 while Redis is down")
    status, body = readyz(chaos.base_url)
    assert status == 503
    assert body["checks"]["redis"].startswith("error")
    # A turn asked for while Redis is down is refused before any audio: a JSON 503.
    response = requests.post(
        f"{chaos.base_url}/tts", json={"text": SHORT_TEXT, "verbatim": True}, timeout=30
    )
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "unavailable"
    _recover(chaos, "redis_restart_idle")
    # No process exited: the launcher restarted nothing.
    assert _pids(chaos) == before
    assert "exited" not in chaos.stack.launcher.log(10_000_000)[log_mark:]


def _stream_with(
    client: str, base_url: str, started: threading.Event, fault: threading.Event
) -> Timed:
    """Stream LONGEST_TEXT's speech with one HTTP client library; `started` at its first audio,
    after which it reads on only once `fault` is set (after the fault, so what it reads then is
    what the gateway had sent before the turn broke). What the library raises when the stream
    breaks is kept in `Timed.error`."""
    timed = Timed()

    def got(chunk: bytes) -> None:
        timed.add(chunk)
        started.set()
        fault.wait(60)

    try:
        if client == "requests":
            with requests.post(
                f"{base_url}/tts",
                json={"text": LONGEST_TEXT, "verbatim": True},
                stream=True,
                timeout=60,
            ) as response:
                assert response.status_code == 200
                for chunk in response.iter_content(chunk_size=None):
                    got(chunk)
        elif client == "httpx":
            body = {"text": LONGEST_TEXT, "verbatim": True}
            with httpx2.stream("POST", f"{base_url}/tts", json=body, timeout=60) as response:
                assert response.status_code == 200
                for chunk in response.iter_bytes():
                    got(chunk)
        else:
            api = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
            with api.audio.speech.with_streaming_response.create(
                model="llmvox", voice="default", input=LONGEST_TEXT, response_format="pcm"
            ) as response:
                for chunk in response.iter_bytes():
                    got(chunk)
    except Exception as error:
        timed.error = error
    return timed


def test_redis_killed_mid_stream_fails_turns_visibly(healed: Chaos) -> None:
    """Three HTTP client libraries and a WebSocket stream at once; Redis dies under them. Each
    HTTP client raises (the stream is aborted, not ended cleanly); the WebSocket gets `error`
    and `response.done` failed; then a new turn succeeds once Redis is back."""
    chaos = healed
    before = _pids(chaos)
    clients = ("requests", "httpx", "openai")
    started = {name: threading.Event() for name in clients}
    fault = threading.Event()
    results: dict[str, Any] = {}

    def run(name: str, work: Callable[[], Any]) -> threading.Thread:
        thread = threading.Thread(target=lambda: results.__setitem__(name, work()), daemon=True)
        thread.start()
        return thread

    with ws_open(chaos.base_url) as socket:
        threads = [
            run(name, lambda name=name: _stream_with(name, chaos.base_url, started[name], fault))
            for name in clients
        ]
        for name in clients:
            assert started[name].wait(60), f"{name}: no audio before the fault"
        # The WebSocket last, and Redis killed as soon as its response exists: every turn is
        # surely still running then (each HTTP one has just had the first of its ~100
        # sentences). Killing later raced: a client that stops reading does not hold its turn
        # back once loopback socket buffers (MBs) can take the whole answer, and fast decoding
        # could finish the HTTP turns before the WebSocket's first audio.
        socket.send(json.dumps({"type": "llmvox.text.append", "text": LONGEST_TEXT}))
        socket.send(json.dumps({"type": "llmvox.text.commit"}))
        threads.append(run("ws", lambda: ws_read_response(socket, on_created=chaos.redis.kill)))
        threads[-1].join(timeout=90)
        fault.set()
        for thread in threads:
            thread.join(timeout=90)
            assert not thread.is_alive()
    errors = {}
    for name in clients:
        timed: Timed = results[name]
        assert timed.error is not None, f"{name} saw a clean end of a failed stream"
        errors[name] = type(timed.error).__name__
    assert isinstance(results["requests"].error, requests.exceptions.ChunkedEncodingError)
    assert isinstance(results["httpx"].error, httpx2.RemoteProtocolError)
    assert isinstance(results["openai"].error, (openai.APIConnectionError, httpx2.HTTPError))
    ws = results["ws"]
    assert ws.done["status"] == "failed"
    assert [e["status"] for e in ws.errors] == [503]
    assert ws.done["error"]["code"] == ws.errors[0]["code"]
    assert [e["type"] for e in ws.events[-2:]] == ["response.text.done", "response.done"]
    _recover(chaos, "redis_restart_mid_stream", client_errors=errors, ws_error=ws.errors[0])
    assert _pids(chaos) == before


# -- the gateway killed under the launcher ------------------------------------------------------


def _read_until_closed(socket: ClientConnection) -> None:
    while True:
        socket.recv(timeout=30)


def test_gateway_killed_is_restarted_and_serves_again(healed: Chaos) -> None:
    chaos = healed
    old = chaos.pid("gateway")
    assert old is not None
    replicas = {name: chaos.pid(name) for name in ("tts1", "tts2")}
    with ws_open(chaos.base_url) as socket:
        os.kill(old, signal.SIGKILL)
        killed = time.monotonic()
        # The old gateway's WebSockets are gone with it.
        with pytest.raises(ConnectionClosed):
            _read_until_closed(socket)
        closed = time.monotonic()
    took = wait_until(lambda: new_turn_succeeds(chaos), RECOVERY_FAILSAFE_S, "the new gateway")
    assert chaos.pid("gateway") not in (None, old)
    assert "gateway exited (SIGKILL); restarting in 0.5 s (attempt 1)" in chaos.stack.launcher.log(
        200_000
    )
    with ws_open(chaos.base_url) as fresh:
        assert ws_speak(fresh, SHORT_TEXT).done["status"] == "completed"
    assert {name: chaos.pid(name) for name in replicas} == replicas  # the others kept running
    chaos.record(
        "gateway_kill",
        turn_ok_after_kill_s=round(took, 3),
        closed_after_kill_s=round(closed - killed, 3),
    )


# -- refused requests -----------------------------------------------------------------------------


def test_an_oversized_frame_is_an_error_and_runs_no_response(healed: Chaos) -> None:
    with ws_open(healed.base_url) as socket:
        socket.send(json.dumps({"type": "llmvox.text.append", "text": "x" * 2_000_000}))
        error = json.loads(socket.recv(timeout=30))
        assert error["type"] == "error"
        assert error["error"]["type"] == "too_large"
        # The session goes on; the next event is the next response's, not an empty one's.
        response = ws_speak(socket, SHORT_TEXT)
    assert response.events[0]["type"] == "response.created"
    assert [e["type"] for e in response.events].count("response.created") == 1
    assert response.done["status"] == "completed"


@pytest.fixture
def poolless(chaos: Chaos) -> Iterator[tuple[str, str]]:
    """Another gateway over an empty Redis database (db 1): no replica heartbeat there."""
    url = chaos.redis.url.rsplit("/", 1)[0] + "/1"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    service, base_url = chaos.stack.start_gateway(
        "poolless", "--redis_url", url, "--turn_timeout_s", "60", ready=False
    )
    yield url, base_url
    chaos.stack.stop(service)


def test_no_replica_refuses_at_once_and_leaves_no_job(poolless: tuple[str, str]) -> None:
    url, base_url = poolless
    response = requests.post(
        f"{base_url}/tts", json={"text": SHORT_TEXT, "verbatim": True}, timeout=30
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_tts_replica"
    speech = requests.post(
        f"{base_url}/v1/audio/speech",
        json={"model": "llmvox", "voice": "default", "input": SHORT_TEXT},
        timeout=30,
    )
    assert speech.status_code == 503
    with ws_open(base_url) as socket:
        refused = ws_speak(socket, SHORT_TEXT)
    assert [e["code"] for e in refused.errors] == ["no_tts_replica"]
    assert refused.done["status"] == "failed"
    with redis.Redis.from_url(url) as client:
        assert client.xlen(JOBS_STREAM) == 0  # nothing waits for a replica that starts later
    assert readyz(base_url)[0] == 503


def test_a_pool_that_dies_mid_turn_fails_the_turn_and_cancels_its_jobs(
    poolless: tuple[str, str], chaos: Chaos
) -> None:
    """A FAKE replica heartbeat (a key with a short expiry, no replica behind it) lets the turn
    start; when it lapses the turn fails with no_tts_replica instead of waiting for a timeout,
    and its jobs are cancelled past their deadline."""
    url, base_url = poolless
    with redis.Redis.from_url(url) as client:
        client.set(WORKERS_KEY_PREFIX + "fake-replica", json.dumps({"at_ms": 0}), px=1500)
        with ws_open(base_url) as socket:
            response = ws_speak(socket, SHORT_TEXT)
        assert [e["code"] for e in response.errors] == ["no_tts_replica"]
        assert response.done["status"] == "failed"
        assert client.xlen(JOBS_STREAM) == 1  # enqueued while the (fake) replica lived
        (key,) = client.keys(cancel_key("*"))  # the turn's jobs are cancelled...
        assert client.get(key) == b"0"  # ... up to its last seq
        assert client.ttl(key) > 60  # and past their deadline (turn_timeout_s 60)
    chaos.record("pool_death_mid_turn", failed_after_s=response.done["timings"]["total_s"])
