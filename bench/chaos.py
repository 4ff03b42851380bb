"""Faults under load: N WebSocket sessions speak continuously (verbatim turns: `llmvox.text.append`
+ `llmvox.text.commit`, each read to its `response.done`) for M minutes while a fault schedule
kills a TTS replica (SIGKILL), kills and restarts Redis, and kills the gateway (SIGKILL). The
launcher restarts the replica and the gateway on its own; Redis is this benchmark's own
`redis-server` (no persistence, as `make run` has it), restarted `--redis-down-s` after its kill.

The stack is the launcher's plan run by its supervisor (tests/e2e/stack.py): two tiny-profile
replicas (UNTRAINED random weights: the audio is noise; the figures are about delivery, not
speech) and the gateway, no ASR or LLM.

Reported:
- turns: completed, failed (by error code; `connection_closed` when the gateway died under the
  session, which then reconnects with a growing delay as the web page does);
- audio parts of the completed turns: expected (each text's part count in a fault-free warm-up
  run), received, lost (expected parts missing, or a hole in `sample_offset`), duplicated,
  out of order; the target is zero of each, every other turn failed with a clear error;
- per fault: the longest gap between two audio frames of any session from the fault on until
  recovery, and the time to recover: from the fault (for Redis: from Redis answering again) to
  the end of the first turn started after it that completed. Target: recovery <= 5 s.

    python bench/chaos.py                              # 4 sessions, 2 minutes
    python bench/chaos.py --sessions 8 --minutes 5     # more
    python bench/chaos.py --json                       # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import platform
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' stack and chaos helpers

from results_file import write_report  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidHandshake  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from tests.chaos.support import RedisServer, live_replicas, readyz, wait_until, ws_url  # noqa: E402
from tests.e2e.stack import Stack, running_stack  # noqa: E402

TEXTS = (
    "The chaos benchmark keeps talking. Faults come and go.",
    "Every part must arrive once and in order. Or the turn must fail clearly.",
    "Replicas die, Redis restarts, the gateway comes back.",
    "Short turn.",
)
FAULTS = ("replica", "redis", "gateway")
RECONNECT_MIN_S, RECONNECT_MAX_S = 0.5, 8.0  # as the web page (web/connection.js)
RECV_FAILSAFE_S = 60.0


@dataclass
class TurnRecord:
    session: int
    text: int
    started: float
    ended: float = 0.0
    status: str = ""  # completed | failed | cancelled | connection_closed
    error_code: str | None = None
    parts: list[tuple[int, int]] = field(default_factory=list)
    offsets_ok: bool = True  # each part's sample_offset continues the previous one


@dataclass
class FaultRecord:
    kind: str
    at: float  # monotonic
    back_at: float | None = None  # Redis answering again (redis faults)
    recovered_at: float | None = None
    longest_gap_s: float | None = None

    def recovery_s(self) -> float | None:
        if self.recovered_at is None:
            return None
        return self.recovered_at - (self.back_at or self.at)


class Session(threading.Thread):
    """One client: speaks TEXTS in turn until `stop`, reconnecting after a lost connection."""

    def __init__(self, number: int, base_url: str, stop: threading.Event) -> None:
        super().__init__(name=f"session-{number}", daemon=True)
        self.number = number
        self.url = ws_url(base_url)
        self.stop_event = stop
        self.turns: list[TurnRecord] = []
        self.audio_times: list[float] = []
        self.reconnects = 0

    def run(self) -> None:
        delay = RECONNECT_MIN_S
        turn_index = self.number
        while not self.stop_event.is_set():
            try:
                with connect(self.url, max_size=None, open_timeout=5) as socket:
                    created = json.loads(socket.recv(timeout=RECV_FAILSAFE_S))
                    if created.get("type") != "session.created":
                        raise ConnectionError(f"refused: {created}")
                    delay = RECONNECT_MIN_S
                    while not self.stop_event.is_set():
                        self.turn(socket, turn_index % len(TEXTS))
                        turn_index += 1
            except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError, ConnectionError):
                if self.turns and not self.turns[-1].status:
                    self.turns[-1].status = "connection_closed"
                    self.turns[-1].error_code = "connection_closed"
                    self.turns[-1].ended = time.monotonic()
                self.reconnects += 1
                if self.stop_event.wait(delay):
                    return
                delay = min(delay * 2, RECONNECT_MAX_S)

    def turn(self, socket: Any, text: int) -> None:
        record = TurnRecord(self.number, text, time.monotonic())
        self.turns.append(record)
        socket.send(json.dumps({"type": "llmvox.text.append", "text": TEXTS[text]}))
        socket.send(json.dumps({"type": "llmvox.text.commit"}))
        samples = 0
        while True:
            message = socket.recv(timeout=RECV_FAILSAFE_S)
            if isinstance(message, bytes):
                self.audio_times.append(time.monotonic())
                continue
            event = json.loads(message)
            kind = event["type"]
            if kind == "response.audio.delta":
                record.parts.append((event["seq"], event["part"]))
                record.offsets_ok &= event["sample_offset"] == samples
                samples += event["samples"]
            elif kind == "error" and record.error_code is None:
                record.error_code = event["error"].get("code")
            elif kind == "response.done":
                record.status = event["response"]["status"]
                record.ended = time.monotonic()
                return


def expected_parts(base_url: str) -> list[int]:
    """Each text's part count in a fault-free run (one session, before any fault)."""
    counts = []
    stop = threading.Event()
    session = Session(0, base_url, stop)
    with connect(session.url, max_size=None, open_timeout=10) as socket:
        json.loads(socket.recv(timeout=RECV_FAILSAFE_S))
        for index in range(len(TEXTS)):
            session.turn(socket, index)
            record = session.turns[-1]
            if record.status != "completed":
                raise SystemExit(f"warm-up turn {index} ended {record.status}")
            counts.append(len(record.parts))
    return counts


