"""`llmvox-asr`: run the server (`serve`), transcribe a WAV file through it (`transcribe`), or
ask its standard health service (`health`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import types
import typing
import wave
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pydantic
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmvox_common._proto.llmvox.asr.v1 import asr_pb2, asr_pb2_grpc
from llmvox_common.audio import float_to_pcm16, read_wav

from .settings import DEFAULT_PORT, AsrSettings

DEFAULT_ADDR = f"127.0.0.1:{DEFAULT_PORT}"
STREAM_CHUNK_SECONDS = 0.1
EXIT_RPC_ERROR = 1
EXIT_USAGE = 2


def _flag_type(annotation: object) -> type:
    # `str | None` and friends: the first concrete member names the parser type.
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation  # type: ignore[return-value]


def add_settings_arguments(parser: argparse.ArgumentParser, defaults: AsrSettings) -> None:
    """One flag per settings field, named like it (`beam_size` → `--beam-size`, env
    LLMVOX_ASR_BEAM_SIZE), its default taken from the environment."""
    group = parser.add_argument_group("server settings (each also env LLMVOX_ASR_<NAME>)")
    for name, field in AsrSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = _flag_type(field.annotation)
        help_text = f"{field.description or name} (default: %(default)s)"
        if kind is bool:
            group.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=getattr(defaults, name),
                help=help_text,
            )
        else:
            group.add_argument(flag, type=kind, default=getattr(defaults, name), help=help_text)


def serve(args: argparse.Namespace) -> int:
    from .server import serve as run_server
    from .transcriber import ModelUnavailableError

    try:
        settings = AsrSettings(**{name: getattr(args, name) for name in AsrSettings.model_fields})
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


def read_pcm16(path: Path) -> tuple[bytes, int]:
    """PCM16 mono bytes and the sample rate of a WAV file (several channels are averaged)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError("only 16-bit PCM WAV files are supported")
        if wav.getnchannels() == 1:
            return wav.readframes(wav.getnframes()), wav.getframerate()
    samples, rate = read_wav(path)
    return float_to_pcm16(samples).tobytes(), rate


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
        pcm, rate = read_pcm16(args.file)
    except (OSError, EOFError, wave.Error, ValueError) as error:
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


def build_parser(defaults: AsrSettings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmvox-asr", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run the gRPC server")
    add_settings_arguments(serve_parser, defaults)
    serve_parser.set_defaults(run=serve)

    client = commands.add_parser("transcribe", help="print the transcript of a 16-bit WAV file")
    client.add_argument("file", type=Path, help="16-bit PCM WAV, 8..48 kHz")
    client.add_argument("--addr", default=DEFAULT_ADDR, help="server HOST:PORT")
    client.add_argument("--language", default="", help="ISO 639-1 code; '' or 'auto' detects")
    client.add_argument("--task", choices=["transcribe", "translate"], default="transcribe")
    client.add_argument("--target-language", default="", help="translate: '' or 'en'")
    client.add_argument("--vad", action="store_true", help="drop non-speech (Silero VAD)")
    client.add_argument("--stream", action="store_true", help="StreamingRecognize in 100 ms chunks")
    client.add_argument(
        "--interim", action="store_true", help="with --stream: print partials to stderr"
    )
    client.add_argument("--timeout", type=float, default=None, help="deadline in seconds")
    client.set_defaults(run=transcribe)

    check = commands.add_parser("health", help="standard gRPC health check; exit 0 if SERVING")
    check.add_argument("--addr", default=DEFAULT_ADDR, help="server HOST:PORT")
    check.add_argument("--service", default="", help="service name ('' = the whole server)")
    check.add_argument("--timeout", type=float, default=5.0, help="seconds per check")
    check.add_argument("--wait", type=float, default=0.0, help="keep checking this many seconds")
    check.set_defaults(run=health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        defaults = AsrSettings()
    except pydantic.ValidationError as error:
        print(f"error: invalid LLMVOX_ASR_* environment:\n{error}", file=sys.stderr)
        return EXIT_USAGE
    args = build_parser(defaults).parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
