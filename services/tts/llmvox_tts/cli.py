"""`llmvox-tts`: command-line entry points of the TTS package.

torch and the model code are imported by the commands that load models, not at import time, so
`llmvox-tts health` (a container health check, run every few seconds) starts in a blink.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, get_args

from .loading.hub import WeightsNotFoundError
from .settings import ModelSettings

if TYPE_CHECKING:
    from .loading.bundle import ModelBundle

PRECISIONS = get_args(ModelSettings.model_fields["precision"].annotation)


def add_model_arguments(parser: argparse.ArgumentParser, defaults: ModelSettings) -> None:
    g = parser.add_argument_group("models (env LLMVOX_TTS_<NAME>)")
    g.add_argument(
        "--profile",
        choices=["published", "tiny"],
        default=defaults.profile,
        help="published weights, or tiny random-weight models (untrained noise)",
    )
    g.add_argument(
        "--llmvox-checkpoint",
        default=defaults.llmvox_checkpoint,
        help="ckpt_english_tiny.pt: file, directory or hub id",
    )
    g.add_argument(
        "--wavtokenizer-checkpoint",
        default=defaults.wavtokenizer_checkpoint,
        help="wavtokenizer_large_speech_320_24k.ckpt: file, directory or hub id",
    )
    g.add_argument(
        "--wavtokenizer-config",
        default=defaults.wavtokenizer_config,
        help="WavTokenizer YAML (optional; sizes are read from the weights)",
    )
    g.add_argument(
        "--text-model",
        default=defaults.text_model,
        help="charsiu ByT5 g2p model: directory or hub id",
    )
    g.add_argument("--device", default=defaults.device)
    g.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default=defaults.precision,
        help="decoder weights: fp32 (exact), bf16/fp16 (GPU), int8 (CPU)",
    )
    g.add_argument("--seed", type=int, default=defaults.seed, help="tiny profile seed")


def load_models(args: argparse.Namespace) -> ModelBundle:
    from .loading.bundle import build_tiny, load_published

    if args.profile == "tiny":
        return build_tiny(seed=args.seed, device=args.device, precision=args.precision)
    return load_published(
        llmvox=args.llmvox_checkpoint,
        wavtokenizer=args.wavtokenizer_checkpoint,
        wavtokenizer_config=args.wavtokenizer_config,
        text_model=args.text_model,
        device=args.device,
        precision=args.precision,
    )


def synth(args: argparse.Namespace) -> int:
    import numpy as np

    from llmvox_common.audio import write_wav

    from .loading.bundle import UNTRAINED_WARNING
    from .streaming.sentence_stream import SynthesisLimits
    from .streaming.synthesizer import StreamingSynthesizer

    text = args.text if args.text is not None else sys.stdin.read()
    if not text.strip():
        print("error: no text to speak", file=sys.stderr)
        return 2
    if len(text) > args.max_text_chars:
        print(
            f"error: text has {len(text)} characters, more than --max-text-chars="
            f"{args.max_text_chars}",
            file=sys.stderr,
        )
        return 2
    try:
        models = load_models(args)
    except WeightsNotFoundError as error:
        print(
            f"error: {error}\n(use --profile tiny to try the pipeline without weights)",
            file=sys.stderr,
        )
        return 2
    if models.untrained:
        print(f"WARNING: {UNTRAINED_WARNING}", file=sys.stderr)
    synthesizer = StreamingSynthesizer(
        models,
        initial_dump_size=args.initial_dump_size,
        max_dump_size=args.max_dump_size,
        limits=SynthesisLimits(args.max_audio_length, args.max_tokens_per_text_id),
    )
    # Feed the text as an LLM would stream it: word pieces with their leading spaces.
    words = text.split()
    pieces = [words[0], *(" " + w for w in words[1:])]
    audio = [chunk.pcm.numpy() for chunk in synthesizer.speak(pieces)]
    samples = np.concatenate(audio) if audio else np.zeros(0, dtype=np.float32)
    write_wav(args.out, samples)
    stats = synthesizer.stats
    ttfa = stats.time_to_first_audio
    print(
        f"wrote {args.out}: {samples.shape[0] / 24000:.2f} s of audio, "
        f"{len(stats.sentences)} sentence(s), {stats.tokens} speech tokens"
    )
    print(
        f"time to first audio chunk: {ttfa * 1000:.1f} ms"
        if ttfa is not None
        else "time to first audio chunk: no audio"
    )
    print(
        f"speech tokens/s: {stats.tokens_per_second:.1f}  "
        f"real-time factor: {stats.real_time_factor:.3f} (below 1 is faster than real time)"
    )
    for i, s in enumerate(stats.sentences):
        note = "  <- stopped by the runaway guard" if s.stop_reason == "runaway" else ""
        print(f"  sentence {i}: {s.tokens} tokens, stop: {s.stop_reason}{note}")
    return 0


def worker(args: argparse.Namespace) -> int:
    import asyncio

    from prometheus_client import start_http_server

    from .loading.bundle import UNTRAINED_WARNING
    from .worker.service import serve
    from .worker.settings import WorkerSettings

    settings = WorkerSettings(
        **{name: getattr(args, name) for name in WorkerSettings.model_fields if hasattr(args, name)}
    )
    try:
        models = load_models(args)
    except WeightsNotFoundError as error:
        print(
            f"error: {error}\n(use --profile tiny to try the pool without weights)", file=sys.stderr
        )
        return 2
    if models.untrained:
        print(f"WARNING: {UNTRAINED_WARNING}", file=sys.stderr)
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    asyncio.run(serve(settings, models))
    return 0


def _heartbeat_age_s(value: bytes) -> float | None:
    """Seconds since the heartbeat in `value` was written; None when it does not say (the
    key's existence still counts)."""
    import time

    from llmvox_common.tts_streams import Heartbeat

    at_ms = Heartbeat.decode(value).at_ms
    return None if at_ms is None else max(0.0, time.time() - at_ms / 1000)


def _heartbeat_problem(redis_url: str, name: str, timeout: float) -> str | None:
    import redis

    from llmvox_common.tts_streams import WORKERS_KEY_PREFIX

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        value = client.get(WORKERS_KEY_PREFIX + name)
    except redis.RedisError as error:  # the URL holds the password: never print it
        return f"Redis unreachable: {type(error).__name__}: {error}"
    finally:
        client.close()
    if value is None:
        return f"no heartbeat from replica {name!r} (key {WORKERS_KEY_PREFIX}{name})"
    age = _heartbeat_age_s(value)
    print(f"heartbeat {name!r}" + (f": {age:.1f} s ago" if age is not None else ""))
    return None


def _metrics_problem(port: int, timeout: float) -> str | None:
    import urllib.error
    import urllib.request

    if port <= 0:
        return "no metrics port (--metrics-port / LLMVOX_TTS_METRICS_PORT is 0)"
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as error:
        return f"metrics {url}: {error}"
    if "llmvox_tts_" not in body:
        return f"metrics {url}: no llmvox_tts_ metrics"
    print(f"metrics {url}: ok")
    return None


def health(args: argparse.Namespace) -> int:
    """Container health check of one replica: exit 0 when its Redis heartbeat exists (it expires
    after --claim-idle-ms, so a replica whose event loop is stuck turns unhealthy) and/or its
    metrics port answers; 1 otherwise. `--wait N` keeps checking for N seconds."""
    import time

    deadline = time.monotonic() + args.wait
    while True:
        problems = []
        if args.check in ("heartbeat", "all"):
            problems.append(_heartbeat_problem(args.redis_url, args.name, args.timeout))
        if args.check in ("metrics", "all"):
            problems.append(_metrics_problem(args.metrics_port, args.timeout))
        failed = [problem for problem in problems if problem is not None]
        if not failed:
            print("SERVING")
            return 0
        if time.monotonic() >= deadline:
            print("unhealthy: " + "; ".join(failed), file=sys.stderr)
            return 1
        time.sleep(0.5)


def build_parser() -> argparse.ArgumentParser:
    defaults = ModelSettings()
    parser = argparse.ArgumentParser(prog="llmvox-tts", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("synth", help="speak a text into a WAV file")
    p.add_argument("--text", help="text to speak (default: read standard input)")
    p.add_argument("--out", default="out.wav", help="output WAV (24 kHz mono PCM16)")
    add_model_arguments(p, defaults)
    p.add_argument("--initial-dump-size", type=int, default=defaults.initial_dump_size)
    p.add_argument("--max-dump-size", type=int, default=defaults.max_dump_size)
    p.add_argument("--max-audio-length", type=int, default=defaults.max_audio_length)
    p.add_argument(
        "--max-tokens-per-text-id",
        type=float,
        default=defaults.max_tokens_per_text_id,
        help="runaway guard: stop a sentence after this many tokens per text id",
    )
    p.add_argument("--max-text-chars", type=int, default=defaults.max_text_chars)
    p.set_defaults(func=synth)

    from .worker.settings import WorkerSettings

    wd = WorkerSettings()
    w = sub.add_parser("worker", help="run one replica of the TTS pool (Redis Streams)")
    w.add_argument("--redis-url", dest="redis_url", default=wd.redis_url)
    w.add_argument("--name", default=wd.name, help="consumer name in the group (unique)")
    w.add_argument("--max-batch", dest="max_batch", type=int, default=wd.max_batch)
    w.add_argument("--metrics-port", dest="metrics_port", type=int, default=wd.metrics_port)
    w.add_argument(
        "--context-tokens",
        dest="context_tokens",
        type=int,
        default=wd.context_tokens,
        help="tokens already sent, decoded again before each chunk (0 = upstream)",
    )
    w.add_argument(
        "--holdback-tokens",
        dest="holdback_tokens",
        type=int,
        default=wd.holdback_tokens,
        help="last tokens of a chunk sent with the next one, once it exists (0 = upstream)",
    )
    w.add_argument("--claim-idle-ms", dest="claim_idle_ms", type=int, default=wd.claim_idle_ms)
    w.add_argument("--max-deliveries", dest="max_deliveries", type=int, default=wd.max_deliveries)
    w.add_argument("--text-timeout-s", dest="text_timeout_s", type=float, default=wd.text_timeout_s)
    w.add_argument(
        "--drain-timeout-s", dest="drain_timeout_s", type=float, default=wd.drain_timeout_s
    )
    w.add_argument(
        "--max-audio-length", dest="max_audio_length", type=int, default=wd.max_audio_length
    )
    w.add_argument(
        "--max-tokens-per-text-id",
        dest="max_tokens_per_text_id",
        type=float,
        default=wd.max_tokens_per_text_id,
    )
    w.add_argument("--max-text-chars", dest="max_text_chars", type=int, default=wd.max_text_chars)
    add_model_arguments(w, wd)
    w.set_defaults(func=worker)

    h = sub.add_parser(
        "health",
        help="check a running replica (exit 0 when healthy): its Redis heartbeat and/or metrics",
    )
    h.add_argument("--redis-url", dest="redis_url", default=wd.redis_url)
    h.add_argument("--name", default=wd.name, help="the replica's name (same default as worker)")
    h.add_argument("--metrics-port", dest="metrics_port", type=int, default=wd.metrics_port)
    h.add_argument(
        "--check",
        choices=["heartbeat", "metrics", "all"],
        default="heartbeat",
        help="heartbeat: the replica's key in Redis; metrics: its /metrics answers on localhost",
    )
    h.add_argument("--timeout", type=float, default=5.0, help="seconds per try")
    h.add_argument("--wait", type=float, default=0.0, help="keep trying this many seconds")
    h.set_defaults(func=health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    # Model calls run under inference_mode where they are made (also on the worker's model
    # thread); no global switch here, so calling main() in-process leaves autograd alone.
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