def inject(
    kind: str, stack: Stack, redis: RedisServer, redis_down_s: float, turn: int
) -> FaultRecord:
    launcher = stack.launcher
    if kind == "replica":
        name = f"tts{1 + turn % 2}"
        pid = launcher.pid(name)
        assert pid is not None, f"{name} is not running"
        fault = FaultRecord(f"replica ({name})", time.monotonic())
        os.kill(pid, signal.SIGKILL)
        return fault
    if kind == "gateway":
        pid = launcher.pid("gateway")
        assert pid is not None, "the gateway is not running"
        fault = FaultRecord("gateway", time.monotonic())
        os.kill(pid, signal.SIGKILL)
        return fault
    fault = FaultRecord("redis", time.monotonic())
    redis.kill()
    time.sleep(redis_down_s)  # the outage's length is the schedule's, not a wait for a condition
    redis.start()
    fault.back_at = time.monotonic()
    return fault


def settle(stack: Stack, redis: RedisServer, replicas: int) -> None:
    """Wait until the stack is whole again (every replica ready, the gateway ready)."""
    launcher = stack.launcher

    def whole() -> bool:
        launcher.check_running()
        up = all(launcher.is_ready(f"tts{i}") for i in range(1, replicas + 1))
        return up and len(live_replicas(redis.url)) == replicas and readyz(stack.base_url)[0] == 200

    wait_until(whole, 180.0, "the stack whole again")


