"""The gateway's WebSocket (`/v1/ws`, docs/gateway.md) against the real stack: a voice turn from a
WAV file, verbatim text streamed in, barge-in, limits and bad events. The TTS replicas run the
tiny profile (**untrained random weights: the audio is noise**); the tests check the protocol.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close
from websockets.sync.client import ClientConnection, connect

from llmvox_common.audio import float_to_pcm16, read_wav
from llmvox_common.tts_streams import cancel_key

from .stack import Stack

pytestmark = pytest.mark.integration

TIMEOUT_S = 240.0
POLL_S = 0.05


def eventually(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Wait until `condition` holds. It reads another process's state (its /metrics), which
    pushes nothing, so it is polled; the timeout is only there to fail instead of hanging."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} (after {timeout:g} s)"
        time.sleep(POLL_S)


def ws_url(base_url: str, query: str = "") -> str:
    return base_url.replace("http://", "ws://") + "/v1/ws" + (f"?{query}" if query else "")


@dataclass
class Received:
    """Everything one response sent, in arrival order."""

    events: list[dict[str, Any]] = field(default_factory=list)
    audio: list[tuple[dict[str, Any], bytes]] = field(default_factory=list)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    @property
    def done(self) -> dict[str, Any]:
        (done,) = self.of("response.done")
        return done["response"]


def receive_until(
    ws: ClientConnection, kind: str, *, received: Received | None = None, timeout: float = TIMEOUT_S
) -> Received:
    """Read events (pairing each audio delta with the binary frame after it) until `kind`."""
    received = received or Received()
    deadline = time.monotonic() + timeout
    pending_audio: dict[str, Any] | None = None
    while True:
        frame = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(frame, bytes):
            assert pending_audio is not None, "binary frame without a response.audio.delta"
            received.audio.append((pending_audio, frame))
            pending_audio = None
            continue
        assert pending_audio is None, "response.audio.delta not followed by its binary frame"
        event = json.loads(frame)
        received.events.append(event)
        if event["type"] == "response.audio.delta":
            pending_audio = event
            if kind == event["type"]:  # return with the frame that belongs to it
                frame = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
                assert isinstance(frame, bytes)
                received.audio.append((event, frame))
                return received
        if event["type"] == kind:
            return received


def assert_audio_in_order(received: Received) -> None:
    offset = 0
    positions = []
    for event, frame in received.audio:
        assert event["format"] == "pcm16"
        assert len(frame) == 2 * event["samples"]
        assert event["sample_offset"] == offset
        offset += event["samples"]
        positions.append((event["seq"], event["part"]))
    assert positions == sorted(positions), positions
    assert len(set(positions)) == len(positions), "a part was delivered twice"
    assert received.done["audio_seconds"] == pytest.approx(offset / 24_000, abs=1e-3)


@contextlib.contextmanager
def open_session(url: str, **kwargs: Any) -> Iterator[tuple[ClientConnection, dict[str, Any]]]:
    with connect(url, open_timeout=30, max_size=None, **kwargs) as ws:
        created = json.loads(ws.recv(timeout=30))
        assert created["type"] == "session.created"
        yield ws, created["session"]


def test_voice_turn_from_a_wav_file(stack: Stack, espeak_bin: str, tmp_path: Path) -> None:
    wav = tmp_path / "question.wav"
    subprocess.run(
        [espeak_bin, "-w", str(wav), "What is the capital of France?"],
        check=True,
        capture_output=True,
    )
    samples, rate = read_wav(wav)
    pcm = float_to_pcm16(samples).tobytes()
    with open_session(ws_url(stack.base_url)) as (ws, session):
        assert session["output_sample_rate"] == 24_000
        assert session["tts_untrained"] is True
        ws.send(json.dumps({"type": "session.update", "session": {"input_sample_rate": rate}}))
        assert (
            receive_until(ws, "session.updated").events[-1]["session"]["input_sample_rate"] == rate
        )
        chunk = rate // 10 * 2  # 100 ms of PCM16, as a browser sends it
        for start in range(0, len(pcm), chunk):
            ws.send(pcm[start : start + chunk])
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        received = receive_until(ws, "response.done")
    final = received.of("transcript.final")
    assert len(final) == 1
    assert "france" in final[0]["text"].lower()
    deltas = "".join(e["delta"] for e in received.of("response.text.delta"))
    assert deltas.strip()
    assert received.done["status"] == "completed"
    assert received.done["text"] == deltas
    timings = received.done["timings"]
    assert 0 < timings["asr_s"] <= timings["llm_first_token_s"] <= timings["first_sentence_s"]
    assert timings["first_sentence_s"] <= timings["first_audio_s"] <= timings["total_s"]
    assert received.audio
    assert_audio_in_order(received)


def test_verbatim_text_streamed_in_by_an_external_llm(stack: Stack) -> None:
    pieces = ["Hel", "lo the", "re. How", " are you", " today?"]
    with open_session(ws_url(stack.base_url)) as (ws, _):
        ws.send(
            json.dumps({"type": "session.update", "session": {"output_audio_format": "float32"}})
        )
        receive_until(ws, "session.updated")
        for piece in pieces:
            ws.send(json.dumps({"type": "llmvox.text.append", "text": piece}))
        ws.send(json.dumps({"type": "llmvox.text.commit"}))
        received = receive_until(ws, "response.done")
    assert received.of("response.created")[0]["response"]["source"] == "verbatim"
    assert received.done["status"] == "completed"
    assert received.done["text"] == "".join(pieces)
    assert received.done["timings"]["llm_first_token_s"] is None
    seqs = sorted({event["seq"] for event, _ in received.audio})
    assert seqs == [0, 1], "two sentences, two TTS jobs"
    for event, frame in received.audio:
        assert event["format"] == "float32"
        assert len(frame) == 4 * event["samples"]
        assert np.isfinite(np.frombuffer(frame, dtype="<f4")).all()


def test_barge_in_cancels_the_answer_and_the_next_turn_plays(stack: Stack) -> None:
    long_text = " ".join(["This is a long answer that nobody wants to hear to the end."] * 8)
    with open_session(ws_url(stack.base_url)) as (ws, session):
        ws.send(json.dumps({"type": "llmvox.text.append", "text": long_text}))
        ws.send(json.dumps({"type": "llmvox.text.commit"}))
        first = receive_until(ws, "response.audio.delta")
        ws.send(json.dumps({"type": "response.cancel"}))
        first = receive_until(ws, "response.done", received=first)
        assert first.done["status"] == "cancelled"
        # The next turn starts at once and is not caught by the earlier cancellation.
        ws.send(json.dumps({"type": "llmvox.text.append", "text": "Short one."}))
        ws.send(json.dumps({"type": "llmvox.text.commit"}))
        second = receive_until(ws, "response.done")
    # The next answer's jobs come after the cancelled ones (one sentence: one seq).
    assert second.done["status"] == "completed"
    assert second.audio
    assert_audio_in_order(second)
    (next_seq,) = {event["seq"] for event, _ in second.audio}
    assert next_seq >= 1
    # The cancel reached the TTS pool: replicas drop every job of the answer, up to the seq
    # before the next answer's, which the cancel leaves alone.
    with redis.Redis.from_url(stack.redis_url) as client:
        assert client.get(cancel_key(session["id"])) == str(next_seq - 1).encode()
    # The answer's audio ended at the cancel: what the client got, in order, is all the
    # response reports, and nothing of it came after its response.done.
    assert first.audio
    assert_audio_in_order(first)
    assert max(event["seq"] for event, _ in first.audio) < next_seq
    first_id = first.of("response.created")[0]["response"]["id"]
    assert all(e.get("response_id") != first_id for e in second.events), "stale audio or text"


def test_new_request_barges_in_on_a_running_response(stack: Stack) -> None:
    long_text = " ".join(["Another answer that will be interrupted before it ends."] * 8)
    with open_session(ws_url(stack.base_url)) as (ws, _):
        ws.send(json.dumps({"type": "llmvox.text.append", "text": long_text}))
        ws.send(json.dumps({"type": "llmvox.text.commit"}))
        received = receive_until(ws, "response.audio.delta")
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Hi"}],
        }
        ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        ws.send(json.dumps({"type": "response.create"}))
        received = receive_until(ws, "response.done", received=received)
        assert received.done["status"] == "cancelled"
        second = receive_until(ws, "response.done")
    assert second.of("response.created")[0]["response"]["source"] == "llm"
    assert second.done["status"] == "completed"


def test_bad_events_get_error_events_and_the_session_goes_on(stack: Stack) -> None:
    with open_session(ws_url(stack.base_url)) as (ws, _):
        for bad, needle in [
            ("{nope", "invalid"),
            (json.dumps({"type": "no.such.event"}), "type"),
            (
                json.dumps({"type": "session.update", "session": {"input_sample_rate": 5}}),
                "input_sample_rate",
            ),
            (json.dumps({"type": "input_audio_buffer.commit"}), "empty"),
            (json.dumps({"type": "input_audio_buffer.append", "audio": "@@"}), "base64"),
            (json.dumps({"type": "llmvox.text.append", "text": "x" * 5000}), "4000"),
        ]:
            ws.send(bad)
            error = receive_until(ws, "error").events[-1]["error"]
            assert needle in error["message"], (bad, error)
        ws.send(b"\x00")  # odd byte count: not PCM16
        assert "odd" in receive_until(ws, "error").events[-1]["error"]["message"]
        ws.send(json.dumps({"type": "llmvox.text.append", "text": "Still here."}))
        ws.send(json.dumps({"type": "llmvox.text.commit"}))
        # The oversized text above started and closed a response; read up to the new one's end.
        received = receive_until(ws, "response.done")
        while received.done["text"] != "Still here.":
            received = receive_until(ws, "response.done")
    assert received.done["status"] == "completed"


def test_session_limit_api_key_and_idle_timeout(stack: Stack) -> None:
    gateway, url = stack.start_gateway(
        "gateway-ws-limits",
        "--max_sessions",
        "1",
        "--api_keys",
        "secret",
        "--idle_timeout_s",
        "2",
    )
    try:
        with connect(ws_url(url), open_timeout=30) as ws:
            assert json.loads(ws.recv(timeout=10))["error"]["type"] == "unauthorized"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1008

        with open_session(ws_url(url, "api_key=secret")) as (ws, _):
            with connect(ws_url(url, "api_key=secret"), open_timeout=30) as second:
                assert json.loads(second.recv(timeout=10))["error"]["type"] == "busy"
                with pytest.raises(ConnectionClosed) as closed:
                    second.recv(timeout=10)
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1013
            # Nothing sent for longer than idle_timeout_s: the server closes normally.
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1000
            assert "idle" in closed.value.rcvd.reason

    finally:
        stack.stop(gateway)


def test_audio_append_as_base64_json_and_clear(stack: Stack) -> None:
    with open_session(ws_url(stack.base_url)) as (ws, _):
        silence = base64.b64encode(np.zeros(1600, "<i2").tobytes()).decode()
        ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": silence}))
        ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        receive_until(ws, "input_audio_buffer.cleared")
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        assert "empty" in receive_until(ws, "error").events[-1]["error"]["message"]


def test_oversized_message_closes_with_1009(stack: Stack) -> None:
    with open_session(ws_url(stack.base_url)) as (ws, _):
        ws.send(b"\0" * (5 * 1024 * 1024))  # above the gateway's 4 MiB message bound
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)  # nothing is sent to this session before the close
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009


def test_barge_in_on_an_llm_answer_cancels_the_llm_call(stack: Stack) -> None:
    before = stack.llm_calls_cancelled()
    with open_session(ws_url(stack.base_url)) as (ws, _):
        content = [{"type": "input_text", "text": "Tell me a long story about a dragon."}]
        item = {"type": "message", "role": "user", "content": content}
        ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        ws.send(json.dumps({"type": "response.create"}))
        received = receive_until(ws, "response.text.delta")
        ws.send(json.dumps({"type": "response.cancel"}))
        received = receive_until(ws, "response.done", received=received)
    assert received.done["status"] == "cancelled"
    assert received.of("response.text.delta")
    eventually(
        lambda: stack.llm_calls_cancelled() >= before + 1,
        "the LLM server never saw the call cancelled",
    )


def test_a_client_that_does_not_read_is_dropped_not_buffered(stack: Stack) -> None:
    """send_queue_frames bounds what the gateway holds for one client: a client that stops
    reading (tiny socket buffer, no reads) is closed with 1008 instead of growing memory."""
    gateway, url = stack.start_gateway("gateway-slow-client", "--send_queue_frames", "8")
    try:
        host, port = url.removeprefix("http://").split(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        with open_session(ws_url(url), sock=sock, max_queue=1) as (ws, _):
            text = " ".join(["Audio piles up for a client that never reads it."] * 70)
            ws.send(json.dumps({"type": "llmvox.text.append", "text": text}))
            ws.send(json.dumps({"type": "llmvox.text.commit"}))
            # Not read from the socket (reading would make the client fast): the gateway's
            # count of dropped clients says when it gave up on this one.
            eventually(
                lambda: "slow_clients_dropped_total 1.0" in _metrics(url),
                "the slow client was never dropped",
                timeout=TIMEOUT_S,
            )
            close = _drain_until_closed(ws)
            assert close is not None
            assert close.code == 1008
            assert "slow" in close.reason
    finally:
        stack.stop(gateway)


def _metrics(url: str) -> str:
    return urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()


def _drain_until_closed(ws: ClientConnection) -> Close | None:
    """Read what was already on the wire, then return the close frame the server sent."""
    while True:
        try:
            ws.recv(timeout=30)
        except ConnectionClosed as closed:
            return closed.rcvd
