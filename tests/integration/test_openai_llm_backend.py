"""The gateway's `openai` LLM backend (`llmvox_gateway.openai_llm.OpenAiLlm`) against a REAL
OpenAI-compatible server: `transformers serve` on loopback with SmolLM2-135M-Instruct, offline,
reached through a TCP relay that shows the connection from the server's side.

Checked: streamed deltas and the sampling fields (greedy answers repeat), readiness; closing the
stream early (barge-in) or at the deadline drops the connection before the server's answer
ends; the error cases a turn must report instead of hanging: a model the server does not serve,
a server that is down, a stream corrupted in transit, a server killed mid-answer; and images
reaching a vision model (a tiny random-weight LLaVA served the same way).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmvox_gateway.backends import ChatMessage, Sampling
from llmvox_gateway.errors import GatewayError
from llmvox_gateway.openai_llm import OpenAiLlm

from .llm_support import build_tiny_llava, png_bytes, smollm2_dir
from .openai_server_support import (
    OpenAiServer,
    Relay,
    openai_server,
    refused_base_url,
    relay,
)

pytestmark = pytest.mark.integration

QUESTION = [
    ChatMessage("system", "You are a helpful assistant. Answer briefly."),
    ChatMessage("user", "What is the capital of France?"),
]
# A long answer: greedy SmolLM2 keeps counting well past the tokens a test lets it make.
LONG = [ChatMessage("user", "Count from 1 to 300, separated by commas.")]
GREEDY = Sampling(temperature=0.0, max_tokens=24)
WAIT_S = 120.0  # failsafe of every wait on a condition


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenAiServer]:
    log_dir = tmp_path_factory.mktemp("openai-server")
    with openai_server(log_dir / "serve.log") as running:
        yield running


@pytest.fixture
def proxied(server: OpenAiServer) -> Iterator[Relay]:
    with relay(server.port) as running:
        yield running


def client(base_url: str, model: str, timeout_s: float = 60.0) -> OpenAiLlm:
    return OpenAiLlm(base_url, model=model, timeout_s=timeout_s)


async def collect(llm: OpenAiLlm, messages: list[ChatMessage], sampling: Sampling) -> list[str]:
    try:
        return [delta async for delta in llm.generate(messages, sampling)]
    finally:
        await llm.close()


def test_streams_the_answer_and_is_ready(server: OpenAiServer, proxied: Relay) -> None:
    async def scenario() -> tuple[bool, list[str], list[str]]:
        llm = client(proxied.base_url, server.model)
        ready = await llm.ready()
        first = [d async for d in llm.generate(QUESTION, GREEDY)]
        second = await collect(llm, QUESTION, GREEDY)
        return ready, first, second

    ready, first, second = asyncio.run(scenario())
    assert ready
    assert len(first) > 1, "the answer comes as several deltas"
    assert "Paris" in "".join(first)
    assert first == second, "temperature 0 reached the server: the same answer twice"
    (stream, *_) = proxied.chat_streams()
    assert b'"stream":true' in stream.request.replace(b" ", b"")
    assert b'"max_tokens":24' in stream.request.replace(b" ", b"")
    assert stream.response_complete


def test_closing_the_stream_drops_the_connection(server: OpenAiServer, proxied: Relay) -> None:
    """What a barge-in does to the LLM call: the generator is closed after the first delta, and
    the server sees its client leave before the answer's end (its cue to stop generating)."""

    async def scenario() -> str:
        llm = client(proxied.base_url, server.model)
        deltas = llm.generate(LONG, Sampling(temperature=0.0, max_tokens=400))
        first = await anext(deltas)
        await deltas.aclose()
        await llm.close()
        return first

    assert asyncio.run(scenario())
    assert proxied.wait_for(lambda: any(c.first_closed for c in proxied.chat_streams()), WAIT_S)
    (stream,) = proxied.chat_streams()
    assert stream.cut_by_client, "the gateway closed the connection mid-answer"
    assert stream.content_chunks < 400


def test_deadline_ends_the_call_and_its_stream(server: OpenAiServer, proxied: Relay) -> None:
    """llm_timeout_s bounds the whole answer: a long one is cut at the deadline, as a timeout,
    and the server's stream is closed (not left generating for nobody)."""
    long_answer = Sampling(temperature=0.0, max_tokens=400)
    with pytest.raises(GatewayError) as raised:
        asyncio.run(
            collect(client(proxied.base_url, server.model, timeout_s=1.0), LONG, long_answer)
        )
    assert (raised.value.status, raised.value.kind, raised.value.code) == (
        504,
        "timeout",
        "llm_timeout",
    )
    assert proxied.wait_for(lambda: any(c.first_closed for c in proxied.chat_streams()), WAIT_S)
    (stream,) = proxied.chat_streams()
    assert stream.cut_by_client


