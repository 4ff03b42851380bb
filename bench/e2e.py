"""End-to-end latency of the local stack: time to first audio (TTFA) and its parts, through the
gateway's WebSocket (`/v1/ws`, docs/gateway.md).

Starts the whole stack with the real launcher (`llmvox-launch --ports auto --api_port 0`, offline
defaults: Whisper tiny.en, SmolLM2-135M-Instruct, TTS tiny profile) and stops it with SIGINT at the
end; `--url` benches a gateway that is already running instead. Three kinds of turn:
- verbatim: `llmvox.text.append` of a two-sentence text, then `llmvox.text.commit`;
- text: `conversation.item.create` (a question), then `response.create` (the LLM answers);
- voice: the question spoken by espeak-ng, streamed as binary PCM16 frames of 100 ms (real time
  by default, `--audio-speed`), then `input_audio_buffer.commit`.
Each turn ends at `response.done`; any status but "completed" (or an `error` event) stops the run.

Per turn: the server's `timings` (seconds from the turn's start: the commit, `response.create` or
the first append) give the parts ASR, LLM first token, first sentence (the first TTS job opened)
and TTS first part (to the first audio sent); the client measures TTFA, from sending the commit /
`response.create` / first append to receiving the first binary audio frame, and delivery =
client TTFA - server first audio. For each kind: `--turns` turns one after another on one session
(after one warm-up turn), then for each count K in `--sessions` (e.g. `--sessions 4 16`), K
sessions at once (started together), each doing `--concurrent-turns` turns. p50/p95 of every
part, and each figure as a ratio against the 1-session figure measured in the same run
(machines are noisy, ratios less so).

The launched stack gets `LLMVOX_GATEWAY_HISTORY_TURNS=0` (`--history-turns`): every LLM prompt
is the question alone, so a session's 10th turn costs what its first does and the two phases
compare; and greedy answers of at most `--llm-max-tokens` tokens.

With the tiny TTS profile the weights are UNTRAINED (random): its sentences are bounded by a
length budget, not ended by the model, and the audio is noise. The TTS figures measure the
pipeline around an untrained model of that size, not real speech.

    python bench/e2e.py                  # table + JSON file under bench/results/
    python bench/e2e.py --json           # one JSON object on stdout
    python bench/e2e.py --url http://127.0.0.1:5003   # a running gateway
"""

from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from llmvox_common.audio import float_to_pcm16, read_wav
from llmvox_common.constants import WORKERS_KEY_PREFIX

REPO = Path(__file__).resolve().parents[1]
KINDS = ("verbatim", "text", "voice")
VERBATIM_TEXT = (
    "The train to the coast leaves at nine in the morning. "
    "Bring a warm coat, because the wind near the water is cold."
)
QUESTIONS = (
    "What is the capital of France?",
    "Give me one tip for sleeping better.",
    "Why is the sky blue?",
    "Name a fruit that is yellow.",
)
# Server marks in the order a turn reaches them; each part runs from the mark before it.
MARKS = ("asr", "llm_first_token", "first_sentence", "first_audio")
ROWS = (
    ("asr", "ASR"),
    ("llm_first_token", "LLM first token"),
    ("first_sentence", "first sentence"),
    ("first_audio", "TTS first part"),
    ("server_first_audio", "server first audio"),
    ("delivery", "delivery"),
    ("client_ttfa", "client TTFA"),
    ("server_total", "turn total (server)"),
)
INPUT_RATE = 16_000
FRAME_SAMPLES = INPUT_RATE // 10  # 100 ms
READY_LINE = re.compile(r"LLMVoX is ready: (https?://\S+)")
WORKER_KEYS = WORKERS_KEY_PREFIX + "*"
WARM_UP = -1  # the turn index of the uncounted first turn (it asks the last question)


class BenchError(Exception):
    """A turn or the stack went wrong: the run stops with this message."""


# -- the stack ----------------------------------------------------------------------------------