def analyse(
    sessions: list[Session], faults: list[FaultRecord], expected: list[int], started: float
) -> dict[str, Any]:
    """The report's figures; `started` is when the sessions began (fault times count from it)."""
    turns = [t for s in sessions for t in s.turns if t.status]
    completed = [t for t in turns if t.status == "completed"]
    failed = [t for t in turns if t.status != "completed"]
    received = sum(len(t.parts) for t in completed)
    want = sum(expected[t.text] for t in completed)
    duplicated = sum(len(t.parts) - len(set(t.parts)) for t in completed)
    out_of_order = sum(sum(1 for a, b in itertools.pairwise(t.parts) if b <= a) for t in completed)
    lost = sum(max(0, expected[t.text] - len(set(t.parts))) for t in completed)
    holes = sum(1 for t in completed if not t.offsets_ok)
    codes = collections.Counter(t.error_code or t.status for t in failed)
    audio_times = sorted(x for s in sessions for x in s.audio_times)
    for fault in faults:
        start = fault.at
        after = [t for t in completed if t.started >= (fault.back_at or fault.at)]
        fault.recovered_at = min((t.ended for t in after), default=None)
        end = fault.recovered_at or (start + 30.0)
        # The longest stretch with no audio frame at any session, from the fault to recovery.
        marks = [start, *(x for x in audio_times if start <= x <= end), end]
        fault.longest_gap_s = max(b - a for a, b in itertools.pairwise(marks))
    return {
        "turns": len(turns),
        "completed": len(completed),
        "failed": len(failed),
        "failed_by_code": dict(codes),
        "parts_expected": want,
        "parts_received": received,
        "parts_lost": lost,
        "offset_holes": holes,
        "parts_duplicated": duplicated,
        "parts_out_of_order": out_of_order,
        "reconnects": sum(s.reconnects for s in sessions),
        "faults": [
            {
                "kind": f.kind,
                "at_s": round(f.at - started, 2),
                "longest_gap_s": None if f.longest_gap_s is None else round(f.longest_gap_s, 3),
                "recovery_s": None if f.recovery_s() is None else round(f.recovery_s() or 0, 3),
            }
            for f in faults
        ],
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=4, help="WebSocket sessions speaking")
    parser.add_argument("--minutes", type=float, default=2.0, help="how long they speak")
    parser.add_argument(
        "--faults",
        nargs="+",
        choices=FAULTS,
        default=list(FAULTS),
        help="the schedule, repeated in turn, spread evenly over the run",
    )
    parser.add_argument("--fault-count", type=int, default=3, help="faults in the run")
    parser.add_argument("--redis-down-s", type=float, default=1.0, help="Redis outage length")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    log = (lambda _: None) if args.json else (lambda m: print(f"[bench-chaos] {m}", flush=True))
    replicas = 2
    with tempfile.TemporaryDirectory(prefix="llmvox-chaos-") as tmp:
        workdir = Path(tmp)
        redis = RedisServer(workdir)
        redis.start()
        try:
            with running_stack(
                redis.url, workdir, replicas=replicas, asr_model="none", llm_checkpoint="none"
            ) as stack:
                log(f"stack ready at {stack.base_url}; warm-up")
                expected = expected_parts(stack.base_url)
                stop = threading.Event()
                sessions = [Session(i, stack.base_url, stop) for i in range(args.sessions)]
                for session in sessions:
                    session.start()
                duration = args.minutes * 60.0
                started = time.monotonic()
                every = duration / (args.fault_count + 1)
                faults: list[FaultRecord] = []
                for n in range(args.fault_count):
                    kind = args.faults[n % len(args.faults)]
                    # The schedule's own clock: faults at fixed points of the run.
                    stop.wait(max(0.0, started + every * (n + 1) - time.monotonic()))
                    log(f"fault {n + 1}: {kind}")
                    faults.append(inject(kind, stack, redis, args.redis_down_s, n // len(FAULTS)))
                    settle(stack, redis, replicas)
                stop.wait(max(0.0, started + duration - time.monotonic()))
                stop.set()
                for session in sessions:
                    session.join(timeout=RECV_FAILSAFE_S + 10)
        finally:
            redis.stop()
    report = {
        "bench": "chaos",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {
            "sessions": args.sessions,
            "minutes": args.minutes,
            "faults": args.faults,
            "fault_count": args.fault_count,
            "redis_down_s": args.redis_down_s,
            "replicas": replicas,
            "tts_profile": "tiny (untrained)",
        },
        "expected_parts_per_text": expected,
        **analyse(sessions, faults, expected, started),
    }
    path = write_report("chaos", report, args.out_dir)
    if args.json:
        print(json.dumps(report))
        return 0
    print(render(report))
    print(f"\nJSON: {path}")
    return 0


def render(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"{s['sessions']} sessions x {s['minutes']:g} min, {s['replicas']} replicas "
        f"({s['tts_profile']}), faults: {', '.join(f['kind'] for f in report['faults'])}",
        "",
        f"turns {report['turns']}: completed {report['completed']}, failed {report['failed']} "
        f"{report['failed_by_code'] or ''}",
        f"parts of completed turns: expected {report['parts_expected']}, received "
        f"{report['parts_received']}, lost {report['parts_lost']} (offset holes "
        f"{report['offset_holes']}), duplicated {report['parts_duplicated']}, out of order "
        f"{report['parts_out_of_order']}",
        f"reconnects: {report['reconnects']}",
        "",
        f"{'fault':<16} {'at (s)':>8} {'longest gap (s)':>16} {'recovery (s)':>13}",
    ]
    for fault in report["faults"]:
        lines.append(
            f"{fault['kind']:<16} {fault['at_s']:>8} {fault['longest_gap_s']!s:>16} "
            f"{fault['recovery_s']!s:>13}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
