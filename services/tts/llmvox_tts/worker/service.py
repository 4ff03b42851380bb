"""A TTS replica process: Redis Streams in and out, the engine on its own thread.

Loops (one asyncio task each): take new jobs from the consumer group; take over the jobs of
replicas whose heartbeat lapsed; claim jobs left pending too long (the fallback); keep this
replica's own pending jobs fresh so nobody claims them while it lives; set the heartbeat; read
streamed text; poll cancellations and deadlines; write parts; report metrics. A job is
acknowledged in one transaction with its last part (or its error part), never before.

Faults (docs/tts-pool.md, "Failure behaviour"): no loop ends on a Redis error. The client
retries connection errors and timeouts with backoff (redis-py's `Retry`); past that, each loop
backs off and tries again, and the outage is logged once when it starts and once when it ends.
A vanished stream or group is created again. Nothing a job holds ends the process: a job that
cannot be parsed or fails while it runs is answered with an error part where it can be, copied
to the dead letters and acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from llmvox_common.constants import (
    CONSUMER_GROUP,
    DEAD_LETTER_STREAM,
    JOBS_STREAM,
    SAMPLE_RATE,
    WORKERS_KEY_PREFIX,
)
from llmvox_common.tts_client import ensure_group
from llmvox_common.tts_streams import (
    AudioPart,
    Heartbeat,
    JobFormatError,
    TextPiece,
    TTSJob,
    cancel_key,
    cancels_seq,
    text_stream_key,
)

from . import metrics
from .engine import EnginePart, ReplicaEngine
from .runner import AddJob, CloseText, DropJob, EngineRunner, Event, JobFailed, PushText
from .settings import WorkerSettings

log = logging.getLogger(__name__)

# Redis is away (down, restarting, unreachable): wait and try again, never give up on a job or
# the process for it. OSError covers a socket error that redis-py did not wrap.
REDIS_DOWN: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, OSError)

# Copies of a job's fields in the dead letters are cut to this size each: a huge or hostile
# entry must not make the dead-letter stream huge.
_DEAD_VALUE_BYTES = 4096
_DEAD_MAX_FIELDS = 32

# KEYS[1] = jobs stream, KEYS[2] = the other consumer's heartbeat key; ARGV = group, that
# consumer, this consumer, count. Atomic, so two replicas never both take the same job, and a
# heartbeat that reappeared (a replica that was only slow) is respected. Returns
# {id, fields, deliveries} per job taken (deliveries counts this one), and deletes the consumer
# once it has nothing pending.
_TAKE_OVER = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {} end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', ARGV[4], ARGV[2])
local taken = {}
if #pending > 0 then
  local ids, counts = {}, {}
  for i, p in ipairs(pending) do
    ids[i] = p[1]
    counts[p[1]] = p[4]
  end
  local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, unpack(ids))
  for _, entry in ipairs(claimed) do
    if entry and entry[1] then
      taken[#taken + 1] = {entry[1], entry[2] or {}, counts[entry[1]] + 1}
    end
  end
end
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return taken
"""


