"""The launcher's supervisor with tiny real child processes (`python -c` scripts) and real
signals: stage order, prefixed output, readiness, a child that dies and is restarted (or keeps
failing at start-up and stops the stack), SIGTERM then SIGKILL, the process group, and the
children of a launcher that is killed.

Each dummy child appends `<event> <name> <pid>` lines to a shared journal file; the order of the
lines is the order of the events. Nothing waits a fixed time: children idle in `signal.pause()`,
a child "dies while running" when the test signals it to, and a process being gone is waited
for on its pidfd."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmvox_launch.plan import ChildSpec, HttpOk, LogLine, Plan, Step
from llmvox_launch.restart import RestartPolicy
from llmvox_launch.supervisor import Supervisor, pdeathsig_prefix
from tests.process_support import process_gone

pytestmark = pytest.mark.unit

# Restarts without the production delays (their arithmetic is test_launcher_restart.py's).
QUICK_RESTARTS = RestartPolicy(first_delay_s=0.05, max_delay_s=0.2)

DUMMY = textwrap.dedent(
    """
    import os, signal, subprocess, sys
    name, journal, mode = sys.argv[1], sys.argv[2], sys.argv[3]

    def record(event):
        with open(journal, "a") as f:
            f.write(f"{event} {name} {os.getpid()}\\n")

    def on_term(signum, frame):
        record("stop")
        sys.exit(0)

    signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else on_term)
    record("start")
    print(f"hello from {name}", flush=True)
    if mode == "crash":
        print("boom: the model file is unreadable", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "grandchild":
        kid = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
        record(f"grandchild-{kid.pid}")
    if mode == "crash-later":
        # Dies once running: when the test sends SIGUSR1 (after the supervisor said ready).
        def crash(signum, frame):
            print("lost the connection", flush=True)
            sys.exit(4)

        signal.signal(signal.SIGUSR1, crash)
    record("ready")
    print("ready", flush=True)
    while True:
        signal.pause()
    """
)


def dummy(name: str, journal: Path, mode: str = "ok", stage: int = 1) -> ChildSpec:
    argv = (sys.executable, "-c", DUMMY, name, str(journal), mode)
    return ChildSpec(name, argv, {}, LogLine("ready"), stage)


def events(journal: Path) -> list[tuple[str, str, int]]:
    if not journal.exists():
        return []
    rows = [line.split() for line in journal.read_text().splitlines()]
    return [(event, name, int(pid)) for event, name, pid in rows]


def position(journal: Path, event: str, name: str) -> int:
    rows = [(e, n) for e, n, _ in events(journal)]
    assert (event, name) in rows, f"no {event} of {name} in {rows}"
    return rows.index((event, name))


def run(
    plan: Plan,
    *,
    signal_when_ready: signal.Signals | None = signal.SIGINT,
    on_ready: Callable[[], None] | None = None,
    **options: Any,
) -> tuple[int, str]:
    """Run the supervisor in this process; when everything is ready, call `on_ready` and/or
    send this process a real signal. Returns the exit status and the output."""
    out = io.StringIO()

    def when_ready() -> None:
        if on_ready is not None:
            on_ready()
        if signal_when_ready is not None:
            os.kill(os.getpid(), signal_when_ready)

    options.setdefault("restart", QUICK_RESTARTS)
    supervisor = Supervisor(plan, out=out, on_ready=when_ready, poll_interval_s=0.05, **options)
    status = asyncio.run(supervisor.run())
    return status, out.getvalue()


def started_pid(journal: Path, name: str) -> int:
    ((_, _, pid),) = [row for row in events(journal) if row[:2] == ("start", name)]
    return pid


def count(journal: Path, event: str, name: str) -> int:
    return sum(1 for row in events(journal) if row[:2] == (event, name))


def signal_self_when(condition: Callable[[], bool], sig: signal.Signals) -> threading.Thread:
    """Send this process `sig` once `condition` holds (polled: the journal file signals nothing);
    gives up after 60 s so a broken test fails instead of hanging."""
    done = threading.Event()

    def watch() -> None:
        for _ in range(60 * 20):
            if condition():
                break
            if done.wait(0.05):
                return
        os.kill(os.getpid(), sig)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_stages_start_in_order_and_stop_in_reverse_on_ctrl_c(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    plan = Plan(
        (dummy("asr", journal), dummy("llm", journal), dummy("gateway", journal, stage=2)),
        url="http://127.0.0.1:1/",
        notices=("the TTS is UNTRAINED",),
    )
    status, out = run(plan, signal_when_ready=signal.SIGINT)
    assert status == 0
    started_gateway = position(journal, "start", "gateway")
    assert started_gateway > position(journal, "ready", "asr")
    assert started_gateway > position(journal, "ready", "llm")
    stopped_gateway = position(journal, "stop", "gateway")
    assert stopped_gateway < position(journal, "stop", "asr")
    assert stopped_gateway < position(journal, "stop", "llm")
    assert all(process_gone(pid) for _, _, pid in events(journal))
    lines = out.splitlines()
    assert "[asr]     hello from asr" in lines
    assert "[gateway] hello from gateway" in lines
    assert "[launch]  LLMVoX is ready: http://127.0.0.1:1/" in lines
    assert "[launch]  the TTS is UNTRAINED" in lines
    ready_at = lines.index("[launch]  LLMVoX is ready: http://127.0.0.1:1/")
    assert any(line.startswith("[launch]  stopping gateway") for line in lines[ready_at:])


def test_sigterm_stops_everything_too(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    plan = Plan((dummy("a", journal), dummy("b", journal, stage=2)), url="http://x/")
    status, _ = run(plan, signal_when_ready=signal.SIGTERM)
    assert status == 0
    assert [e for e, _, _ in events(journal)].count("stop") == 2


def test_a_child_that_exits_before_ready_stops_everything_and_is_named(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    plan = Plan(
        (
            dummy("asr", journal),
            dummy("llm", journal, "crash"),
            dummy("gateway", journal, stage=2),
        ),
        url="http://x/",
    )
    status, out = run(plan, signal_when_ready=None)
    assert status == 1
    # Restarted twice, then the crash-loop limit (3 start-up failures) stops the stack.
    assert count(journal, "start", "llm") == 3
    assert "[launch]  llm exited (code 3); restarting in 0.05 s (attempt 1)" in out
    assert "[launch]  llm exited (code 3); restarting in 0.1 s (attempt 2)" in out
    assert (
        "error: llm exited with code 3 before it was ready, 3 times within 120 s; "
        "not restarting it." in out
    )
    assert "  | boom: the model file is unreadable" in out
    assert "LLMVoX is ready" not in out
    assert "gateway" not in {name for _, name, _ in events(journal)}  # never started
    assert all(process_gone(pid) for _, _, pid in events(journal))


def test_a_child_that_dies_while_running_is_restarted_and_the_others_keep_running(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "journal"
    plan = Plan(
        (dummy("tts1", journal), dummy("gateway", journal, "crash-later", stage=2)),
        url="http://x/",
    )
    # The gateway dies once the supervisor has announced the stack ready; Ctrl-C once its
    # second run is ready.
    signal_self_when(lambda: count(journal, "ready", "gateway") == 2, signal.SIGINT)
    status, out = run(
        plan,
        signal_when_ready=None,
        on_ready=lambda: os.kill(started_pid(journal, "gateway"), signal.SIGUSR1),
    )
    assert status == 0
    assert "[launch]  gateway exited (code 4); restarting in 0.05 s (attempt 1)" in out
    assert "[launch]  started gateway again (pid" in out
    assert "[launch]  gateway is ready again" in out
    assert "error" not in out
    # tts1 ran on, once, until the Ctrl-C.
    assert count(journal, "start", "tts1") == 1
    assert position(journal, "stop", "tts1") > position(journal, "start", "gateway")
    assert all(process_gone(pid) for _, _, pid in events(journal))


def test_a_child_killed_with_sigkill_is_named_by_its_signal(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    plan = Plan((dummy("tts1", journal), dummy("tts2", journal)), url="http://x/")

    def kill_tts1() -> None:
        os.kill(started_pid(journal, "tts1"), signal.SIGKILL)

    signal_self_when(lambda: count(journal, "ready", "tts1") == 2, signal.SIGTERM)
    status, out = run(plan, signal_when_ready=None, on_ready=kill_tts1)
    assert status == 0
    assert "[launch] tts1 exited (SIGKILL); restarting in 0.05 s (attempt 1)" in out
    assert count(journal, "start", "tts2") == 1
    assert all(process_gone(pid) for _, _, pid in events(journal))


def test_sigkill_after_the_grace_period(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    plan = Plan((dummy("stubborn", journal, "stubborn"),), url="http://x/")
    status, out = run(plan, stop_timeout_s=0.5)
    assert status == 0
    assert "stubborn did not stop within 0.5 s: SIGKILL" in out
    assert "stubborn stopped (ended by SIGKILL)" in out
    assert process_gone(started_pid(journal, "stubborn"))


def test_the_whole_process_group_is_stopped(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    plan = Plan((dummy("parent", journal, "grandchild"),), url="http://x/")
    status, _ = run(plan)
    assert status == 0
    (grandchild,) = [int(e.split("-")[1]) for e, _, _ in events(journal) if e.startswith("grand")]
    assert process_gone(grandchild)


def test_a_preparation_step_runs_before_its_child(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    script = f"open({str(journal)!r}, 'a').write('prepared llm 0\\n'); print('converted')"
    step = Step((sys.executable, "-c", script), description="converting once")
    spec = dummy("llm", journal)
    plan = Plan((ChildSpec(spec.name, spec.argv, {}, spec.ready, 1, (step,)),), url="http://x/")
    status, out = run(plan)
    assert status == 0
    assert position(journal, "prepared", "llm") < position(journal, "start", "llm")
    assert "[llm]    converted" in out


def test_a_failed_preparation_step_is_named_and_the_child_never_starts(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    failing = Step(
        (sys.executable, "-c", "import sys; print('gguf file is truncated'); sys.exit(2)"),
        description="converting once",
    )
    spec = dummy("llm", journal)
    plan = Plan((ChildSpec(spec.name, spec.argv, {}, spec.ready, 1, (failing,)),), url="http://x/")
    status, out = run(plan, signal_when_ready=None)
    assert status == 1
    assert "[launch] llm: converting once" in out
    assert "[llm]    gguf file is truncated" in out
    assert "error: llm preparation" in out
    assert "exited with code 2" in out
    assert events(journal) == []


def test_a_readiness_timeout_is_named(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    spec = dummy("asr", journal)
    plan = Plan((ChildSpec("asr", spec.argv, {}, LogLine("never printed"), 1),), url="http://x/")
    status, out = run(plan, signal_when_ready=None, ready_timeout_s=1.0)
    assert status == 1
    assert "error: asr was not ready within 1 s (last check: no line with 'never printed')." in out
    assert all(process_gone(pid) for _, _, pid in events(journal))


def test_http_readiness_and_the_child_environment(tmp_path: Path) -> None:
    port = _free_port()
    server = ChildSpec(
        "web",
        (sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"),
        {"LLMVOX_TEST_MARK": "1"},
        HttpOk(f"http://127.0.0.1:{port}/"),
        1,
    )
    probe = (
        sys.executable,
        "-c",
        "import os, signal\n"
        "print('mark', os.environ.get('LLMVOX_TEST_MARK'), os.environ['ONLY_HERE'], flush=True)\n"
        "signal.pause()",
    )
    plan = Plan(
        (ChildSpec("probe", probe, {"ONLY_HERE": "yes"}, None, 0), server),
        url=f"http://127.0.0.1:{port}/",
    )
    status, out = run(plan)
    assert status == 0
    assert "[probe]  mark None yes" in out  # its own env, not its sibling's
    assert "[launch] web is ready" in out
    assert out.index("[launch] web is ready") < out.index("LLMVoX is ready")


def test_a_readiness_timeout_says_what_the_last_check_saw() -> None:
    port = _free_port()
    server = ChildSpec(
        "web",
        (sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"),
        {},
        HttpOk(f"http://127.0.0.1:{port}/readyz"),
        1,
    )
    status, out = run(Plan((server,), url="http://x/"), ready_timeout_s=3.0)
    assert status == 1
    assert "error: web was not ready within 3 s (last check: HTTP 404 from" in out


def test_children_get_sigterm_when_the_launcher_is_killed(tmp_path: Path) -> None:
    if not pdeathsig_prefix():
        pytest.fail("setpriv --pdeathsig (util-linux) is needed on Linux")
    journal = tmp_path / "journal"
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from llmvox_launch.plan import ChildSpec, LogLine, Plan
        from llmvox_launch.supervisor import Supervisor
        argv = (sys.executable, "-c", {DUMMY!r}, "orphan", {str(journal)!r}, "ok")
        plan = Plan((ChildSpec("orphan", argv, {{}}, LogLine("ready"), 1),), url="http://x/")
        asyncio.run(Supervisor(plan, on_ready=lambda: print("READY", flush=True)).run())
        """
    )
    launcher = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout is not None
        for line in launcher.stdout:
            if "READY" in line:
                break
        launcher.kill()  # no chance to clean up
        launcher.wait(timeout=10)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    # The orphan records "stop" in its SIGTERM handler, then exits: wait for the exit.
    assert process_gone(started_pid(journal, "orphan"))
    assert [e for e, _, _ in events(journal)][-1] == "stop"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
