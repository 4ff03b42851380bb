"""A TTS replica process: Redis Streams in and out, the engine on its own thread.

Loops (one asyncio task each): take new jobs from the consumer group; claim jobs that a dead
replica left pending; keep this replica's own pending jobs fresh so nobody claims them while it
lives; read streamed text; poll cancellations and deadlines; write parts; report metrics.
A job is acknowledged in one transaction with its last part (or its error part), never before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import ResponseError

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


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def now_ms() -> int:
    return int(time.time() * 1000)


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

    # -- lifecycle -----------------------------------------------------------------------------
    async def run(self) -> None:
        await ensure_group(self.redis)
        self._runner = EngineRunner(self.engine, asyncio.get_running_loop(), self._events)
        self._runner.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        await self._heartbeat()  # also tells a supervisor (and the tests) that it is ready
        log.info(
            "replica %s serving %s (max batch %d)", self.name, JOBS_STREAM, self.engine.max_batch
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._intake_loop(), name="intake")
                tasks.create_task(self._claim_loop(), name="claim")
                tasks.create_task(self._refresh_loop(), name="refresh")
                tasks.create_task(self._text_loop(), name="text")
                tasks.create_task(self._control_loop(), name="cancel+deadline")
                tasks.create_task(self._event_loop(), name="parts")
                tasks.create_task(self._metrics_loop(), name="metrics")
                tasks.create_task(self._drain_then_stop(), name="drain")
        except* _Stop:
            pass
        finally:
            self._runner.stop()
            log.info("replica %s stopped", self.name)

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
        # Unfinished jobs stay pending in the group: a live replica claims them after the idle
        # time and regenerates them from the start.
        raise _Stop

    def _forget(self, entry_id: str) -> ActiveJob | None:
        active = self.active.pop(entry_id, None)
        self._job_finished.set()
        return active

    @property
    def free_slots(self) -> int:
        return self.engine.max_batch - len(self.active)

    # -- jobs in -------------------------------------------------------------------------------
    async def _intake_loop(self) -> None:
        while self.accepting:
            free = self.free_slots
            if free <= 0:
                await asyncio.sleep(0.005)
                continue
            try:
                reply = await self.redis.xreadgroup(
                    CONSUMER_GROUP, self.name, {JOBS_STREAM: ">"}, count=free, block=100
                )
            except ResponseError as error:
                await self._recreate_group_or_raise(error)
                continue
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    await self._start(_s(entry_id), fields)

    async def _claim_loop(self) -> None:
        interval = self.settings.claim_idle_ms / 2000
        while self.accepting:
            await asyncio.sleep(interval)
            free = self.free_slots
            if free <= 0 or not self.accepting:
                continue
            try:
                reply = await self.redis.xautoclaim(
                    JOBS_STREAM,
                    CONSUMER_GROUP,
                    self.name,
                    self.settings.claim_idle_ms,
                    start_id="0-0",
                    count=free,
                )
            except ResponseError as error:
                await self._recreate_group_or_raise(error)
                continue
            for entry_id, fields in reply[1]:
                entry_id = _s(entry_id)
                if entry_id in self.active:
                    continue
                if not fields:  # trimmed away meanwhile
                    await self.redis.xack(JOBS_STREAM, CONSUMER_GROUP, entry_id)
                    continue
                pending = await self.redis.xpending_range(
                    JOBS_STREAM, CONSUMER_GROUP, min=entry_id, max=entry_id, count=1
                )
                deliveries = int(pending[0]["times_delivered"]) if pending else 1
                log.warning("claimed job %s (delivery %d)", entry_id, deliveries)
                if deliveries > self.settings.max_deliveries:
                    await self._dead_letter(
                        entry_id, fields, f"failed {deliveries - 1} times", "failed_repeatedly"
                    )
                    continue
                await self._start(entry_id, fields)

    async def _recreate_group_or_raise(self, error: ResponseError) -> None:
        """The jobs stream or its group vanished (a flushed or restarted Redis without
        persistence): create them again instead of dying, so the pool heals by itself."""
        message = str(error)
        if "NOGROUP" not in message and "UNBLOCKED" not in message:
            raise error
        log.warning("jobs stream or group missing (%s); creating it again", message)
        await ensure_group(self.redis)

    async def _refresh_loop(self) -> None:
        # XCLAIM with JUSTID resets the idle time of our own pending entries without counting a
        # delivery: a slow streamed job is not mistaken for a dead replica's.
        interval = self.settings.claim_idle_ms / 3000
        while True:
            await asyncio.sleep(interval)
            if self.active:
                try:
                    await self.redis.xclaim(
                        JOBS_STREAM, CONSUMER_GROUP, self.name, 0, list(self.active), justid=True
                    )
                except ResponseError as error:
                    await self._recreate_group_or_raise(error)
            await self._heartbeat()

    async def _heartbeat(self) -> None:
        # The profile tells the gateway (and the page it serves) when the voice is untrained.
        profile = self.settings.profile
        beat = Heartbeat(at_ms=now_ms(), profile=profile, untrained=profile == "tiny")
        await self.redis.set(
            WORKERS_KEY_PREFIX + self.name, beat.encode(), px=self.settings.claim_idle_ms
        )

    async def _start(self, entry_id: str, fields: dict) -> None:
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
        active = ActiveJob(entry_id, job, enqueued_ms=int(entry_id.split("-")[0]))
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
    async def _text_loop(self) -> None:
        while True:
            waiting = {
                a.job.text_stream: a
                for a in self.active.values()
                if a.job.text_stream is not None and not a.text_done
            }
            if not waiting:
                await asyncio.sleep(0.01)
                continue
            reply = await self.redis.xread(
                {key: a.text_last_id for key, a in waiting.items()}, count=256, block=20
            )
            for key, entries in reply or []:
                active = waiting[_s(key)]
                if active.entry_id not in self.active:
                    continue
                for entry_id, fields in entries:
                    active.text_last_id = _s(entry_id)
                    await self._feed(active, TextPiece.from_fields(fields))
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

    async def _control_loop(self) -> None:
        interval = self.settings.cancel_poll_ms / 1000
        while True:
            await asyncio.sleep(interval)
            if not self.active:
                continue
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
            if isinstance(event, JobFailed):
                # Not acknowledged: after the idle time a replica claims it again; after
                # max_deliveries it goes to the dead letters.
                self._forget(active.entry_id)
                metrics.ERRORS.labels("job_failed").inc()
                log.error("job %s failed: %s", active.entry_id, event.error)
                continue
            await self._write_part(active, event)

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
                error=message,
                error_kind=kind,
            )
            pipe.xadd(reply_to, error.to_fields())
            pipe.expire(reply_to, self.settings.audio_ttl_s)
        pipe.xack(JOBS_STREAM, CONSUMER_GROUP, entry_id)
        await pipe.execute()

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

    async def _dead_letter(self, entry_id: str, fields: dict, reason: str, kind: str) -> None:
        record = {_s(k): v for k, v in fields.items()}
        record.update(
            {"job_id": entry_id, "error": reason, "error_kind": kind, "worker": self.name}
        )
        await self.redis.xadd(DEAD_LETTER_STREAM, record, maxlen=10_000, approximate=True)
        reply_to = record.get("reply_to")
        seq_raw = _s(record.get("seq", b""))
        await self._answer_with_error(
            entry_id,
            _s(reply_to) if reply_to else None,
            int(seq_raw) if seq_raw.isdigit() else None,
            0,
            kind,
            reason,
        )
        log.error("job %s to dead letters: %s", entry_id, reason)

    # -- metrics -------------------------------------------------------------------------------
    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            metrics.JOBS_ACTIVE.set(len(self.active))
            with contextlib.suppress(ResponseError):
                summary = await self.redis.xpending(JOBS_STREAM, CONSUMER_GROUP)
                metrics.JOBS_PENDING.set(int(summary.get("pending", 0)))
                for group in await self.redis.xinfo_groups(JOBS_STREAM):
                    lag = group.get("lag")  # Redis 7+; absent on 6.2
                    if _s(group.get("name", b"")) == CONSUMER_GROUP and lag is not None:
                        metrics.JOBS_WAITING.set(int(lag))
            stats = self.engine.stats
            busy = stats.step_seconds + stats.vocoder_seconds
            last_busy, last_samples = self._last_stats
            audio_s = (stats.samples - last_samples) / SAMPLE_RATE
            if audio_s > 0:
                metrics.REALTIME_FACTOR.set((busy - last_busy) / audio_s)
            self._last_stats = (busy, stats.samples)


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


async def serve(settings: WorkerSettings, models) -> None:
    redis = Redis.from_url(settings.redis_url, decode_responses=False)
    try:
        await Replica(settings, build_engine(settings, models), redis).run()
    finally:
        await redis.aclose()
