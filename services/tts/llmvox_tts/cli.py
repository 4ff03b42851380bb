"""`llmvox-tts`: command-line entry points of the TTS package.

torch and the model code are imported by the commands that load models, not at import time, so
`llmvox-tts health` (a container health check, run every few seconds) starts in a blink.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from llmvox_common.cli_settings import (
    add_command,
    add_settings_arguments,
    new_parser,
    settings_from_args,
)

from .constants import SAMPLE_RATE
from .loading.hub import WeightsNotFoundError
from .settings import ModelSettings

if TYPE_CHECKING:
    from .loading.bundle import ModelBundle


def load_models(settings: ModelSettings) -> ModelBundle:
    import torch

    from .loading.bundle import build_tiny, load_published

    settings.resolve_numerics()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    # The numerics in effect, at start-up: int8/bf16 are the CPU defaults, fp32 the exact mode.
    print(
        f"llmvox-tts: {settings.numerics()}, threads {torch.get_num_threads()}",
        file=sys.stderr,
        flush=True,
    )
    if settings.profile == "tiny":
        return build_tiny(
            seed=settings.seed,
            device=settings.device,
            precision=settings.precision,
            vocoder_precision=settings.vocoder_precision,
        )
    return load_published(
        llmvox=settings.llmvox_checkpoint,
        wavtokenizer=settings.wavtokenizer_checkpoint,
        wavtokenizer_config=settings.wavtokenizer_config,
        text_model=settings.text_model,
        device=settings.device,
        precision=settings.precision,
        vocoder_precision=settings.vocoder_precision,
    )


def synth(args: argparse.Namespace) -> int:
    import numpy as np

    from llmvox_common.audio import write_wav

    from .loading.bundle import UNTRAINED_WARNING
    from .streaming.sentence_stream import SynthesisLimits
    from .streaming.synthesizer import StreamingSynthesizer

    settings = settings_from_args(ModelSettings, args)
    text = args.text if args.text is not None else sys.stdin.read()
    if not text.strip():
        print("error: no text to speak", file=sys.stderr)
        return 2
    if len(text) > settings.max_text_chars:
        print(
            f"error: text has {len(text)} characters, more than --max_text_chars="
            f"{settings.max_text_chars}",
            file=sys.stderr,
        )
        return 2
    try:
        models = load_models(settings)
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
        initial_dump_size=settings.initial_dump_size,
        max_dump_size=settings.max_dump_size,
        limits=SynthesisLimits(settings.max_audio_length, settings.max_tokens_per_text_id),
    )
    # Whole text in: the gateway's sentence splitter cuts it, as the service would.
    audio = [chunk.pcm.numpy() for chunk in synthesizer.speak([text])]
    samples = np.concatenate(audio) if audio else np.zeros(0, dtype=np.float32)
    write_wav(args.out, samples)
    stats = synthesizer.stats
    ttfa = stats.time_to_first_audio
    print(
        f"wrote {args.out}: {samples.shape[0] / SAMPLE_RATE:.2f} s of audio, "
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

    settings = settings_from_args(WorkerSettings, args)
    try:
        models = load_models(settings)
    except WeightsNotFoundError as error:
        print(
            f"error: {error}\n(use --profile tiny to try the pool without weights)", file=sys.stderr
        )
        return 2
    if models.untrained:
        print(f"WARNING: {UNTRAINED_WARNING}", file=sys.stderr)
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    import torch

    from .worker import metrics

    metrics.NUMERICS.labels(
        settings.precision, settings.vocoder_precision, str(torch.get_num_threads())
    ).set(1)
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
        return "no metrics port (--metrics_port / LLMVOX_TTS_METRICS_PORT is 0)"
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
    after --heartbeat_ttl_ms, so a replica whose event loop is stuck turns unhealthy) and/or its
    metrics port answers; 1 otherwise. `--wait N` keeps checking for N seconds."""
    import time

    from .worker.settings import WorkerSettings

    # The replica's own settings (flags, else its LLMVOX_TTS_* environment): the same Redis,
    # name and metrics port as the worker this container or pod runs.
    replica = settings_from_args(WorkerSettings, args)
    deadline = time.monotonic() + args.wait
    while True:
        problems = []
        if args.check in ("heartbeat", "all"):
            problems.append(_heartbeat_problem(replica.redis_url, replica.name, args.timeout))
        if args.check in ("metrics", "all"):
            problems.append(_metrics_problem(replica.metrics_port, args.timeout))
        failed = [problem for problem in problems if problem is not None]
        if not failed:
            print("SERVING")
            return 0
        if time.monotonic() >= deadline:
            print("unhealthy: " + "; ".join(failed), file=sys.stderr)
            return 1
        time.sleep(0.5)


def build_parser() -> argparse.ArgumentParser:
    from .worker.settings import WorkerSettings

    parser = new_parser("llmvox-tts", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = add_command(sub, "synth", "speak a text into a WAV file")
    p.add_argument("--text", help="text to speak (default: read standard input)")
    p.add_argument("--out", default="out.wav", help="output WAV (24 kHz mono PCM16)")
    add_settings_arguments(p, ModelSettings)
    p.set_defaults(func=synth)

    w = add_command(sub, "worker", "run one replica of the TTS pool (Redis Streams)")
    add_settings_arguments(w, WorkerSettings)
    w.set_defaults(func=worker)

    h = add_command(
        sub,
        "health",
        "check a running replica (exit 0 when healthy): its Redis heartbeat and/or metrics",
    )
    add_settings_arguments(
        h,
        WorkerSettings,
        title="the replica (each also env LLMVOX_TTS_<NAME>, as for its worker)",
        only=("redis_url", "name", "metrics_port"),
    )
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
