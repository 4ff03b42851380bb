"""The platform with an OpenAI-compatible chat server as its brain (`llm_backend = openai`),
end to end: `llmvox-launch`'s plan with `--llm_backend openai` (no `llmvox-llm` process; the
gateway calls the server), and a REAL OpenAI-compatible server on loopback — `transformers serve`
with SmolLM2-135M-Instruct, offline — reached through a TCP relay that shows the connection from
the server's side (tests/integration/openai_server_support.py).

The TTS replica runs the tiny profile (**untrained random weights: the audio is noise**): these
tests check the brain's path — typed and spoken turns, barge-in closing the server's stream, and
the failures a turn must report instead of hanging (unknown model, server down, server killed).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from llmvox_common.audio import float_to_pcm16, read_wav
from llmvox_launch.machine import probe
from llmvox_launch.plan import build_plan
from tests.integration.openai_server_support import (
    OpenAiServer,
    Relay,
    openai_server,
    refused_base_url,
    relay,
)

from .stack import Launcher, Stack, e2e_settings, readiness, service_env
from .test_http_api import QUESTION, speak_wav, upstream_client
from .test_websocket import Received, open_session, receive_until, ws_url

pytestmark = pytest.mark.integration

# Greedy SmolLM2 counts on for hundreds of tokens: an answer still streaming when a test acts.
LONG = "Count from 1 to 300, separated by commas."
MAX_TOKENS = 400  # the brain's answers are short (EOS) unless asked to count
WAIT_S = 240.0  # failsafe of every wait on a condition


@dataclass
class Brain:
    stack: Stack
    server: OpenAiServer
    relay: Relay


@contextlib.contextmanager
def openai_stack(redis_url: str, log_dir: Path, base_url: str, model: str) -> Iterator[Stack]:
    """The e2e stack (tests/e2e/stack.py) from the launcher's plan, with the OpenAI-compatible
    brain instead of the built-in LLM: ASR, one TTS replica and the gateway."""
    settings = e2e_settings(redis_url, replicas=1).model_copy(
        update={
            "llm_backend": "openai",
            "llm_base_url": base_url,
            "llm_model": model,
            "llm_max_tokens": MAX_TOKENS,
            "system_prompt": "You are a helpful assistant. Answer briefly.",
        }
    )
    plan = build_plan(settings, probe(settings, install=False))
    assert "llm" not in {child.name for child in plan.children}
    env = {**os.environ, **service_env(0)}
    launcher = Launcher(plan, settings, env, log_dir / "launch.log")
    stack = Stack(redis_url, log_dir, plan, launcher, base_url=plan.url.rstrip("/"))
    try:
        launcher.start()
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture(scope="module")
def brain(e2e_redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Brain]:
    log_dir = tmp_path_factory.mktemp("openai-brain")
    with (
        openai_server(log_dir / "serve.log") as server,
        relay(server.port) as watched,
        openai_stack(e2e_redis_url, log_dir, watched.base_url, server.model) as stack,
    ):
        yield Brain(stack, server, watched)


def ask(ws: Any, text: str) -> None:
    content = [{"type": "input_text", "text": text}]
    item = {"type": "message", "role": "user", "content": content}
    ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
    ws.send(json.dumps({"type": "response.create"}))


def error_of(response: requests.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    return error


def failed_with(received: Received, code: str) -> dict[str, Any]:
    """The response ended with one `error` event and a failed `response.done`, both `code`."""
    (event,) = received.of("error")
    assert event["error"]["code"] == code, event
    done = received.done
    assert done["status"] == "failed", done
    assert done["error"]["code"] == code
    return dict(event["error"])


def test_typed_turns_over_http_and_the_websocket(brain: Brain) -> None:
    status, body = readiness(brain.stack.base_url)
    assert status == 200, body
    assert body["checks"]["llm"] == "ok"
    audio = upstream_client(f"{brain.stack.base_url}/tts", {"text": QUESTION})
    assert audio.size > 0
    with open_session(ws_url(brain.stack.base_url)) as (ws, _):
        ask(ws, QUESTION)
        received = receive_until(ws, "response.done")
    done = received.done
    assert done["status"] == "completed", done
    assert "Paris" in done["text"]
    assert "".join(e["delta"] for e in received.of("response.text.delta")) == done["text"]
    assert done["timings"]["llm_first_token_s"] is not None
    assert received.audio
    # The calls went to the OpenAI-compatible server, streamed, with the gateway's settings.
    requests_seen = b"".join(bytes(c.request) for c in brain.relay.chat_streams())
    assert b'"stream":true' in requests_seen.replace(b" ", b"")
    assert f'"max_tokens":{MAX_TOKENS}'.encode() in requests_seen.replace(b" ", b"")


def test_spoken_turn(brain: Brain, espeak_bin: str, tmp_path: Path) -> None:
    wav = speak_wav(espeak_bin, QUESTION, tmp_path / "question.wav")
    payload = {
        "audio_base64": base64.b64encode(wav.read_bytes()).decode(),
        "source_language": "en",
        "target_language": "en",
    }
    assert upstream_client(f"{brain.stack.base_url}/voicechat", payload).size > 0
    samples, rate = read_wav(wav)
    pcm = float_to_pcm16(samples).tobytes()
    with open_session(ws_url(brain.stack.base_url)) as (ws, _):
        ws.send(json.dumps({"type": "session.update", "session": {"input_sample_rate": rate}}))
        receive_until(ws, "session.updated")
        ws.send(pcm)
        ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        received = receive_until(ws, "response.done")
    assert "france" in received.of("transcript.final")[0]["text"].lower()
    assert received.done["status"] == "completed", received.done
    assert received.done["text"]


def test_barge_in_closes_the_servers_stream(brain: Brain) -> None:
    with open_session(ws_url(brain.stack.base_url)) as (ws, _):
        ask(ws, LONG)
        received = receive_until(ws, "response.text.delta")
        ws.send(json.dumps({"type": "response.cancel"}))
        received = receive_until(ws, "response.done", received=received)
    assert received.done["status"] == "cancelled"

    def asked(connection: Any) -> bool:
        return LONG.encode() in connection.request

    # Seen from the server's side: the gateway closed the connection mid-answer, which is
    # what makes an OpenAI-compatible server stop generating.
    assert brain.relay.wait_for(
        lambda: any(asked(c) and c.cut_by_client for c in brain.relay.chat_streams()), WAIT_S
    ), "the gateway never closed the server's stream"
    (connection,) = [c for c in brain.relay.chat_streams() if asked(c)]
    assert connection.content_chunks < MAX_TOKENS


def test_unknown_model_is_a_clear_error(brain: Brain) -> None:
    gateway, url = brain.stack.start_gateway(
        "gateway-unknown-model", "--llm_model", "no-such-model"
    )
    try:
        answer = requests.post(f"{url}/tts", json={"text": QUESTION}, timeout=WAIT_S)
        assert answer.status_code == 422
        error = error_of(answer)
        assert error["code"] == "llm_request_refused"
        assert "no-such-model" in error["message"]
        with open_session(ws_url(url)) as (ws, _):
            ask(ws, QUESTION)
            failed_with(receive_until(ws, "response.done"), "llm_request_refused")
    finally:
        brain.stack.stop(gateway)


def test_server_down_is_unavailable(brain: Brain) -> None:
    gateway, url = brain.stack.start_gateway(
        "gateway-llm-down", "--llm_base_url", refused_base_url(), ready=False
    )
    try:
        status, body = readiness(url)
        assert status == 503
        assert body["checks"]["llm"].startswith("not serving at http://127.0.0.1:")
        answer = requests.post(f"{url}/tts", json={"text": QUESTION}, timeout=WAIT_S)
        assert answer.status_code == 503
        assert error_of(answer)["code"] == "llm_unreachable"
        with open_session(ws_url(url)) as (ws, _):
            ask(ws, QUESTION)
            error = failed_with(receive_until(ws, "response.done"), "llm_unreachable")
        assert error["status"] == 503
    finally:
        brain.stack.stop(gateway)


@pytest.mark.parametrize("path", ["ws", "http"])
def test_server_killed_mid_answer(brain: Brain, tmp_path: Path, path: str) -> None:
    """kill -9 of the server while the answer streams. The WebSocket gets `error` and a failed
    `response.done`; the HTTP client, whose status went out with the first audio, gets an
    aborted stream, never a short body that ends like a complete one. One path per server: it
    answers one request at a time, so a second one would only queue."""
    with openai_server(tmp_path / "doomed.log") as doomed:
        gateway, url = brain.stack.start_gateway(
            f"gateway-doomed-{path}",
            "--llm_base_url",
            doomed.base_url,
            "--llm_model",
            doomed.model,
            "--llm_max_tokens",
            "1000",
        )
        try:
            if path == "ws":
                with open_session(ws_url(url)) as (ws, _):
                    ask(ws, LONG)
                    received = receive_until(ws, "response.text.delta")
                    doomed.kill()
                    received = receive_until(ws, "response.done", received=received)
                failed_with(received, "llm_stream_broken")
                return
            got = 0
            with requests.post(
                f"{url}/tts", json={"text": LONG}, stream=True, timeout=WAIT_S
            ) as response:
                assert response.status_code == 200
                chunks = response.iter_content(chunk_size=4096)
                got += len(next(chunks))  # the answer is being spoken: now the crash
                doomed.kill()
                # An incomplete chunked body: requests raises instead of ending the loop.
                with pytest.raises(
                    (requests.exceptions.ChunkedEncodingError, requests.ConnectionError)
                ):
                    got += sum(len(chunk) for chunk in chunks)
            assert got > 0
        finally:
            brain.stack.stop(gateway)