def _s(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def now_ms() -> int:
    return int(time.time() * 1000)


def _missing_group(error: ResponseError) -> bool:
    message = str(error)
    # XINFO on a stream that is gone says "no such key".
    return "NOGROUP" in message or "UNBLOCKED" in message or "no such key" in message


def _entry_time_ms(entry_id: str) -> int:
    head = entry_id.split("-", 1)[0]
    return int(head) if head.isdigit() else now_ms()


@dataclass
class ActiveJob:
    entry_id: str
    job: TTSJob
    enqueued_ms: int
    text_last_id: str = "0"
    text_done: bool = False
    text_chars: int = 0
    last_text_at: float = field(default_factory=time.monotonic)
    parts_written: int = 0


class _Outage:
    """Tracks whether Redis answers, so that an outage is logged and counted once when it starts
    and once when it ends, not once per retry of every loop."""

    def __init__(self) -> None:
        self.since: float | None = None
        metrics.REDIS_UP.set(1)

    def failed(self, where: str, error: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            metrics.REDIS_OUTAGES.inc()
            metrics.REDIS_UP.set(0)
            log.warning(
                "Redis unreachable (%s in %s: %s); retrying with backoff",
                type(error).__name__,
                where,
                error,
            )

    def answered(self) -> None:
        if self.since is not None:
            log.warning("Redis reachable again after %.1f s", time.monotonic() - self.since)
            self.since = None
            metrics.REDIS_UP.set(1)


class Replica:
    def __init__(self, settings: WorkerSettings, engine: ReplicaEngine, redis: Redis) -> None:
        self.settings = settings
        self.engine = engine
        self.redis = redis
        self.name = settings.name
        self.active: dict[str, ActiveJob] = {}
        self.accepting = True
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._runner: EngineRunner | None = None
        self._stopped = asyncio.Event()
        self._job_finished = asyncio.Event()
        self._last_stats = (0.0, 0)
        self._outage = _Outage()
        self._take_over = redis.register_script(_TAKE_OVER)

    # -- lifecycle -----------------------------------------------------------------------------
    async def run(self) -> None:
        self._runner = EngineRunner(self.engine, asyncio.get_running_loop(), self._events)
        self._runner.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        # Redis may be down when the replica starts: wait for it rather than exit.
        await self._until_done("start", self._start_up)
        log.info(
            "replica %s serving %s (max batch %d)", self.name, JOBS_STREAM, self.engine.max_batch
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                loops: dict[str, Callable[[], Awaitable[None]]] = {
                    "intake": self._intake_once,
                    "takeover": self._takeover_once,
                    "claim": self._claim_once,
                    "refresh": self._refresh_once,
                    "heartbeat": self._heartbeat_once,
                    "text": self._text_once,
                    "cancel+deadline": self._control_once,
                    "metrics": self._metrics_once,
                }
                for name, iteration in loops.items():
                    tasks.create_task(self._forever(name, iteration), name=name)
                tasks.create_task(self._event_loop(), name="parts")
                tasks.create_task(self._drain_then_stop(), name="drain")
        except* _Stop:
            pass
        finally:
            self._runner.stop()
            log.info("replica %s stopped", self.name)

    async def _start_up(self) -> None:
        await ensure_group(self.redis)
        # Also tells a supervisor (and the tests) that it is ready.
        await self._heartbeat()
        # Jobs still pending under this name were taken by this replica's previous life (a
        # restart under the same name): its heartbeat is alive again, so nobody else would
        # take them over before the idle time. Take them back now.
        reply = await self.redis.xreadgroup(
            CONSUMER_GROUP, self.name, {JOBS_STREAM: "0"}, count=self.engine.max_batch
        )
        for _, entries in reply or []:
            for entry_id, fields in entries:
                if fields:
                    await self._take_claimed(_s(entry_id), fields, "restarted")
                else:  # trimmed away meanwhile
                    await self.redis.xack(JOBS_STREAM, CONSUMER_GROUP, entry_id)

    async def _until_done(self, name: str, action: Callable[[], Awaitable[None]]) -> None:
        """Run `action` until it completes once, riding out Redis outages."""
        backoff = ExponentialBackoff(cap=1.0, base=0.05)
        failures = 0
        while True:
            try:
                await action()
                return
            except REDIS_DOWN as error:
                self._outage.failed(name, error)
            except ResponseError as error:
                if not _missing_group(error):
                    raise
                await self._recreate_group(error)
            failures += 1
            await asyncio.sleep(backoff.compute(failures))

    async def _forever(self, name: str, iteration: Callable[[], Awaitable[None]]) -> None:
        """Run one loop's iteration again and again. No error ends the loop (and with it the
        process): Redis errors back off and retry; anything else is logged and retried."""
        backoff = ExponentialBackoff(cap=1.0, base=0.05)
        failures = 0
        while True:
            try:
                await iteration()
                failures = 0
                continue
            except REDIS_DOWN as error:
                self._outage.failed(name, error)
            except ResponseError as error:
                if _missing_group(error):
                    with contextlib.suppress(*REDIS_DOWN, RedisError):
                        await self._recreate_group(error)
                        continue
                else:
                    log.warning("%s: Redis refused a command: %s", name, error)
            except RedisError as error:
                log.warning("%s: Redis error: %s", name, error)
            except Exception:  # a bug must not end the replica; logged with its traceback
                log.exception("%s loop failed; going on", name)
            failures += 1
            await asyncio.sleep(backoff.compute(failures))

    def request_stop(self) -> None:
        """SIGTERM: take no new jobs, finish the active ones (up to the drain timeout), exit."""
        if self.accepting:
            log.info("replica %s draining %d job(s)", self.name, len(self.active))
        self.accepting = False
        self._stopped.set()

    async def _drain_then_stop(self) -> None:
        await self._stopped.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.drain_timeout_s):
                while self.active:
                    await self._job_finished.wait()
                    self._job_finished.clear()
        # Unfinished jobs stay pending in the group: a live replica takes them over once this
        # replica's heartbeat lapses and regenerates them from the start.
        raise _Stop

    def _forget(self, entry_id: str) -> ActiveJob | None:
        active = self.active.pop(entry_id, None)
        self._job_finished.set()
        return active

    @property
    def free_slots(self) -> int:
        return self.engine.max_batch - len(self.active) if self.accepting else 0

    # -- jobs in -------------------------------------------------------------------------------
    async def _intake_once(self) -> None:
        free = self.free_slots
        if free <= 0:
            await asyncio.sleep(0.005 if self.accepting else 0.1)
            return
        reply = await self.redis.xreadgroup(
            CONSUMER_GROUP, self.name, {JOBS_STREAM: ">"}, count=free, block=100
        )
        for _, entries in reply or []:
            for entry_id, fields in entries:
                await self._take(_s(entry_id), fields)

    async def _takeover_once(self) -> None:
        """Take over the pending jobs of consumers whose replica's heartbeat lapsed: a replica
        that died mid-sentence is replaced within about heartbeat_ttl_ms."""
        await asyncio.sleep(self.settings.takeover_interval_ms / 1000)
        consumers = await self.redis.xinfo_consumers(JOBS_STREAM, CONSUMER_GROUP)
        others = [_s(c["name"]) for c in consumers if _s(c["name"]) != self.name]
        if not others:
            return
        beats = await self.redis.mget([WORKERS_KEY_PREFIX + name for name in others])
        for consumer, beat in zip(others, beats, strict=True):
            if beat is not None:
                continue
            if not self.accepting:
                return  # draining: the replicas that stay take the jobs over
            # With no free slot (count 0) nothing is taken, but a dead consumer with nothing
            # pending is still deleted.
            taken = await self._take_over(
                keys=[JOBS_STREAM, WORKERS_KEY_PREFIX + consumer],
                args=[CONSUMER_GROUP, consumer, self.name, max(self.free_slots, 0)],
            )
            for entry_id, raw_fields, deliveries in taken or []:
                fields = dict(zip(raw_fields[::2], raw_fields[1::2], strict=False))
                log.warning(
                    "took over job %s of replica %s (heartbeat lapsed, delivery %d)",
                    _s(entry_id),
                    consumer,
                    deliveries,
                )
                await self._take_claimed(
                    _s(entry_id), fields, "heartbeat_lapsed", deliveries=int(deliveries)
                )

    async def _claim_once(self) -> None:
        # The fallback: a job pending longer than claim_idle_ms belongs to nobody who lives,
        # even if a heartbeat says otherwise (a replica stuck with its event loop alive).
        await asyncio.sleep(self.settings.claim_idle_ms / 2000)
        free = self.free_slots
        if free <= 0:
            return
        reply = await self.redis.xautoclaim(
            JOBS_STREAM,
            CONSUMER_GROUP,
            self.name,
            self.settings.claim_idle_ms,
            start_id="0-0",
            count=free,
        )
        for entry_id, fields in reply[1]:
            entry_id = _s(entry_id)
            if entry_id in self.active:
                continue
            if not fields:  # trimmed away meanwhile
                await self.redis.xack(JOBS_STREAM, CONSUMER_GROUP, entry_id)
                continue
            await self._take_claimed(entry_id, fields, "idle")

    async def _take_claimed(
        self, entry_id: str, fields: Mapping, reason: str, *, deliveries: int | None = None
    ) -> None:
        if entry_id in self.active:
            return
        metrics.JOBS_CLAIMED.labels(reason).inc()
        if deliveries is None:
            pending = await self.redis.xpending_range(
                JOBS_STREAM, CONSUMER_GROUP, min=entry_id, max=entry_id, count=1
            )
            deliveries = int(pending[0]["times_delivered"]) if pending else 1
        log.warning("claimed job %s (%s, delivery %d)", entry_id, reason, deliveries)
        if deliveries > self.settings.max_deliveries:
            await self._dead_letter(
                entry_id, fields, f"failed {deliveries - 1} times", "failed_repeatedly"
            )
            return
        await self._take(entry_id, fields)

    async def _recreate_group(self, error: ResponseError) -> None:
        """The jobs stream or its group vanished (a flushed or restarted Redis without
        persistence): create them again instead of dying, so the pool heals by itself."""
        log.warning("jobs stream or group missing (%s); creating it again", error)
        await ensure_group(self.redis)

    async def _refresh_once(self) -> None:
        # XCLAIM with JUSTID resets the idle time of our own pending entries without counting a
        # delivery: a slow streamed job is not mistaken for a dead replica's.
        await asyncio.sleep(self.settings.claim_idle_ms / 3000)
        if self.active:
            await self.redis.xclaim(
                JOBS_STREAM, CONSUMER_GROUP, self.name, 0, list(self.active), justid=True
            )

    async def _heartbeat_once(self) -> None:
        await asyncio.sleep(self.settings.heartbeat_interval_ms / 1000)
        await self._heartbeat()

    async def _heartbeat(self) -> None:
        # The profile tells the gateway (and the page it serves) when the voice is untrained.
        profile = self.settings.profile
        beat = Heartbeat(
            at_ms=now_ms(),
            profile=profile,
            untrained=profile == "tiny",
            precision=self.settings.precision,
            vocoder_precision=self.settings.vocoder_precision,
        )
        await self.redis.set(
            WORKERS_KEY_PREFIX + self.name, beat.encode(), px=self.settings.heartbeat_ttl_ms
        )
        self._outage.answered()

    async def _take(self, entry_id: str, fields: Mapping) -> None:
        """Start one job; whatever goes wrong with it fails that job alone. Only Redis being away
        is left to the loop: the job then stays pending and is taken over later."""
        try:
            await self._start(entry_id, fields)
        except REDIS_DOWN:
            self._forget_and_drop(entry_id)
            raise
        except Exception as error:
            log.exception("job %s could not start", entry_id)
            self._forget_and_drop(entry_id)
            await self._fail(entry_id, fields, f"{type(error).__name__}: {error}")

    def _forget_and_drop(self, entry_id: str) -> None:
        if self._forget(entry_id) is not None and self._runner is not None:
            self._runner.submit(DropJob(entry_id))

    async def _start(self, entry_id: str, fields: Mapping) -> None:
        try:
            job = TTSJob.from_fields(fields)
            if job.text_stream is not None and job.text_stream != text_stream_key(
                job.session, job.seq
            ):
                raise JobFormatError(
                    f"text_stream must be {text_stream_key(job.session, job.seq)!r}",
                    job.reply_to,
                    job.seq,
                )
            if job.text is not None and len(job.text) > self.settings.max_text_chars:
                raise JobFormatError(
                    f"text has {len(job.text)} characters, more than "
                    f"max_text_chars={self.settings.max_text_chars}",
                    job.reply_to,
                    job.seq,
                )
        except JobFormatError as error:
            if error.reply_to and error.seq is not None:
                await self._answer_with_error(
                    entry_id, error.reply_to, error.seq, 0, "bad_job", error.reason
                )
            else:  # nowhere to answer: keep the job and the reason for an operator
                await self._dead_letter(entry_id, fields, error.reason, "bad_job")
            return
        active = ActiveJob(entry_id, job, enqueued_ms=_entry_time_ms(entry_id))
        if job.deadline_ms and now_ms() > job.deadline_ms:
            await self._finish_with_error(active, "deadline", "deadline passed before start")
            return
        self.active[entry_id] = active
        runner = self._runner
        assert runner is not None
        runner.submit(AddJob(entry_id, job.first_chunk, job.max_chunk))
        if job.text is not None:
            # Whole words, one piece each, exactly as if they had been streamed.
            for word in job.text.split():
                runner.submit(PushText(entry_id, word))
            runner.submit(CloseText(entry_id))
            active.text_done = True

    # -- streamed text, cancellation, deadlines ------------------------------------------------
    async def _text_once(self) -> None:
        waiting = {
            a.job.text_stream: a
            for a in self.active.values()
            if a.job.text_stream is not None and not a.text_done
        }
        if not waiting:
            await asyncio.sleep(0.01)
            return
        try:
            reply = await self.redis.xread(
                {key: a.text_last_id for key, a in waiting.items()}, count=256, block=20
            )
        except ResponseError as error:
            # One key that is not a stream (WRONGTYPE) fails the whole read: find it, fail
            # its job, and let the others read on next time.
            await self._drop_unreadable_text(waiting, error)
            return
        for key, entries in reply or []:
            active = waiting[_s(key)]
            for entry_id, fields in entries:
                if active.entry_id not in self.active:
                    break
                active.text_last_id = _s(entry_id)
                try:
                    piece = TextPiece.from_fields(fields)
                except JobFormatError as error:
                    await self._drop(active, "bad_job", f"text entry {_s(entry_id)}: {error}")
                    break
                await self._feed(active, piece)
        stale = [
            a
            for a in waiting.values()
            if a.entry_id in self.active
            and not a.text_done
            and time.monotonic() - a.last_text_at > self.settings.text_timeout_s
        ]
        for active in stale:
            await self._drop(
                active, "text_timeout", f"no text for {self.settings.text_timeout_s:g} s"
            )

    async def _drop_unreadable_text(
        self, waiting: dict[str, ActiveJob], error: ResponseError
    ) -> None:
        if _missing_group(error):
            raise error
        for key, active in waiting.items():
            try:
                await self.redis.xread({key: active.text_last_id}, count=1)
            except ResponseError as key_error:
                await self._drop(active, "bad_job", f"text stream unreadable: {key_error}")

    async def _feed(self, active: ActiveJob, piece: TextPiece) -> None:
        runner = self._runner
        assert runner is not None
        active.last_text_at = time.monotonic()
        if piece.piece:
            active.text_chars += len(piece.piece)
            if active.text_chars > self.settings.max_text_chars:
                await self._drop(
                    active,
                    "bad_job",
                    f"streamed text longer than max_text_chars={self.settings.max_text_chars}",
                )
                return
            for word in piece.piece.split():
                runner.submit(PushText(active.entry_id, word))
        if piece.done and not active.text_done:
            active.text_done = True
            runner.submit(CloseText(active.entry_id))

    async def _control_once(self) -> None:
        await asyncio.sleep(self.settings.cancel_poll_ms / 1000)
        if not self.active:
            return
        sessions = sorted({a.job.session for a in self.active.values()})
        flags = dict(
            zip(sessions, await self.redis.mget([cancel_key(s) for s in sessions]), strict=True)
        )
        now = now_ms()
        for active in list(self.active.values()):
            # Jobs may have started during the MGET: they are checked next round.
            if cancels_seq(flags.get(active.job.session), active.job.seq):
                await self._drop(active, "cancelled", "session cancelled")
            elif active.job.deadline_ms and now > active.job.deadline_ms:
                await self._drop(active, "deadline", "deadline passed")

    async def _drop(self, active: ActiveJob, kind: str, message: str) -> None:
        if self._forget(active.entry_id) is None:
            return
        assert self._runner is not None
        self._runner.submit(DropJob(active.entry_id))
        await self._finish_with_error(active, kind, message)

    # -- parts out -----------------------------------------------------------------------------
    async def _event_loop(self) -> None:
        while True:
            event = await self._events.get()
            active = self.active.get(event.key if isinstance(event, JobFailed) else event.job)
            if active is None:
                continue  # dropped (cancelled, deadline) while its part was on the way
            try:
                if isinstance(event, JobFailed):
                    log.error("job %s failed: %s", active.entry_id, event.error)
                    self._forget(active.entry_id)
                    await self._fail(
                        active.entry_id, active.job.to_fields(), event.error, active=active
                    )
                else:
                    await self._write_part(active, event)
            except REDIS_DOWN as error:
                # The part could not be written even after the client's retries. The job is
                # dropped here, not acknowledged: it stays pending, and is regenerated from
                # the start once it has been idle for claim_idle_ms (readers drop the parts
                # they already have). If Redis lost it, the gateway fails the turn.
                self._outage.failed("parts", error)
                log.warning("job %s dropped: its part could not be written", active.entry_id)
                self._forget_and_drop(active.entry_id)
            except Exception as error:  # e.g. reply_to is not a stream (WRONGTYPE)
                log.exception("job %s failed writing a part", active.entry_id)
                self._forget_and_drop(active.entry_id)
                with contextlib.suppress(*REDIS_DOWN, RedisError):
                    await self._fail(
                        active.entry_id,
                        active.job.to_fields(),
                        f"{type(error).__name__}: {error}",
                        active=active,
                    )

    async def _write_part(self, active: ActiveJob, part: EnginePart) -> None:
        audio = AudioPart(
            seq=active.job.seq,
            part=part.part,
            last=part.last,
            pcm=part.pcm.numpy().astype("<f4").tobytes(),
            tokens=len(part.tokens),
            worker=self.name,
        )
        # Counted first and written with its acknowledgement in one transaction: whoever sees
        # a job's last part finds it acknowledged and counted.
        if active.parts_written == 0:
            metrics.TIME_TO_FIRST_PART.observe(max(0, now_ms() - active.enqueued_ms) / 1000)
        metrics.PARTS.inc()
        metrics.TOKENS.inc(len(part.tokens))
        if part.last:
            metrics.JOBS_DONE.labels(str(part.stop_reason or "done")).inc()
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(active.job.reply_to, audio.to_fields())
        pipe.expire(active.job.reply_to, self.settings.audio_ttl_s)
        if part.last:
            pipe.xack(JOBS_STREAM, CONSUMER_GROUP, active.entry_id)
        await pipe.execute()
        active.parts_written += 1
        if part.last:
            self._forget(active.entry_id)

    async def _answer_with_error(
        self,
        entry_id: str,
        reply_to: str | None,
        seq: int | None,
        part: int,
        kind: str,
        message: str,
    ) -> None:
        """Acknowledge a job that ends in error, with an error part when it can be placed
        (`reply_to` and `seq` known). Counted first and written in one transaction: whoever sees
        the error part finds the job acknowledged and counted."""
        metrics.ERRORS.labels(kind).inc()
        pipe = self.redis.pipeline(transaction=True)
        if reply_to and seq is not None:
            error = AudioPart(
                seq=seq,
                part=part,
                last=True,
                pcm=b"",
                tokens=0,
                worker=self.name,
                error=message[:1000],
                error_kind=kind,
            )
            pipe.xadd(reply_to, error.to_fields())
            pipe.expire(reply_to, self.settings.audio_ttl_s)
        pipe.xack(JOBS_STREAM, CONSUMER_GROUP, entry_id)
        try:
            await pipe.execute()
        except ResponseError:
            if not (reply_to and seq is not None):
                raise
            # reply_to is no stream (WRONGTYPE): nobody can be answered; acknowledge only.
            log.warning("job %s: no error part could be written to %r", entry_id, reply_to)
            await self.redis.xack(JOBS_STREAM, CONSUMER_GROUP, entry_id)

    async def _finish_with_error(self, active: ActiveJob, kind: str, message: str) -> None:
        self._forget(active.entry_id)
        metrics.JOBS_DONE.labels(kind).inc()
        await self._answer_with_error(
            active.entry_id,
            active.job.reply_to,
            active.job.seq,
            active.parts_written,
            kind,
            message,
        )

    async def _fail(
        self, entry_id: str, fields: Mapping, reason: str, *, active: ActiveJob | None = None
    ) -> None:
        """A job that failed on this replica (engine, vocoder, writing): dead letter, error part
        after the parts already written, acknowledgement. Never retried here: a job that breaks
        the engine would break the next replica too."""
        metrics.JOBS_DONE.labels("failed").inc()
        await self._dead_letter(
            entry_id, fields, reason, "failed", part=active.parts_written if active else 0
        )

    async def _dead_letter(
        self, entry_id: str, fields: Mapping, reason: str, kind: str, *, part: int = 0
    ) -> None:
        record: dict[Any, Any] = {}
        for name, value in list(fields.items())[:_DEAD_MAX_FIELDS]:
            raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
            record[_s(name)[:256]] = raw[:_DEAD_VALUE_BYTES]
        record.update(
            {"job_id": entry_id, "error": reason[:1000], "error_kind": kind, "worker": self.name}
        )
        await self.redis.xadd(DEAD_LETTER_STREAM, record, maxlen=10_000, approximate=True)
        # Answer only where the job's own fields make a usable address (tts_streams decides).
        try:
            job = TTSJob.from_fields(fields)
            reply_to, seq = job.reply_to, job.seq
        except JobFormatError as error:
            reply_to, seq = error.reply_to, error.seq
        await self._answer_with_error(entry_id, reply_to, seq, part, kind, reason)
        log.error("job %s to dead letters: %s", entry_id, reason)

    # -- metrics -------------------------------------------------------------------------------
    async def _metrics_once(self) -> None:
        await asyncio.sleep(1.0)
        metrics.JOBS_ACTIVE.set(len(self.active))
        stats = self.engine.stats
        busy = stats.step_seconds + stats.vocoder_seconds
        last_busy, last_samples = self._last_stats
        audio_s = (stats.samples - last_samples) / SAMPLE_RATE
        if audio_s > 0:
            metrics.REALTIME_FACTOR.set((busy - last_busy) / audio_s)
        self._last_stats = (busy, stats.samples)
        with contextlib.suppress(ResponseError):
            summary = await self.redis.xpending(JOBS_STREAM, CONSUMER_GROUP)
            metrics.JOBS_PENDING.set(int(summary.get("pending", 0)))
            for group in await self.redis.xinfo_groups(JOBS_STREAM):
                lag = group.get("lag")  # Redis 7+; absent on 6.2
                if _s(group.get("name", b"")) == CONSUMER_GROUP and lag is not None:
                    metrics.JOBS_WAITING.set(int(lag))


class _Stop(Exception):
    """Ends the replica's task group after a drain."""


def build_engine(settings: WorkerSettings, models) -> ReplicaEngine:
    from ..streaming.sentence_stream import SynthesisLimits

    limits = SynthesisLimits(settings.max_audio_length, settings.max_tokens_per_text_id)
    engine = ReplicaEngine(
        models,
        max_batch=settings.max_batch,
        context_tokens=settings.context_tokens,
        holdback_tokens=settings.holdback_tokens,
        limits=limits,
        on_step=_observe_step,
    )
    return engine


def _observe_step(batch: int, seconds: float) -> None:
    metrics.BATCH_SIZE.observe(batch)
    metrics.STEP_SECONDS.observe(seconds)


def connect(redis_url: str) -> Redis:
    """The replica's Redis client. Connection errors and timeouts are retried with exponential
    backoff inside each command (about 1 s in all) before a loop sees them; the health check
    finds a dead idle connection before a command is sent on it. The socket timeout must outlast
    the longest blocking read (100 ms)."""
    return Redis.from_url(
        redis_url,
        decode_responses=False,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), retries=5),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=5,
        socket_connect_timeout=1.0,
        socket_timeout=5.0,
        socket_keepalive=True,
    )


async def serve(settings: WorkerSettings, models) -> None:
    redis = connect(settings.redis_url)
    try:
        await Replica(settings, build_engine(settings, models), redis).run()
    finally:
        with contextlib.suppress(*REDIS_DOWN, RedisError):
            await redis.aclose()
