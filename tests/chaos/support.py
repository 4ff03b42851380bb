"""What the chaos tests (and bench/chaos.py) share: a private Redis server they may kill and
restart, clients that record when each piece of audio arrived, and questions to Redis about the
TTS pool (live heartbeats, which replica holds a job).

The Redis is a real `redis-server` on a free port, started with the launcher's own command for a
local Redis (`llmvox_launch.machine.redis_server_argv`: no persistence, as `make run` has it), so a
restart loses every key: the hardest case for the replicas and the gateway.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests
from websockets.sync.client import ClientConnection, connect

from llmvox_common.constants import CONSUMER_GROUP, JOBS_STREAM
from llmvox_common.tts_streams import WORKERS_KEY_PREFIX
from llmvox_launch.machine import free_port, redis_server_argv

POLL_S = 0.05  # between two looks at a condition nothing signals
WS_RECV_S = 60.0  # a failsafe on one WebSocket receive, never a pace


def say(message: str) -> None:
    print(f"[chaos] {message}", flush=True)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll `condition` until it holds; returns the seconds it took. Raises AssertionError naming
    `what` after `timeout_s` (a failsafe: conditions normally hold long before)."""
    started = time.monotonic()
    gave_up = threading.Event()
    timer = threading.Timer(timeout_s, gave_up.set)
    timer.start()
    try:
        while True:
            with contextlib.suppress(Exception):
                if condition():
                    return time.monotonic() - started
            if gave_up.wait(POLL_S):
                raise AssertionError(f"{what}: not within {timeout_s:g} s")
    finally:
        timer.cancel()


# -- a Redis the test owns --------------------------------------------------------------------


class RedisServer:
    """`redis-server` on a free loopback port: `kill` (SIGKILL), `start` again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        argv = redis_server_argv(self.url, say=lambda _: None, install=False)
        assert argv is not None, f"something answers at {self.url} already"
        # The launcher's command, with this test's own directory for anything Redis writes.
        self.argv = [*argv[: argv.index("--dir")], "--dir", str(workdir)]
        self.log_path = workdir / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self.answers, 20.0, f"redis-server on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save; returns once the process is gone."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=20)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=5)

    def answers(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False


def live_replicas(redis_url: str) -> set[str]:
    """Names of the TTS replicas whose heartbeat key lives."""
    with redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=5) as client:
        keys = client.keys(WORKERS_KEY_PREFIX + "*")
    return {key.decode()[len(WORKERS_KEY_PREFIX) :] for key in keys}


def replicas_holding_jobs(redis_url: str) -> set[str]:
    """Consumers (replica names) with pending jobs in the jobs stream's group."""
    with redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=5) as client:
        try:
            summary = client.xpending(JOBS_STREAM, CONSUMER_GROUP)
        except redis.ResponseError:  # no stream or group yet
            return set()
    consumers = summary.get("consumers") or []
    return {
        (c["name"].decode() if isinstance(c["name"], bytes) else c["name"])
        for c in consumers
        if int(c["pending"]) > 0
    }


def readyz(base_url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{base_url}/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


# -- clients that time their audio ------------------------------------------------------------


@dataclass
class Timed:
    """Audio as it arrived: bytes, arrival times (monotonic), and how it ended."""

    audio: bytearray = field(default_factory=bytearray)
    arrivals: list[float] = field(default_factory=list)
    error: BaseException | None = None  # what the client raised (HTTP)

    def add(self, data: bytes) -> None:
        self.audio += data
        self.arrivals.append(time.monotonic())

    def gaps_around(self, at: float) -> float:
        """The longest wait between two pieces of audio from `at` on (a fault's effect)."""
        times = [at, *(t for t in self.arrivals if t >= at)]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    @property
    def longest_gap(self) -> float:
        times = self.arrivals
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def http_speech(
    base_url: str,
    text: str,
    *,
    on_first_audio: Callable[[], None] | None = None,
    timeout_s: float = 120.0,
) -> tuple[int, Timed]:
    """POST /tts `verbatim` with `requests`, streaming; the status and the audio. A stream that
    breaks is recorded in `Timed.error` (what `requests` raised)."""
    timed = Timed()
    response = requests.post(
        f"{base_url}/tts", json={"text": text, "verbatim": True}, stream=True, timeout=timeout_s
    )
    with response:
        if response.status_code != 200:
            return response.status_code, timed
        try:
            for chunk in response.iter_content(chunk_size=None):
                if chunk:
                    first = not timed.arrivals
                    timed.add(chunk)
                    if first and on_first_audio is not None:
                        on_first_audio()
        except requests.RequestException as error:
            timed.error = error
    return 200, timed


@dataclass
class WsResponse:
    events: list[dict[str, Any]]
    timed: Timed
    parts: list[tuple[int, int]]  # (seq, part) in arrival order

    @property
    def done(self) -> dict[str, Any]:
        return next(e for e in self.events if e["type"] == "response.done")["response"]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e["error"] for e in self.events if e["type"] == "error"]


def ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://", 1) + "/v1/ws"


@contextlib.contextmanager
def ws_open(base_url: str) -> Iterator[ClientConnection]:
    """A WebSocket session of `GET /v1/ws` asking for float32 audio; closed on leaving."""
    with connect(ws_url(base_url), max_size=None, open_timeout=10) as socket:
        created = json.loads(socket.recv(timeout=WS_RECV_S))
        assert created["type"] == "session.created", created
        update = {"type": "session.update", "session": {"output_audio_format": "float32"}}
        socket.send(json.dumps(update))
        assert json.loads(socket.recv(timeout=WS_RECV_S))["type"] == "session.updated"
        yield socket


def ws_speak(
    socket: ClientConnection,
    text: str,
    *,
    on_first_audio: Callable[[], None] | None = None,
) -> WsResponse:
    """One verbatim response (`llmvox.text.append` + `commit`), read to its `response.done`."""
    socket.send(json.dumps({"type": "llmvox.text.append", "text": text}))
    socket.send(json.dumps({"type": "llmvox.text.commit"}))
    return ws_read_response(socket, on_first_audio=on_first_audio)


def ws_read_response(
    socket: ClientConnection,
    *,
    on_created: Callable[[], None] | None = None,
    on_first_audio: Callable[[], None] | None = None,
) -> WsResponse:
    events: list[dict[str, Any]] = []
    timed = Timed()
    parts: list[tuple[int, int]] = []
    while True:
        try:
            message = socket.recv(timeout=WS_RECV_S)
        except TimeoutError:
            seen = [e["type"] for e in events]
            raise AssertionError(f"no response.done after {WS_RECV_S:g} s; saw {seen}") from None
        if isinstance(message, bytes):
            first = not timed.arrivals
            timed.add(message)
            if first and on_first_audio is not None:
                on_first_audio()
            continue
        event = json.loads(message)
        events.append(event)
        if event["type"] == "response.created" and on_created is not None:
            on_created()
        if event["type"] == "response.audio.delta":
            parts.append((event["seq"], event["part"]))
        if event["type"] == "response.done":
            return WsResponse(events, timed, parts)