class LaunchedStack:
    """`llmvox-launch` as a child process: its output goes to `log_path` (and the last lines are
    kept for errors); `start` waits for the URL line, `stop` sends SIGINT and waits."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.last_lines: collections.deque[str] = collections.deque(maxlen=40)
        self.url: str | None = None
        self._ready = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self, timeout_s: float) -> str:
        # Its own session: a Ctrl-C in the terminal reaches only this script, which then stops
        # the launcher with one SIGINT (a second one would make it kill without a grace period).
        self._proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._pump, name="launcher-output", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(0.2):
            if self._proc.poll() is not None:
                raise BenchError(
                    f"llmvox-launch exited with code {self._proc.returncode} before it was "
                    f"ready; last lines:\n{self._tail()}"
                )
            if time.monotonic() > deadline:
                raise BenchError(f"llmvox-launch not ready after {timeout_s:g} s:\n{self._tail()}")
        assert self.url is not None
        return self.url

    def _pump(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        with self.log_path.open("w") as log:
            for line in self._proc.stdout:
                log.write(line)
                log.flush()
                self.last_lines.append(line.rstrip("\n"))
                match = READY_LINE.search(line)
                if match and self.url is None:
                    self.url = match.group(1).rstrip("/")
                    self._ready.set()

    def _tail(self) -> str:
        return "\n".join(f"  | {line}" for line in self.last_lines)

    def stop(self, timeout_s: float) -> int | None:
        """SIGINT, then wait; the launcher's exit status (None if it had to be killed)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                print(
                    f"llmvox-launch still running {timeout_s:g} s after SIGINT; killing it",
                    file=sys.stderr,
                )
                proc.kill()
                proc.wait()
                return None
        if self._reader is not None:
            self._reader.join(timeout=5)
        return proc.returncode


