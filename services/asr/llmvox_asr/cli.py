"""`llmvox-asr`: run the server (`serve`), transcribe a WAV file through it (`transcribe`), or
ask its standard health service (`health`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pydantic
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmvox_common._proto.llmvox.asr.v1 import asr_pb2, asr_pb2_grpc
from llmvox_common.audio import WavError, read_wav_pcm16
from llmvox_common.cli_settings import (
    add_command,
    add_settings_arguments,
    new_parser,
    settings_from_args,
)

from .settings import DEFAULT_PORT, AsrSettings

DEFAULT_ADDR = f"127.0.0.1:{DEFAULT_PORT}"
STREAM_CHUNK_SECONDS = 0.1
EXIT_RPC_ERROR = 1
EXIT_USAGE = 2


def serve(args: argparse.Namespace) -> int:
    from .server import serve as run_server
    from .transcriber import ModelUnavailableError

    try:
        settings = settings_from_args(AsrSettings, args)
    except pydantic.ValidationError as error:
        print(f"error: invalid settings:\n{error}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # faster-whisper logs two INFO lines per decode; partials make that one per second.
        logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    try:
        asyncio.run(run_server(settings))
    except ModelUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _config(args: argparse.Namespace, sample_rate_hz: int) -> asr_pb2.RecognitionConfig:
    return asr_pb2.RecognitionConfig(
        sample_rate_hz=sample_rate_hz,
        language=args.language,
        task=asr_pb2.TASK_TRANSLATE if args.task == "translate" else asr_pb2.TASK_TRANSCRIBE,
        target_language=args.target_language,
        vad_filter=args.vad,
        interim_results=args.interim,
    )


def _stream_requests(
    config: asr_pb2.RecognitionConfig, pcm: bytes
) -> Iterator[asr_pb2.StreamingRecognizeRequest]:
    yield asr_pb2.StreamingRecognizeRequest(config=config)
    step = int(config.sample_rate_hz * STREAM_CHUNK_SECONDS) * 2
    for start in range(0, len(pcm), step):
        yield asr_pb2.StreamingRecognizeRequest(audio=pcm[start : start + step])


def transcribe(args: argparse.Namespace) -> int:
    try:
        pcm, rate = read_wav_pcm16(args.file)
    except (OSError, WavError) as error:
        print(f"error: cannot read {args.file}: {error}", file=sys.stderr)
        return EXIT_USAGE
    config = _config(args, rate)
    with grpc.insecure_channel(args.addr) as channel:
        stub = asr_pb2_grpc.AsrServiceStub(channel)
        try:
            if args.stream:
                text = ""
                for response in stub.StreamingRecognize(
                    _stream_requests(config, pcm), timeout=args.timeout
                ):
                    if response.is_final:
                        text = response.transcript.text
                    else:
                        print(f"… {response.transcript.text}", file=sys.stderr)
            else:
                request = asr_pb2.RecognizeRequest(config=config, audio=pcm)
                text = stub.Recognize(request, timeout=args.timeout).transcript.text
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            return EXIT_RPC_ERROR
    print(text)
    return 0


def health(args: argparse.Namespace) -> int:
    """Exit 0 once the service reports SERVING (waiting up to --wait seconds), 1 otherwise."""
    deadline = time.monotonic() + args.wait
    with grpc.insecure_channel(args.addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = stub.Check(
                    health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
                )
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as error:
                status = f"{error.code().name}: {error.details()}"
                reply = None
            serving = reply is not None and reply.status == health_pb2.HealthCheckResponse.SERVING
            if serving or time.monotonic() >= deadline:
                print(status, file=sys.stdout if serving else sys.stderr)
                return 0 if serving else EXIT_RPC_ERROR
            time.sleep(0.5)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("llmvox-asr", __doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = add_command(commands, "serve", "run the gRPC server")
    add_settings_arguments(serve_parser, AsrSettings)
    serve_parser.set_defaults(run=serve)

    client = add_command(commands, "transcribe", "print the transcript of a WAV file")
    client.add_argument("file", type=Path, help="WAV file (16-bit PCM or 32-bit float, 8..48 kHz)")
    client.add_argument("--addr", default=DEFAULT_ADDR, help="server HOST:PORT")
    client.add_argument("--language", default="", help="ISO 639-1 code; '' or 'auto' detects")
    client.add_argument("--task", choices=["transcribe", "translate"], default="transcribe")
    client.add_argument("--target_language", default="", help="translate: '' or 'en'")
    client.add_argument("--vad", action="store_true", help="drop non-speech (Silero VAD)")
    client.add_argument("--stream", action="store_true", help="StreamingRecognize in 100 ms chunks")
    client.add_argument(
        "--interim", action="store_true", help="with --stream: print partials to stderr"
    )
    client.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    client.set_defaults(run=transcribe)

    check = add_command(commands, "health", "standard gRPC health check; exit 0 if SERVING")
    check.add_argument("--addr", default=DEFAULT_ADDR, help="server HOST:PORT")
    check.add_argument("--service", default="", help="service name ('' = the whole server)")
    check.add_argument("--timeout", type=float, default=5.0, help="seconds per check")
    check.add_argument("--wait", type=float, default=0.0, help="keep checking this many seconds")
    check.set_defaults(run=health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