def test_unknown_model_is_a_clear_error(server: OpenAiServer) -> None:
    with pytest.raises(GatewayError) as raised:
        asyncio.run(collect(client(server.base_url, "no-such-model"), QUESTION, GREEDY))
    error = raised.value
    assert (error.status, error.kind, error.code) == (
        422,
        "invalid_request_error",
        "llm_request_refused",
    )
    assert "no-such-model" in error.message  # the server's own explanation is kept


def test_top_k_refused_by_a_strict_server(server: OpenAiServer) -> None:
    """`top_k` is not an OpenAI field: it goes as an extra field, which `transformers serve`
    refuses (documented: leave llm_top_k unset for such servers)."""
    sampling = Sampling(temperature=0.0, max_tokens=4, top_k=20)
    with pytest.raises(GatewayError) as raised:
        asyncio.run(collect(client(server.base_url, server.model), QUESTION, sampling))
    assert raised.value.code == "llm_request_refused"
    assert "top_k" in raised.value.message


def test_server_down_is_unavailable() -> None:
    async def scenario() -> tuple[bool, GatewayError]:
        llm = client(refused_base_url(), "any")
        ready = await llm.ready()
        with pytest.raises(GatewayError) as raised:
            await collect(llm, QUESTION, GREEDY)
        return ready, raised.value

    ready, error = asyncio.run(scenario())
    assert not ready
    assert (error.status, error.kind, error.code) == (503, "unavailable", "llm_unreachable")


def test_malformed_stream_fails_the_call(server: OpenAiServer, proxied: Relay) -> None:
    proxied.corrupt = (b'"content":', b'"content"!')  # same length: the HTTP framing holds
    with pytest.raises(GatewayError) as raised:
        asyncio.run(collect(client(proxied.base_url, server.model), QUESTION, GREEDY))
    assert (raised.value.status, raised.value.code) == (502, "llm_malformed_stream")


def test_server_killed_mid_answer(tmp_path: Path) -> None:
    """SIGKILL while the answer streams: the call fails as a broken stream, never as a short
    answer that looks complete."""
    with openai_server(tmp_path / "serve.log") as doomed, relay(doomed.port) as watched:

        async def scenario() -> tuple[list[str], GatewayError | None]:
            llm = client(watched.base_url, doomed.model)
            got: list[str] = []
            try:
                async for delta in llm.generate(LONG, Sampling(temperature=0.0, max_tokens=400)):
                    got.append(delta)
                    if len(got) == 1:
                        # Killed from another thread: the loop keeps reading meanwhile.
                        threading.Thread(target=doomed.kill).start()
            except GatewayError as error:
                return got, error
            finally:
                await llm.close()
            return got, None

        got, error = asyncio.run(scenario())
    assert got, "the answer had started"
    assert error is not None, f"the stream ended as a success after {len(got)} deltas"
    assert error.status in (502, 503)
    assert error.code == "llm_stream_broken"


def test_images_reach_a_vision_model(tmp_path: Path) -> None:
    """An image goes as an `image_url` data-URL part: a vision model served by `transformers
    serve` (a tiny random-weight LLaVA, as in the LLM service's tests) reads it, which its
    logged prompt length shows (the image's placeholder tokens come on top of the text's)."""
    model_dir = build_tiny_llava(tmp_path / "tiny-llava", smollm2_dir())
    with openai_server(tmp_path / "serve.log", model_dir, "--enable-log-requests") as vision:

        async def scenario() -> None:
            llm = client(vision.base_url, vision.model)
            sampling = Sampling(temperature=0.0, max_tokens=2)
            text_only = [ChatMessage("user", "What is in the picture?")]
            with_image = [ChatMessage("user", "What is in the picture?", [png_bytes()])]
            try:
                # Random weights: what they answer does not matter, that the server took it.
                for messages in (text_only, with_image):
                    async for _ in llm.generate(messages, sampling):
                        pass
            finally:
                await llm.close()

        asyncio.run(scenario())
        text_tokens, image_tokens = vision.prompt_tokens()
    assert image_tokens > text_tokens