def check_redis_db_free(url: str) -> None:
    """Refuse a Redis database where TTS replicas already beat: they would take this stack's
    jobs (one consumer group per database) and the figures would not be this stack's."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5) as client:
            workers = sorted(k.decode() for k in client.scan_iter(WORKER_KEYS))
    except redis.RedisError:
        return  # no server there yet: the launcher starts one
    if workers:
        raise BenchError(
            f"TTS replicas of another stack are alive in {url}: {', '.join(workers)}; "
            "pick a free database with --redis-url"
        )


# -- speech input -------------------------------------------------------------------------------


def spoken_questions(workdir: Path) -> list[bytes]:
    """Each question spoken by espeak-ng, as PCM16 LE mono at 16 kHz."""
    if shutil.which("espeak-ng") is None:
        subprocess.run(["bash", str(REPO / "scripts" / "ensure-espeak.sh")], check=True)
    clips = []
    for i, text in enumerate(QUESTIONS):
        path = workdir / f"question{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        samples, rate = read_wav(path)
        if rate != INPUT_RATE:  # espeak-ng speaks at 22050 Hz; speech has little above 8 kHz
            times = np.arange(round(len(samples) * INPUT_RATE / rate)) / INPUT_RATE
            samples = np.interp(times, np.arange(len(samples)) / rate, samples)
        clips.append(float_to_pcm16(samples.astype(np.float32)).tobytes())
    return clips


# -- one session --------------------------------------------------------------------------------


@dataclass
class TurnResult:
    kind: str
    session: int
    index: int
    client_ttfa_s: float
    client_total_s: float
    timings: dict[str, float | None]
    parts: dict[str, float]
    audio_seconds: float
    input_audio_seconds: float | None = None
    transcript: str | None = None
    answer: str = ""


@dataclass
class Session:
    url: str
    number: int
    audio_speed: float
    turn_timeout_s: float
    ws: ClientConnection = field(init=False)
    info: dict[str, Any] = field(init=False)
    _exit: contextlib.ExitStack = field(init=False, default_factory=contextlib.ExitStack)

    def __enter__(self) -> Session:
        ws_url = re.sub(r"^http", "ws", self.url) + "/v1/ws"
        self.ws = self._exit.enter_context(connect(ws_url, open_timeout=30, max_size=None))
        event = self._event(time.monotonic() + 30)
        if event.get("type") != "session.created":
            self._exit.close()
            raise BenchError(f"session {self.number}: expected session.created, got {event}")
        self.info = event["session"]
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()

    def _recv(self, deadline: float) -> str | bytes:
        try:
            return self.ws.recv(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise BenchError(
                f"session {self.number}: nothing from the gateway for {self.turn_timeout_s:g} s"
            ) from None
        except ConnectionClosed as closed:
            raise BenchError(f"session {self.number}: the gateway closed it: {closed}") from None

    def _event(self, deadline: float) -> dict[str, Any]:
        while True:
            frame = self._recv(deadline)
            if isinstance(frame, str):
                event: dict[str, Any] = json.loads(frame)
                if event.get("type") == "error":
                    raise BenchError(f"session {self.number}: error event {event.get('error')}")
                return event

    def _send(self, event: dict[str, Any]) -> None:
        self.ws.send(json.dumps(event))

    def _drain(self) -> None:
        """Reads what came while the client was sending audio (partial transcripts)."""
        while True:
            try:
                frame = self.ws.recv(timeout=0)
            except TimeoutError:
                return
            if isinstance(frame, str) and json.loads(frame).get("type") == "error":
                raise BenchError(f"session {self.number}: error event {frame}")

    def turn(self, kind: str, index: int, clips: list[bytes]) -> TurnResult:
        deadline = time.monotonic() + self.turn_timeout_s
        question = QUESTIONS[index % len(QUESTIONS)]
        input_seconds: float | None = None
        if kind == "verbatim":
            started = time.perf_counter()
            self._send({"type": "llmvox.text.append", "text": VERBATIM_TEXT})
            self._send({"type": "llmvox.text.commit"})
        elif kind == "text":
            item = {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": question}],
            }
            self._send({"type": "conversation.item.create", "item": item})
            while self._event(deadline).get("type") != "conversation.item.created":
                pass
            started = time.perf_counter()
            self._send({"type": "response.create"})
        else:
            pcm = clips[index % len(clips)]
            input_seconds = len(pcm) / 2 / INPUT_RATE
            step = FRAME_SAMPLES * 2
            began = time.perf_counter()
            for n, offset in enumerate(range(0, len(pcm), step)):
                if self.audio_speed > 0:
                    wait = began + n * 0.1 / self.audio_speed - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                self.ws.send(pcm[offset : offset + step])
                self._drain()
            started = time.perf_counter()
            self._send({"type": "input_audio_buffer.commit"})
        return self._finish(kind, index, started, deadline, input_seconds)

    def _finish(
        self, kind: str, index: int, started: float, deadline: float, input_seconds: float | None
    ) -> TurnResult:
        first_audio: float | None = None
        transcript: str | None = None
        while True:
            frame = self._recv(deadline)
            if isinstance(frame, bytes):
                if first_audio is None:
                    first_audio = time.perf_counter()
                continue
            event = json.loads(frame)
            match event.get("type"):
                case "error":
                    raise BenchError(
                        f"{kind} {turn_name(index)} (session {self.number}): error event "
                        f"{event.get('error')}"
                    )
                case "transcript.final":
                    transcript = event.get("text")
                case "response.done":
                    ended = time.perf_counter()
                    response = event["response"]
                    break
        if response.get("status") != "completed":
            raise BenchError(
                f"{kind} {turn_name(index)} (session {self.number}): response.done status "
                f"{response.get('status')!r}: {json.dumps(response)}"
            )
        if first_audio is None:
            raise BenchError(f"{kind} {turn_name(index)}: response.done without any audio frame")
        timings = response["timings"]
        client_ttfa = first_audio - started
        if timings.get("first_audio_s") is None:
            raise BenchError(f"{kind} {turn_name(index)}: no first_audio_s in {timings}")
        return TurnResult(
            kind=kind,
            session=self.number,
            index=index,
            client_ttfa_s=client_ttfa,
            client_total_s=ended - started,
            timings=timings,
            parts=turn_parts(timings, client_ttfa),
            audio_seconds=response.get("audio_seconds", 0.0),
            input_audio_seconds=input_seconds,
            transcript=transcript,
            answer=response.get("text", ""),
        )


def turn_name(index: int) -> str:
    return "warm-up turn" if index == WARM_UP else f"turn {index}"


def turn_parts(timings: dict[str, float | None], client_ttfa: float) -> dict[str, float]:
    """The server's marks as consecutive parts, plus delivery and the totals."""
    parts: dict[str, float] = {}
    previous = 0.0
    for mark in MARKS:
        value = timings.get(f"{mark}_s")
        if value is not None:
            parts[mark] = value - previous
            previous = value
    first_audio = timings["first_audio_s"]
    assert first_audio is not None
    parts["server_first_audio"] = first_audio
    parts["delivery"] = client_ttfa - first_audio
    parts["client_ttfa"] = client_ttfa
    if timings.get("total_s") is not None:
        parts["server_total"] = float(timings["total_s"] or 0.0)
    return parts


