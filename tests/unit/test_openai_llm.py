"""The `openai` LLM backend's pure parts: the conversation and sampling as chat-completions
fields, the server's errors in the gateway's error shape, the settings that choose the backend
(gateway and `llmvox-launch`), and the launcher's plan without an LLM process. The backend
against a real server: tests/integration/test_openai_llm_backend.py."""

from __future__ import annotations

import asyncio
import base64
import os

import httpx2
import openai
import pytest
from pydantic import ValidationError

from llmvox_gateway.backends import ChatMessage, LlmBackend, Sampling
from llmvox_gateway.errors import GatewayError
from llmvox_gateway.openai_llm import (
    OpenAiLlm,
    image_media_type,
    map_error,
    request_options,
    to_openai_messages,
)
from llmvox_gateway.runtime import llm_client
from llmvox_gateway.settings import GatewaySettings
from llmvox_launch.cli import build_parser, settings_from_args
from llmvox_launch.plan import MachineFacts, build_plan

pytestmark = pytest.mark.unit

URL = "http://llm.internal:8000/v1"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 8
WAV = b"RIFF\x24\0\0\0WAVEfmt "


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("LLMVOX_GATEWAY_", "LLMVOX_LAUNCH_")):
            monkeypatch.delenv(name)


def test_text_messages_stay_plain_strings() -> None:
    messages = [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Hello"),
    ]
    assert to_openai_messages(messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]


def test_media_become_content_parts_before_the_text() -> None:
    (message,) = to_openai_messages([ChatMessage("user", "What is this?", [PNG], [WAV])])
    image, audio, text = message["content"]
    assert image == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()},
    }
    assert audio == {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(WAV).decode(), "format": "wav"},
    }
    assert text == {"type": "text", "text": "What is this?"}


@pytest.mark.parametrize(
    ("head", "media_type"),
    [
        (b"\xff\xd8\xff\xe0", "image/jpeg"),
        (PNG, "image/png"),
        (b"GIF89a..", "image/gif"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "image/webp"),
        (b"unknown", "image/jpeg"),
    ],
)
def test_image_media_type(head: bytes, media_type: str) -> None:
    assert image_media_type(head) == media_type


def test_sampling_sends_only_what_is_set() -> None:
    assert request_options(Sampling(), {}) == {}
    options = request_options(
        Sampling(temperature=0.0, top_p=0.9, top_k=20, max_tokens=64), {"seed": 1}
    )
    assert options == {
        "temperature": 0.0,
        "top_p": 0.9,
        "max_tokens": 64,
        # Not an OpenAI field: only servers that take extra fields accept it.
        "extra_body": {"seed": 1, "top_k": 20},
    }


def _status_error(status: int, body: object) -> openai.APIStatusError:
    request = httpx2.Request("POST", URL + "/chat/completions")
    response = httpx2.Response(status, request=request, json=body)
    return openai.AsyncOpenAI(base_url=URL, api_key="k")._make_status_error_from_response(response)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, (502, "backend_error", "llm_unauthorized")),
        (403, (502, "backend_error", "llm_unauthorized")),
        (404, (502, "backend_error", "llm_model_not_found")),
        (400, (422, "invalid_request_error", "llm_request_refused")),
        (422, (422, "invalid_request_error", "llm_request_refused")),
        (429, (429, "busy", "llm_rate_limited")),
        (500, (502, "backend_error", "llm_server_error")),
        (503, (503, "unavailable", "llm_unavailable")),
        (504, (504, "timeout", "llm_timeout")),
    ],
)
def test_status_errors_map_to_the_gateway_shape(
    status: int, expected: tuple[int, str, str]
) -> None:
    body = {"error": {"message": "explained by the server", "type": "x"}}
    error = map_error(_status_error(status, body), base_url=URL, model="m")
    assert isinstance(error, GatewayError)
    assert (error.status, error.kind, error.code) == expected
    assert "explained by the server" in error.message
    assert URL in error.message


def test_fastapi_detail_is_kept() -> None:
    error = map_error(_status_error(400, {"detail": "pinned to X"}), base_url=URL, model="m")
    assert "pinned to X" in error.message


def test_transport_errors() -> None:
    request = httpx2.Request("POST", URL)
    refused = map_error(openai.APIConnectionError(request=request), base_url=URL, model="m")
    assert (refused.status, refused.code) == (503, "llm_unreachable")
    slow = map_error(openai.APITimeoutError(request=request), base_url=URL, model="m")
    assert (slow.status, slow.kind, slow.code) == (504, "timeout", "llm_timeout")
    garbled = map_error(ValueError("Expecting value"), base_url=URL, model="m")
    assert (garbled.status, garbled.code) == (502, "llm_malformed_stream")


def test_gateway_settings_choose_the_backend() -> None:
    settings = GatewaySettings(
        llm_backend="openai",
        llm_base_url=f" {URL} ",
        llm_model="gpt-x",
        llm_api_key="secret",
        llm_extra_body='{"repetition_penalty": 1.1}',
    )
    assert settings.llm_extra_body == {"repetition_penalty": 1.1}
    assert "secret" not in repr(settings)
    with pytest.raises(ValidationError, match="llm_base_url and llm_model"):
        GatewaySettings(llm_backend="openai")

    async def clients() -> list[object]:
        # The gRPC client's channel belongs to a running event loop, as in the gateway.
        made = [
            llm_client(GatewaySettings()),
            llm_client(GatewaySettings(llm_addr="")),
            llm_client(settings),
        ]
        for client in made:
            if client is not None:
                await client.close()
        return made

    grpc_client, none, openai_client = asyncio.run(clients())
    assert isinstance(grpc_client, LlmBackend)
    assert none is None
    assert isinstance(openai_client, OpenAiLlm)
    assert openai_client.addr == URL


def _facts() -> MachineFacts:
    commands = {n: (f"/venv/bin/llmvox-{n}",) for n in ("asr", "llm", "tts", "gateway")}
    return MachineFacts(
        cpu_count=6,
        gpu_count=0,
        commands=commands,
        instance="h",
        model_cache="/cache",
        whisper_tiny_dir="/whisper",
        smollm2_package_dir=None,  # the offline LLM is not even installed: not needed
    )


def test_launcher_starts_no_llm_for_the_openai_backend() -> None:
    args = build_parser().parse_args(
        [
            "--llm_backend",
            "openai",
            "--llm_base_url",
            URL,
            "--llm_model",
            "gpt-x",
            "--llm_api_key",
            "secret",
            "--llm_temperature",
            "0.2",
            "--system_prompt",
            "Be brief.",
        ]
    )
    plan = build_plan(settings_from_args(args), _facts())
    assert "llm" not in {child.name for child in plan.children}
    gateway = plan.child("gateway")
    argv = list(gateway.argv)

    def value(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert value("--llm_backend") == "openai"
    assert value("--llm_base_url") == URL
    assert value("--llm_model") == "gpt-x"
    assert value("--llm_temperature") == "0.2"
    assert value("--system_prompt") == "Be brief."
    assert "secret" not in argv  # in the environment, out of `ps`
    assert gateway.env["LLMVOX_GATEWAY_LLM_API_KEY"] == "secret"
    # Threads are shared out among the model processes that do run: ASR and two TTS replicas.
    assert plan.child("asr").env["OMP_NUM_THREADS"] == "2"


def test_launcher_refuses_an_incomplete_openai_backend() -> None:
    with pytest.raises(ValidationError, match="llm_model"):
        settings_from_args(
            build_parser().parse_args(["--llm_backend", "openai", "--llm_base_url", URL])
        )
