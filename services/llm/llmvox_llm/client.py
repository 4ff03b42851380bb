"""Command-line clients: `chat` streams an answer to the terminal, `health` asks the standard
health service. gRPC and the generated stubs only: no torch, so they start fast."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmvox_common._proto.llmvox.llm.v1 import llm_pb2, llm_pb2_grpc

FINISH_NAMES = {
    llm_pb2.FINISH_REASON_EOS: "eos",
    llm_pb2.FINISH_REASON_LENGTH: "length",
    llm_pb2.FINISH_REASON_STOP_STRING: "stop string",
}


def build_request(
    prompt: str,
    *,
    system: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    stop: Sequence[str] = (),
    seed: int | None = None,
    images: Sequence[Path] = (),
    audios: Sequence[Path] = (),
) -> llm_pb2.GenerateRequest:
    messages = []
    if system is not None:
        messages.append(llm_pb2.Message(role=llm_pb2.ROLE_SYSTEM, text=system))
    messages.append(
        llm_pb2.Message(
            role=llm_pb2.ROLE_USER,
            text=prompt,
            images=[llm_pb2.Image(data=p.read_bytes()) for p in images],
            audios=[llm_pb2.Audio(data=p.read_bytes()) for p in audios],
        )
    )
    sampling = llm_pb2.SamplingParams(stop=list(stop))
    # Only what was given: unset fields take the server's defaults.
    for name, value in (
        ("max_tokens", max_tokens),
        ("temperature", temperature),
        ("top_p", top_p),
        ("top_k", top_k),
        ("seed", seed),
    ):
        if value is not None:
            setattr(sampling, name, value)
    return llm_pb2.GenerateRequest(messages=messages, sampling=sampling)


def chat(
    addr: str,
    request: llm_pb2.GenerateRequest,
    *,
    timeout: float | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Print the answer as it streams, then a usage line on `err`; 1 with the status on error."""
    with grpc.insecure_channel(addr) as channel:
        stub = llm_pb2_grpc.LlmServiceStub(channel)
        try:
            for response in stub.Generate(request, timeout=timeout):
                if response.HasField("final"):
                    out.write("\n")
                    out.flush()
                    print(usage_line(response.final), file=err)
                else:
                    out.write(response.delta)
                    out.flush()
        except grpc.RpcError as error:
            out.flush()
            print(f"error: {error.code().name}: {error.details()}", file=err)
            return 1
    return 0


def usage_line(final: llm_pb2.GenerateFinal) -> str:
    usage = final.usage
    return (
        f"[finish: {FINISH_NAMES.get(final.finish_reason, 'unspecified')}; "
        f"prompt {usage.prompt_tokens} tokens, completion {usage.completion_tokens} tokens; "
        f"first token {usage.time_to_first_token_s:.2f} s; "
        f"{usage.tokens_per_second:.1f} tokens/s]"
    )


def health(addr: str, service: str = "", *, timeout: float = 5.0, out: TextIO = sys.stdout) -> int:
    """Prints the status; 0 only when SERVING."""
    with grpc.insecure_channel(addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status, file=out)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1