# -- phases -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(turns: list[TurnResult]) -> dict[str, dict[str, float]]:
    stats: dict[str, dict[str, float]] = {}
    for key, _ in ROWS:
        values = [t.parts[key] for t in turns if key in t.parts]
        if values:
            stats[key] = {
                "n": len(values),
                "p50_s": statistics.median(values),
                "p95_s": percentile(values, 0.95),
                "mean_s": statistics.fmean(values),
                "max_s": max(values),
            }
    return stats


def single_session(url: str, kind: str, clips: list[bytes], args: argparse.Namespace) -> dict:
    with Session(url, 0, args.audio_speed, args.turn_timeout_s) as session:
        warm_up = session.turn(kind, WARM_UP, clips)
        turns = [session.turn(kind, i, clips) for i in range(args.turns)]
    return {
        "sessions": 1,
        "warm_up": asdict(warm_up),
        "turns": [asdict(t) for t in turns],
        "stats": summarize(turns),
        "session_info": session.info,
    }


def concurrent_sessions(
    url: str, kind: str, clips: list[bytes], args: argparse.Namespace, count: int
) -> dict:
    turns_each = concurrent_turns(args, count)
    results: list[list[TurnResult]] = [[] for _ in range(count)]
    failures: list[BaseException] = []
    start_together = threading.Barrier(count)

    def run(number: int) -> None:
        try:
            with Session(url, number, args.audio_speed, args.turn_timeout_s) as session:
                start_together.wait(timeout=60)
                for i in range(turns_each):
                    results[number].append(session.turn(kind, number + i, clips))
        except BaseException as error:  # reported by the main thread, which fails the run
            failures.append(error)
            start_together.abort()

    began = time.perf_counter()
    threads = [threading.Thread(target=run, args=(n,), name=f"session-{n}") for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    real = [f for f in failures if not isinstance(f, threading.BrokenBarrierError)]
    if real or failures:
        raise (real or failures)[0]
    turns = [t for session_turns in results for t in session_turns]
    return {
        "sessions": count,
        "turns_per_session": turns_each,
        "wall_s": wall,
        "turns": [asdict(t) for t in turns],
        "stats": summarize(turns),
    }


def ratios(single: dict, concurrent: dict) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key, _ in ROWS:
        one, many = single["stats"].get(key), concurrent["stats"].get(key)
        if one and many:
            out[key] = {
                q: many[f"{q}_s"] / one[f"{q}_s"] if one[f"{q}_s"] > 0 else math.nan
                for q in ("p50", "p95")
            }
    return out


def bench_kind(url: str, kind: str, clips: list[bytes], args: argparse.Namespace) -> dict:
    result: dict[str, Any] = {"kind": kind, "single": single_session(url, kind, clips, args)}
    single = result["single"]["stats"]
    ttfa = single["client_ttfa"]["p50_s"]
    # Each part's p50 against the client's TTFA p50, both from the 1-session turns.
    result["share_of_ttfa_p50"] = {key: stats["p50_s"] / ttfa for key, stats in single.items()}
    result["server_share_of_ttfa_p50"] = result["share_of_ttfa_p50"]["server_first_audio"]
    # One entry per session count, in --sessions order.
    result["concurrent"] = [
        concurrent_sessions(url, kind, clips, args, count) for count in args.sessions
    ]
    result["concurrency_ratios"] = [ratios(result["single"], c) for c in result["concurrent"]]
    return result


def concurrent_turns(args: argparse.Namespace, count: int) -> int:
    """Turns per session when `count` sessions run at once: --concurrent-turns, else the
    single-session turns spread over them (rounded up), so each phase does as many turns."""
    if args.concurrent_turns is not None:
        return int(args.concurrent_turns)
    return math.ceil(args.turns / count)


# -- report -------------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    gpus: list[str] = []
    if shutil.which("nvidia-smi"):
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
        gpus = [line for line in listing.stdout.splitlines() if line.strip()]
    return {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "gpus": gpus,
        "python": platform.python_version(),
    }


def ms(stats: dict[str, float] | None, q: str) -> str:
    return "-" if stats is None else f"{stats[f'{q}_s'] * 1000:.0f}"


def ratio(value: dict[str, float] | None, q: str) -> str:
    return "-" if value is None else f"{value[q]:.2f}x"


def print_tables(report: dict) -> None:
    for res in report["kinds"]:
        single, runs = res["single"], res.get("concurrent", [])
        head = f"\n== {res['kind']}: {len(single['turns'])} turns on 1 session"
        for run in runs:
            head += (
                f" | {run['sessions']} sessions at once x {run['turns_per_session']} turns "
                f"({len(run['turns'])} turns, {run['wall_s']:.1f} s)"
            )
        print(head + "  [ms]")
        columns = f"{'part':<20} {'1: p50':>8} {'p95':>7} {'/TTFA':>6}"
        for run in runs:
            k = run["sessions"]
            columns += f" {f'{k}: p50':>8} {'p95':>7} {'x p50':>7} {'x p95':>7}"
        print(columns)
        for key, label in ROWS:
            one = single["stats"].get(key)
            if one is None:
                continue
            share = res["share_of_ttfa_p50"][key]
            line = f"{label:<20} {ms(one, 'p50'):>8} {ms(one, 'p95'):>7} {share:>6.0%}"
            for run, run_ratios in zip(runs, res.get("concurrency_ratios", []), strict=True):
                many = run["stats"].get(key)
                r = run_ratios.get(key)
                line += (
                    f" {ms(many, 'p50'):>8} {ms(many, 'p95'):>7} {ratio(r, 'p50'):>7} "
                    f"{ratio(r, 'p95'):>7}"
                )
            print(line)
    print(
        "\n/TTFA: the 1-session p50 over the client TTFA p50; x: the K-session figure over the "
        "1-session figure (same run)"
    )
    stack = report["stack"]
    if stack.get("tts_untrained"):
        print(
            "\nTTS: UNTRAINED tiny profile (random weights): sentences are bounded by a length "
            "budget and the audio is noise; the TTS figures measure the pipeline, not speech."
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--url", help="bench this running gateway (http://HOST:PORT) instead")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--turns", type=int, default=10, help="turns on the single session")
    parser.add_argument(
        "--sessions",
        type=int,
        nargs="*",
        default=[4],
        help="session counts of the concurrent phases, one phase each (e.g. 4 16; none: no "
        "concurrent phase)",
    )
    parser.add_argument(
        "--concurrent-turns",
        type=int,
        default=None,
        help="turns per concurrent session (default: turns / sessions, rounded up, per phase)",
    )
    parser.add_argument(
        "--audio-speed",
        type=float,
        default=1.0,
        help="voice input pace: 1 = real time, 2 = twice as fast, 0 = as fast as it can be sent",
    )
    parser.add_argument("--turn-timeout-s", type=float, default=120.0)
    launch = parser.add_argument_group("the launched stack (ignored with --url)")
    launch.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    launch.add_argument("--tts-replicas", type=int, default=2)
    launch.add_argument("--llm-max-tokens", type=int, default=48)
    launch.add_argument(
        "--history-turns",
        type=int,
        default=0,
        help="the gateway's history_turns (0: each prompt is the question alone)",
    )
    launch.add_argument(
        "--launch-arg",
        action="append",
        default=[],
        help="one more llmvox-launch argument (repeat it), e.g. --launch-arg=--tts_profile=tiny",
    )
    launch.add_argument("--ready-timeout-s", type=float, default=600.0)
    launch.add_argument(
        "--tts-published-size",
        metavar="PRECISION",
        default=None,
        help="serve a published-size TTS (random weights written in the published file layouts, "
        "loaded by the real loaders: bench/tts_serving.py) with this decoder precision "
        "(e.g. int8, the CPU default, or fp32, the exact mode)",
    )
    parser.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    if args.turns < 1 or any(count < 1 for count in args.sessions):
        parser.error("--turns and every --sessions count must be positive")
    return args


def launcher_argv(args: argparse.Namespace) -> list[str]:
    return [
        str(Path(sys.executable).parent / "llmvox-launch"),
        "--ports",
        "auto",
        "--api_port",
        "0",
        "--host",
        "127.0.0.1",
        "--redis_url",
        args.redis_url,
        "--tts_replicas",
        str(args.tts_replicas),
        "--llm_max_tokens",
        str(args.llm_max_tokens),
        "--llm_temperature",
        "0",
        *published_size_args(args),
        *args.launch_arg,
    ]


def published_size_args(args: argparse.Namespace) -> list[str]:
    """Launcher flags of `--tts-published-size`: random weights in the published layouts, in a
    directory that lives as long as this process (written once)."""
    if args.tts_published_size is None:
        return []
    from tts_serving import write_published_layout  # bench/ is on sys.path when run as a script

    root = Path(tempfile.mkdtemp(prefix="llmvox-e2e-published-"))
    atexit.register(shutil.rmtree, root, True)  # hundreds of MB: gone when the bench ends
    decoder_dir, wavtokenizer_dir, text_dir = write_published_layout(root)
    return [
        "--tts_profile",
        "published",
        "--llmvox_checkpoint",
        str(decoder_dir),
        "--wavtokenizer_checkpoint",
        str(wavtokenizer_dir),
        "--text_model",
        str(text_dir),
        "--tts_precision",
        args.tts_published_size,
    ]


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # runs the `finally` that stops the launched stack


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    report: dict[str, Any] = {
        "benchmark": "e2e",
        "time": stamp,
        **machine_facts(),
        "load_avg_1min_start": os.getloadavg()[0],
        "turns": args.turns,
        "sessions": args.sessions,
        "concurrent_turns": {count: concurrent_turns(args, count) for count in args.sessions},
        "audio_speed": args.audio_speed,
    }
    say = (lambda _: None) if args.json else (lambda text: print(text, flush=True))
    stack: LaunchedStack | None = None
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            clips = spoken_questions(Path(tmp)) if "voice" in args.kinds else []
        if args.url:
            url = args.url.rstrip("/")
            report["stack"] = {"url": url, "launched": False, "history_turns": "the server's"}
        else:
            check_redis_db_free(args.redis_url)
            argv = launcher_argv(args)
            env = {**os.environ, "LLMVOX_GATEWAY_HISTORY_TURNS": str(args.history_turns)}
            log_path = out_dir / f"e2e-{stamp.replace(':', '')}-stack.log"
            stack = LaunchedStack(argv, env, log_path)
            say(f"starting the stack: {' '.join(argv[1:])} (log: {log_path})")
            launch_began = time.perf_counter()
            url = stack.start(args.ready_timeout_s)
            report["stack"] = {
                "url": url,
                "launched": True,
                "argv": argv[1:],
                "history_turns": args.history_turns,
                "ready_s": time.perf_counter() - launch_began,
                "log": str(log_path),
            }
            say(f"stack ready at {url} in {report['stack']['ready_s']:.1f} s")
        report["kinds"] = []
        for kind in args.kinds:
            say(f"{kind} turns ...")
            report["kinds"].append(bench_kind(url, kind, clips, args))
            report["stack"]["tts_untrained"] = report["kinds"][0]["single"]["session_info"].get(
                "tts_untrained"
            )
    except BenchError as error:
        print(f"bench/e2e.py: {error}", file=sys.stderr)
        return 1
    finally:
        if stack is not None:
            status = stack.stop(timeout_s=90)
            report.setdefault("stack", {})["launcher_exit_status"] = status
            if status != 0:
                print(f"llmvox-launch exit status after SIGINT: {status}", file=sys.stderr)
    report["load_avg_1min_end"] = os.getloadavg()[0]
    report["wall_s"] = time.perf_counter() - started
    report["headline"] = {
        res["kind"]: {
            "client_ttfa_p50_s": res["single"]["stats"]["client_ttfa"]["p50_s"],
            "server_share_of_ttfa_p50": res["server_share_of_ttfa_p50"],
            # Per session count: client TTFA p50 at K sessions over the 1-session p50.
            "concurrency_ratio_ttfa_p50": {
                run["sessions"]: run_ratios.get("client_ttfa", {}).get("p50")
                for run, run_ratios in zip(
                    res["concurrent"], res["concurrency_ratios"], strict=True
                )
            },
            "client_ttfa_by_sessions": {
                run["sessions"]: {
                    "p50_s": run["stats"]["client_ttfa"]["p50_s"],
                    "p95_s": run["stats"]["client_ttfa"]["p95_s"],
                }
                for run in res["concurrent"]
            },
        }
        for res in report["kinds"]
    }
    out = out_dir / f"e2e-{stamp.replace(':', '')}.json"
    out.write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report))
        return 0
    print_tables(report)
    print(
        f"\n{report['cpus']} CPUs, GPUs: {', '.join(report['gpus']) or 'none'}; 1-min load "
        f"average {report['load_avg_1min_start']:.2f} at start, "
        f"{report['load_avg_1min_end']:.2f} at end\nwrote {out} ({report['wall_s']:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
