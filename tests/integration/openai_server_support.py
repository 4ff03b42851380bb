"""A real OpenAI-compatible chat server on loopback for the tests of the gateway's `openai` LLM
backend: `transformers serve` (the CLI of the installed transformers, with FastAPI and uvicorn)
pinned to the SmolLM2-135M-Instruct conversion the LLM tests already use, offline.

`Relay` is a plain TCP relay put between the gateway and that server, so a test can watch the
connection from the server's side: how many response bytes went through, whether the answer's
end arrived, and whether the gateway closed the connection before it (the way an OpenAI-compatible
server is told to stop generating). With `corrupt` set it also alters the server's answer in
transit (a malformed stream, byte count unchanged so the HTTP framing stays valid).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .llm_support import OFFLINE_ENV, free_port, smollm2_dir

# Measured here: ~20 s from start to /health on 2 shared cores (imports, then the pinned model).
STARTUP_TIMEOUT_S = 240.0
POLL_S = 0.2  # between two /health tries of a server that is still starting


def transformers_cli() -> list[str]:
    script = Path(sys.executable).with_name("transformers")
    if not script.is_file():
        pytest.fail("the `transformers` CLI is missing from the virtual environment")
    return [str(script)]


@dataclass
class OpenAiServer:
    """`transformers serve` pinned to one model: requests naming another model get a 400."""

    port: int
    model: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def prompt_tokens(self) -> list[int]:
        """The prompt length of each request so far, from the lines `--enable-log-requests`
        writes: what the model read, images included."""
        return [
            int(n) for n in re.findall(r"Request \S+: model .*?, (\d+) prompt tokens", self.log(-1))
        ]

    def log(self, tail: int = 4000) -> str:
        text = self.log_path.read_text(errors="replace")
        return text if tail < 0 else text[-tail:]

    def kill(self) -> None:
        """SIGKILL, as a crash: no response is finished, the sockets just close."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def openai_server(
    log_path: Path, model_dir: Path | None = None, *args: str
) -> Iterator[OpenAiServer]:
    """The server on a free port, pinned to `model_dir` (default SmolLM2), `args` added."""
    model = str(model_dir or smollm2_dir())
    port = free_port()
    command = [
        *transformers_cli(),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        *args,
        model,  # pinned: loaded at start, never unloaded, the only model served
    ]
    # One compute thread: the tests share two cores with the gateway, ASR and TTS processes.
    env = {**os.environ, **OFFLINE_ENV, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = OpenAiServer(port, model, process, log_path)
    try:
        _wait_healthy(server)
        yield server
    finally:
        server.stop()


def _wait_healthy(server: OpenAiServer) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    url = f"http://127.0.0.1:{server.port}/health"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(
                f"transformers serve exited with {server.process.returncode}:\n{server.log()}"
            )
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(url, timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(POLL_S)  # nothing signals readiness but the port answering
    pytest.fail(f"transformers serve not healthy after {STARTUP_TIMEOUT_S:g} s:\n{server.log()}")


# -- the relay ----------------------------------------------------------------------------------

# The end of a chunked HTTP/1.1 body: the server finished the response.
_CHUNKED_END = b"\r\n0\r\n\r\n"


@dataclass
class Relayed:
    """One connection through the relay, as the server side sees it."""

    request: bytearray = field(default_factory=bytearray)
    response: bytearray = field(default_factory=bytearray)
    client_closed: bool = False  # the gateway's side ended (closed, reset, or closed by us)
    server_closed: bool = False
    first_closed: str | None = None  # "client" | "server": who ended the connection

    @property
    def is_chat_stream(self) -> bool:
        # Any request on the connection (an HTTP client reuses connections).
        return b"POST /v1/chat/completions" in self.request

    @property
    def response_complete(self) -> bool:
        """The server sent the end of every (chunked) answer asked for on this connection."""
        asked = self.request.count(b"POST /v1/chat/completions")
        return self.response.count(_CHUNKED_END) >= asked

    @property
    def content_chunks(self) -> int:
        """Streamed chunks that carried text."""
        return self.response.count(b'"content":')

    @property
    def cut_by_client(self) -> bool:
        """The gateway went away while the server was still answering."""
        return self.first_closed == "client" and not self.response_complete


class Relay:
    """TCP relay 127.0.0.1:port → `upstream_port`, one thread per direction per connection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.corrupt: tuple[bytes, bytes] | None = None  # (old, new), same length
        self.connections: list[Relayed] = []
        self._changed = threading.Condition()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, name="relay-accept", daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def chat_streams(self) -> list[Relayed]:
        with self._changed:
            return [c for c in self.connections if c.is_chat_stream]

    def wait_for(self, condition: Callable[[], bool], timeout: float = 60.0) -> bool:
        """Waits until `condition` (over the connections) holds, woken at every change; the
        timeout is a failsafe for a broken test, never a pace."""
        with self._changed:
            return self._changed.wait_for(condition, timeout=timeout)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()  # the server is down: the gateway sees its connection refused
                continue
            server.settimeout(None)
            relayed = Relayed()
            with self._changed:
                self.connections.append(relayed)
                self._changed.notify_all()
            threading.Thread(
                target=self._pump, args=(client, server, relayed, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(server, client, relayed, False), daemon=True
            ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, relayed: Relayed, up: bool) -> None:
        try:
            while True:
                try:
                    data = source.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    break
                if not up and self.corrupt is not None:
                    data = data.replace(*self.corrupt)
                with self._changed:
                    (relayed.request if up else relayed.response).extend(data)
                    self._changed.notify_all()
                try:
                    sink.sendall(data)
                except OSError:
                    break
        finally:
            with self._changed:
                if relayed.first_closed is None:
                    relayed.first_closed = "client" if up else "server"
                if up:
                    relayed.client_closed = True
                else:
                    relayed.server_closed = True
                self._changed.notify_all()
            # Either side gone: the other one is closed too, as a dropped connection is.
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


@contextlib.contextmanager
def relay(upstream_port: int) -> Iterator[Relay]:
    running = Relay(upstream_port)
    try:
        yield running
    finally:
        running.close()


def refused_base_url() -> str:
    """An API root on a loopback port nothing listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}/v1"
