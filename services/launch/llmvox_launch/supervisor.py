"""Run a plan's children: start them stage by stage, wait for readiness, watch them, stop them.

- Children of one stage start together; the next stage starts once every one of them is ready.
- Each child's stdout and stderr come out as lines prefixed with its name.
- A child that exits on its own is started again after a growing delay (restart.py) and waited
  for until it is ready again; the others keep running. A child that keeps failing before it
  gets ready (the crash-loop limit), a failed preparation step or a readiness timeout stops
  everything, with a message that names the child and shows its last lines. Exit status 1.
- SIGINT/SIGTERM stop everything: stages in reverse order (the gateway first, Redis last), each
  child with SIGTERM, then SIGKILL after `stop_timeout_s`; a second Ctrl-C kills at once.
  Exit status 0.

Every child runs in its own session (process group): the terminal's Ctrl-C reaches only the
launcher, which then stops the children in order, and a signal to the group also reaches any
processes the child started. Where `setpriv` is available, children also get SIGTERM when the
launcher itself dies without cleaning up (SIGKILL, OOM).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from . import readiness
from .output import LinePrefixer, label_width, prefix_for
from .plan import ChildSpec, LogLine, Plan, RedisKeyExists, Step
from .restart import GiveUp, RestartPolicy, RestartTracker

LAUNCHER_LABEL = "launch"
READ_CHUNK = 65536
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ChildFailedError(Exception):
    """A child could not be brought up; the message names it and says why."""

    def __init__(self, child: str, reason: str) -> None:
        super().__init__(f"{child} {reason}")
        self.child = child


@functools.cache
def pdeathsig_prefix() -> tuple[str, ...]:
    """`setpriv --pdeathsig TERM --` when this util-linux has it (it then execs the command, so
    the pid stays the child's)."""
    path = shutil.which("setpriv")
    if path is None or not sys.platform.startswith("linux"):
        return ()
    try:
        help_text = subprocess.run(
            [path, "--help"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return (path, "--pdeathsig", "TERM", "--") if "--pdeathsig" in help_text else ()


def describe_exit(code: int) -> str:
    """`exited with code 3`, or `ended by SIGTERM` (which may follow a clean shutdown: uvicorn
    re-raises the signal it handled)."""
    if code < 0:
        try:
            return f"ended by {signal.Signals(-code).name}"
        except ValueError:
            return f"ended by signal {-code}"
    return f"exited with code {code}"


def short_exit(code: int) -> str:
    """`SIGKILL`, or `code 3`: the parenthesis of `tts1 exited (SIGKILL)`."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


@dataclass
class _Child:
    spec: ChildSpec
    prefixer: LinePrefixer
    process: asyncio.subprocess.Process | None = None  # the running one: preparation or child
    started_child: bool = False
    ready: bool = False
    saw_ready_line: asyncio.Event = field(default_factory=asyncio.Event)
    first_ready: asyncio.Event = field(default_factory=asyncio.Event)
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    keeper: asyncio.Task[None] | None = None  # starts, watches and restarts the child
    restarts: int = 0


class Supervisor:
    def __init__(
        self,
        plan: Plan,
        *,
        out: TextIO | None = None,
        ready_timeout_s: float = 600.0,
        stop_timeout_s: float = 15.0,
        poll_interval_s: float = 0.5,
        base_env: Mapping[str, str] | None = None,
        on_ready: Callable[[], None] | None = None,
        kill_with_launcher: bool = True,
        restart: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = plan
        self.out = out if out is not None else sys.stdout
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.poll_interval_s = poll_interval_s
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.on_ready = on_ready
        self.restart = restart if restart is not None else RestartPolicy()
        self._clock = clock
        self.wrapper = pdeathsig_prefix() if kill_with_launcher else ()
        self.width = label_width([LAUNCHER_LABEL, *(c.name for c in plan.children)])
        self.children = {
            spec.name: _Child(spec, LinePrefixer(spec.name, self.width)) for spec in plan.children
        }
        self.failure: str | None = None
        self._stop = asyncio.Event()  # anything that ends the run: a signal or a failure
        self._kill_now = asyncio.Event()  # second signal: no grace period
        self._stopping = False
        self._broken_output = False

    # -- output ---------------------------------------------------------------------------------
    def write(self, line: str) -> None:
        if self._broken_output:
            return
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except (BrokenPipeError, ValueError):  # reader gone or stream closed: keep supervising
            self._broken_output = True

    def say(self, message: str) -> None:
        for line in message.splitlines() or [""]:
            self.write(prefix_for(LAUNCHER_LABEL, self.width) + line)

    # -- the run --------------------------------------------------------------------------------
    async def run(self) -> int:
        """Bring the plan up, wait for a signal or a failure, stop everything; the exit status."""
        restore = self._install_signal_handlers()
        self.say("starting " + ", ".join(spec.name for spec in self.plan.children))
        try:
            for stage in self.plan.stages():
                await self._bring_up_stage([self.children[spec.name] for spec in stage])
                if self._stop.is_set():
                    break
            else:
                self._announce_ready()
                await self._stop.wait()
        finally:
            await self.shutdown()
            restore()
        return 1 if self.failure else 0

    def request_stop(self) -> None:
        if self._stop.is_set():
            if not self._kill_now.is_set():
                self.say("stopping now (SIGKILL)")
            self._kill_now.set()
            return
        self.say("stopping every service (press Ctrl-C again to kill them at once)")
        self._stop.set()

    def _install_signal_handlers(self) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        installed = []
        for sig in STOP_SIGNALS:
            previous = signal.getsignal(sig)
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
                continue
            installed.append((sig, previous))

        def restore() -> None:
            for sig, previous in installed:
                loop.remove_signal_handler(sig)
                # None: a handler installed outside Python, which cannot be put back.
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)

        return restore

    def _fail(self, child: _Child | None, reason: str) -> None:
        if self.failure is not None or self._stopping:
            return
        self.failure = reason
        lines = [f"error: {reason}."]
        if child is not None and child.prefixer.last_lines:
            lines.append(f"last lines of {child.spec.name}:")
            lines.extend(f"  | {line}" for line in child.prefixer.last_lines)
        lines.append("stopping every service")
        self.say("\n".join(lines))
        self._stop.set()

    def _announce_ready(self) -> None:
        banner = [
            "=" * 72,
            f"LLMVoX is ready: {self.plan.url}",
            "Ctrl-C stops every service; a service that exits on its own is restarted.",
        ]
        if self.plan.notices:
            banner += ["-" * 72, *self.plan.notices]
        banner.append("=" * 72)
        self.write("")
        self.say("\n".join(banner))
        self.write("")
        if self.on_ready is not None:
            self.on_ready()

    # -- bringing up ----------------------------------------------------------------------------
    async def _bring_up_stage(self, stage: Sequence[_Child]) -> None:
        """Start the stage's keepers; return once each child is ready, or the run is stopping."""
        for child in stage:
            child.keeper = asyncio.create_task(self._keep(child), name=f"keep {child.spec.name}")
            child.keeper.add_done_callback(functools.partial(self._keeper_ended, child))
        all_ready = asyncio.gather(*(child.first_ready.wait() for child in stage))
        stop = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({all_ready, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            all_ready.cancel()
            await asyncio.gather(all_ready, stop, return_exceptions=True)

    def _keeper_ended(self, child: _Child, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, ChildFailedError):
            self._fail(child, str(error))
        elif error is not None:
            self._fail(child, f"{child.spec.name}: supervisor error {error!r}")

    async def _keep(self, child: _Child) -> None:
        """The child's whole life: preparation, then start → ready → exit → restart after the
        policy's delay, until the run stops; raises ChildFailedError to stop the run."""
        spec = child.spec
        for step in spec.prepare:
            await self._prepare(child, step)
        tracker = RestartTracker(self.restart, self._clock)
        while not self._stopping:
            started = time.monotonic()
            since_ms = int(time.time() * 1000)
            child.saw_ready_line = asyncio.Event()
            child.ready = False
            process = child.process = await self._spawn(child, spec.argv, spec.env)
            child.started_child = True
            if self._stopping:  # the stop began while this one was starting
                await self._stop_child(child)
                return
            tracker.started()
            again = " again" if child.restarts else ""
            self.say(f"started {spec.name}{again} (pid {process.pid})")
            exited = asyncio.create_task(process.wait())
            ready = asyncio.create_task(self._wait_ready(child, started, since_ms))
            try:
                await asyncio.wait({exited, ready}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not ready.done():
                    ready.cancel()
                    await asyncio.gather(ready, return_exceptions=True)
            if not exited.done():
                ready.result()  # a readiness timeout raises here
                child.ready = True
                tracker.ready()
                self.say(f"{spec.name} is ready{again} ({time.monotonic() - started:.1f} s)")
                child.first_ready.set()
            code = await exited
            await self._drain(child)
            if self._stopping:
                return
            decision = tracker.exited()
            if isinstance(decision, GiveUp):
                raise ChildFailedError(
                    spec.name,
                    f"{describe_exit(code)} before it was ready, {decision.failures} times within "
                    f"{decision.window_s:g} s; not restarting it",
                )
            child.restarts += 1
            self.say(
                f"{spec.name} exited ({short_exit(code)}); restarting in "
                f"{decision.delay_s:g} s (attempt {decision.attempt})"
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(decision.delay_s):
                    await self._stop.wait()

    async def _prepare(self, child: _Child, step: Step) -> None:
        name = child.spec.name
        if step.description:
            self.say(f"{name}: {step.description}")
        process = child.process = await self._spawn(child, step.argv, step.env)
        code = await process.wait()
        await self._drain(child)
        child.process = None
        if code != 0:
            command = " ".join(step.argv)
            raise ChildFailedError(name, f"preparation `{command}` {describe_exit(code)}")

    async def _wait_ready(self, child: _Child, started: float, since_ms: int = 0) -> None:
        """Returns once the child passes its check; `since_ms` (Unix ms of this start) makes a
        heartbeat written by an earlier run of the child not count."""
        spec, process = child.spec, child.process
        assert process is not None
        deadline = started + self.ready_timeout_s
        seen = "nothing yet"
        while True:
            if process.returncode is not None:
                # The watcher reports it with the exit code; wait to be cancelled.
                await asyncio.Event().wait()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChildFailedError(
                    spec.name,
                    f"was not ready within {self.ready_timeout_s:g} s (last check: {seen})",
                )
            if spec.ready is None:
                return
            if isinstance(spec.ready, LogLine):
                seen = f"no line with {spec.ready.text!r}"
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, self.poll_interval_s)):
                        await child.saw_ready_line.wait()
                if child.saw_ready_line.is_set():
                    return
                continue
            probe = await readiness.check(
                spec.ready,
                per_try_s=min(2.0, max(remaining, 0.1)),
                since_ms=since_ms if isinstance(spec.ready, RedisKeyExists) else None,
            )
            if probe.ready:
                return
            seen = probe.seen
            await asyncio.sleep(min(self.poll_interval_s, max(remaining, 0)))

    async def _spawn(
        self, child: _Child, argv: Sequence[str], env: Mapping[str, str]
    ) -> asyncio.subprocess.Process:
        try:
            process = await asyncio.create_subprocess_exec(
                *self.wrapper,
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**self.base_env, **env},
                start_new_session=True,
            )
        except OSError as error:
            reason = f"could not start `{argv[0]}`: {error}"
            raise ChildFailedError(child.spec.name, reason) from error
        assert process.stdout is not None
        child.pumps.append(asyncio.create_task(self._pump(child, process.stdout)))
        return process

    async def _pump(self, child: _Child, stream: asyncio.StreamReader) -> None:
        ready = child.spec.ready
        wanted = ready.text if isinstance(ready, LogLine) else None
        skip = len(child.prefixer.prefix)
        while chunk := await stream.read(READ_CHUNK):
            for line in child.prefixer.feed(chunk):
                self.write(line)
                if wanted is not None and wanted in line[skip:]:
                    child.saw_ready_line.set()
        for line in child.prefixer.flush():
            self.write(line)

    async def _drain(self, child: _Child, limit_s: float = 5.0) -> None:
        """Wait for the output of exited processes to be written (bounded: a grandchild may
        hold the pipe open)."""
        pumps, child.pumps = child.pumps, []
        if pumps:
            _, late = await asyncio.wait(pumps, timeout=limit_s)
            for task in late:
                task.cancel()

    # -- stopping -------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Stop whatever runs, stage by stage in reverse order. Idempotent."""
        self._stopping = True
        self._stop.set()  # wakes keepers waiting to restart a child
        stages = self.plan.stages()
        for stage in reversed(stages):
            running = [
                self.children[spec.name]
                for spec in stage
                if (p := self.children[spec.name].process) is not None and p.returncode is None
            ]
            if running:
                self.say("stopping " + ", ".join(c.spec.name for c in running))
                await asyncio.gather(*(self._stop_child(c) for c in running))
        for child in self.children.values():
            if child.keeper is not None:
                await asyncio.gather(child.keeper, return_exceptions=True)
            await self._drain(child)

    async def _stop_child(self, child: _Child) -> None:
        process = child.process
        assert process is not None
        self._signal_group(process, signal.SIGTERM)
        waiting = asyncio.create_task(process.wait())
        kill_now = asyncio.create_task(self._kill_now.wait())
        done, _ = await asyncio.wait(
            {waiting, kill_now}, timeout=self.stop_timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
        kill_now.cancel()
        if waiting not in done:
            if not self._kill_now.is_set():
                self.say(
                    f"{child.spec.name} did not stop within {self.stop_timeout_s:g} s: SIGKILL"
                )
            self._signal_group(process, signal.SIGKILL)
            await waiting
        # Whatever it started and left behind in its group goes too.
        self._signal_group(process, signal.SIGKILL)
        code = process.returncode
        self.say(f"{child.spec.name} stopped ({describe_exit(code if code is not None else 0)})")

    @staticmethod
    def _signal_group(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        # The child leads its own session, so its process group id is its pid.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
