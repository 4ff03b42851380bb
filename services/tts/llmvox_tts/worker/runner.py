"""The model thread of a replica: owns the engine, takes commands, hands parts to asyncio.

Model work never runs on the event loop (it would stall Redis I/O), and Redis I/O never runs
here (it would stall decoding). Commands cross over a thread-safe queue; results go back with
`loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass

from . import metrics
from .engine import EnginePart, ReplicaEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AddJob:
    key: str
    first_chunk: int
    max_chunk: int


@dataclass(frozen=True)
class PushText:
    key: str
    piece: str


@dataclass(frozen=True)
class CloseText:
    key: str


@dataclass(frozen=True)
class DropJob:
    key: str


Command = AddJob | PushText | CloseText | DropJob


@dataclass(frozen=True)
class JobFailed:
    key: str
    error: str


Event = EnginePart | JobFailed

_IDLE_WAIT_S = 0.05


class EngineRunner:
    def __init__(
        self, engine: ReplicaEngine, loop: asyncio.AbstractEventLoop, events: asyncio.Queue[Event]
    ) -> None:
        self.engine = engine
        self._loop = loop
        self._events = events
        self._commands: queue.SimpleQueue[Command | None] = queue.SimpleQueue()  # None: wake up
        self._thread = threading.Thread(target=self._run, name="llmvox-tts-model", daemon=True)
        self._stopping = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def submit(self, command: Command) -> None:
        self._commands.put(command)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._commands.put(None)
        self._thread.join(timeout)

    def _emit(self, event: Event) -> None:
        self._loop.call_soon_threadsafe(self._events.put_nowait, event)

    def _apply(self, command: Command) -> None:
        engine = self.engine
        try:
            if isinstance(command, AddJob):
                engine.add(
                    command.key, first_chunk=command.first_chunk, max_chunk=command.max_chunk
                )
            elif isinstance(command, DropJob):
                engine.remove(command.key)
            elif command.key not in engine.jobs:
                return  # text for a job dropped meanwhile
            elif isinstance(command, PushText):
                engine.push_text(command.key, command.piece)
            else:
                engine.close_text(command.key)
        except Exception as error:  # a bad command fails its job, never the replica
            log.exception("command %s failed", command)
            engine.remove(command.key)
            self._emit(JobFailed(command.key, f"{type(error).__name__}: {error}"))

    def _next_command(self, wait: bool) -> Command | None:
        try:
            command = (
                self._commands.get(timeout=_IDLE_WAIT_S) if wait else (self._commands.get_nowait())
            )
        except queue.Empty:
            return None
        return command

    def _run(self) -> None:
        engine = self.engine
        while not self._stopping.is_set():
            # Idle: wait a little for work. Busy: take what is queued and go on decoding.
            command = self._next_command(wait=not engine.has_work)
            while command is not None:
                self._apply(command)
                command = self._next_command(wait=False)
            if not engine.has_work:
                continue
            starved_before = engine.stats.starved_steps
            try:
                parts = engine.step()
            except Exception as error:  # the whole batch failed: fail its jobs, keep serving
                log.exception("decoder step failed")
                for key in list(engine.jobs):
                    engine.remove(key)
                    self._emit(JobFailed(key, f"{type(error).__name__}: {error}"))
                continue
            metrics.STARVED_STEPS.inc(engine.stats.starved_steps - starved_before)
            for part in parts:
                if part.last:
                    engine.remove(part.job)
                self._emit(part)
