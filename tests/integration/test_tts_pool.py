"""The TTS replica pool against a real Redis server, with real worker processes.

Replicas run `llmvox-tts worker --profile tiny`: small random-weight models (untrained, the
audio is noise), the same ones the tests rebuild in-process for the reference audio.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import redis.asyncio

from llmvox_common.tts_client import TTSClient
from llmvox_common.tts_streams import (
    CONSUMER_GROUP,
    DEAD_LETTER_STREAM,
    JOBS_STREAM,
    WORKERS_KEY_PREFIX,
    AudioPart,
    TTSJob,
    audio_stream_key,
    text_stream_key,
)
from llmvox_tts.loading.bundle import build_tiny
from llmvox_tts.streaming.sentence_stream import SynthesisLimits
from llmvox_tts.worker.engine import ReplicaEngine

from .conftest import RedisClientFactory

pytestmark = pytest.mark.integration

TOKENS_PER_ID = 3.0  # short sentences: the tiny model never ends one by itself
FIRST_CHUNK, MAX_CHUNK = 10, 40
CONTEXT, HOLDBACK = 16, 3  # chunk-join settings, passed to the replicas and the reference
# fp32 decoder and vocoder (the exact mode): the reference audio below is computed in fp32, and
# the CPU defaults (int8, bf16) would change the samples.
WORKER = [sys.executable, "-m", "llmvox_tts.cli", "worker", "--profile", "tiny"]
WORKER += ["--precision", "fp32", "--vocoder_precision", "fp32"]


class Replicas:
    """Starts worker processes and stops (or kills) them."""

    def __init__(self, redis_url: str, log_dir: Path) -> None:
        self.redis_url = redis_url
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, wait: bool = True) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("wb")
        cmd = [
            *WORKER,
            "--redis_url",
            self.redis_url,
            "--name",
            name,
            "--max_tokens_per_text_id",
            str(TOKENS_PER_ID),
            "--claim_idle_ms",
            "1500",
            "--context_tokens",
            str(CONTEXT),
            "--holdback_tokens",
            str(HOLDBACK),
            *args,
        ]
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        self.procs[name] = proc
        if wait:
            self.wait_ready(name)
        return proc

    def wait_ready(self, name: str, timeout: float = 60.0) -> None:
        client = redis.Redis.from_url(self.redis_url)
        deadline = time.monotonic() + timeout
        try:
            while not client.exists(WORKERS_KEY_PREFIX + name):
                if self.procs[name].poll() is not None:
                    pytest.fail(f"worker {name} exited: {self.log(name)}")
                if time.monotonic() > deadline:
                    pytest.fail(f"worker {name} not ready after {timeout} s: {self.log(name)}")
                time.sleep(0.05)
        finally:
            client.close()

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]

    def kill(self, name: str) -> None:
        self.procs[name].kill()  # SIGKILL: no cleanup, its jobs stay pending
        self.procs[name].wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def replicas(redis_client: RedisClientFactory, tmp_path: Path) -> Iterator[Replicas]:
    pool = Replicas(redis_client.url, tmp_path)
    yield pool
    pool.stop_all()


@pytest.fixture(scope="module")
def reference_engine() -> ReplicaEngine:
    limits = SynthesisLimits(max_tokens_per_text_id=TOKENS_PER_ID)
    return ReplicaEngine(
        build_tiny(seed=0),
        max_batch=1,
        limits=limits,
        context_tokens=CONTEXT,
        holdback_tokens=HOLDBACK,
    )


def reference_audio(engine: ReplicaEngine, text: str) -> list[np.ndarray]:
    """Parts of one sentence decoded alone, in-process: what every replica must reproduce."""
    engine.add("ref", first_chunk=FIRST_CHUNK, max_chunk=MAX_CHUNK)
    for word in text.split():
        engine.push_text("ref", word)
    engine.close_text("ref")
    parts = []
    while engine.has_work:
        parts.extend(p.pcm.numpy() for p in engine.step())
    engine.remove("ref")
    return parts


def assert_same_audio(parts: list[AudioPart], expected: list[np.ndarray], what: str) -> None:
    assert [p.error for p in parts] == [None] * len(parts), what
    assert [p.part for p in parts] == list(range(len(expected))), what
    assert parts[-1].last, what
    for got, want in zip(parts, expected, strict=True):
        np.testing.assert_allclose(got.samples, want, atol=1e-5, rtol=1e-4, err_msg=what)


async def wait_for_parts(client: redis.asyncio.Redis, session: str, count: int) -> None:
    """Block on the session's audio stream until `count` entries are in it (bounded)."""
    key, last_id, seen = audio_stream_key(session), "0", 0
    async with asyncio.timeout(60):
        while seen < count:
            reply = await client.xread({key: last_id}, count=count - seen, block=1000)
            for _, entries in reply or []:
                seen += len(entries)
                last_id = entries[-1][0]


def sentence(session: int, seq: int) -> str:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    return f"{words[session % 8]} {words[(session + seq) % 8]} number {session} {seq}."


def test_two_replicas_twenty_sessions_in_order_and_identical(
    replicas: Replicas, redis_client: RedisClientFactory, reference_engine: ReplicaEngine
) -> None:
    replicas.start("r1", "--max_batch", "8")
    replicas.start("r2", "--max_batch", "8")
    sessions, sentences = 20, 3

    async def speak(tts: TTSClient, session: int) -> list[AudioPart]:
        name = f"s{session}"
        for seq in range(sentences):
            text = sentence(session, seq)
            if session % 2 == 0:
                await tts.enqueue_text(
                    name, seq, text, first_chunk=FIRST_CHUNK, max_chunk=MAX_CHUNK
                )
                continue
            # Streamed word by word at an LLM's pace: the job starts on the first word. The
            # pause only paces the words (jobs run dry of text and wait); nothing waits on it.
            await tts.open_text_stream(name, seq, first_chunk=FIRST_CHUNK, max_chunk=MAX_CHUNK)
            for word in text.split():
                await tts.append_text(name, seq, word)
                await asyncio.sleep(0.03)
            await tts.close_text(name, seq)
        return await tts.collect(name, sentences - 1, timeout_s=120)

    async def scenario() -> list[list[AudioPart]]:
        async with redis_client() as client:
            tts = TTSClient(client)
            return await asyncio.gather(*(speak(tts, s) for s in range(sessions)))

    results = asyncio.run(scenario())
    workers = set()
    for session, parts in enumerate(results):
        for seq in range(sentences):
            got = [p for p in parts if p.seq == seq]
            expected = reference_audio(reference_engine, sentence(session, seq))
            assert_same_audio(got, expected, f"session {session} sentence {seq}")
            workers.update(p.worker for p in got)
        seqs = [(p.seq, p.part) for p in parts]
        assert seqs == sorted(seqs)
    assert workers == {"r1", "r2"}, "both replicas should have served jobs"
    client = redis.Redis.from_url(replicas.redis_url)
    assert client.xpending(JOBS_STREAM, CONSUMER_GROUP)["pending"] == 0  # all acknowledged
    client.close()


def test_killed_replica_mid_sentence_session_completes_identically(
    replicas: Replicas, redis_client: RedisClientFactory, reference_engine: ReplicaEngine
) -> None:
    replicas.start("doomed", "--max_batch", "4")
    text = "one two three four five six seven eight nine ten eleven twelve thirteen."
    words = text.split()

    async def scenario() -> tuple[list[AudioPart], int]:
        async with redis_client() as client:
            tts = TTSClient(client)
            await tts.open_text_stream("s", 0, first_chunk=FIRST_CHUNK, max_chunk=MAX_CHUNK)
            for word in words[:6]:
                await tts.append_text("s", 0, word)
            # Wait until the doomed replica has written audio, then kill it mid-sentence.
            await wait_for_parts(client, "s", 1)
            replicas.kill("doomed")
            written_before = await client.xlen(audio_stream_key("s"))
            replicas.start("rescuer", "--max_batch", "4", wait=False)
            for word in words[6:]:
                await tts.append_text("s", 0, word)
            await tts.close_text("s", 0)
            stream = tts.parts("s", last_seq=0, timeout_s=60)
            parts = [p async for p in stream]
            assert stream.duplicates_dropped >= written_before  # regenerated from the start
            return parts, written_before

    parts, written_before = asyncio.run(scenario())
    assert written_before >= 1
    assert_same_audio(parts, reference_audio(reference_engine, text), "rescued sentence")
    assert "rescuer" in {p.worker for p in parts}


def test_cancellation_stops_the_session_within_a_few_steps(
    replicas: Replicas, redis_client: RedisClientFactory
) -> None:
    replicas.start("r1", "--max_batch", "4", "--max_tokens_per_text_id", "50")
    text = " ".join(["word"] * 60) + "."  # ~18000 tokens allowed: it would run for a long time

    async def scenario() -> tuple[list[AudioPart], int]:
        async with redis_client() as client:
            tts = TTSClient(client)
            await tts.enqueue_text("c", 0, text, first_chunk=FIRST_CHUNK, max_chunk=MAX_CHUNK)
            await wait_for_parts(client, "c", 2)
            await tts.cancel("c")
            written_at_cancel = await client.xlen(audio_stream_key("c"))
            parts = await tts.collect("c", 0, timeout_s=60)
            return parts, written_at_cancel

    parts, written_at_cancel = asyncio.run(scenario())
    assert parts[-1].error_kind == "cancelled"
    assert parts[-1].last
    # Stopped far short of the sentence's budget (50 tokens per text id)...
    assert sum(p.tokens for p in parts) < 50 * len(text.split())
    # ...within a few steps: after the cancel only the chunks already complete were written
    # (parts hold at most MAX_CHUNK tokens).
    assert sum(p.tokens for p in parts[written_at_cancel:]) <= 3 * MAX_CHUNK
    client = redis.Redis.from_url(replicas.redis_url)
    assert client.xpending(JOBS_STREAM, CONSUMER_GROUP)["pending"] == 0
    client.close()


def test_bad_jobs_get_error_parts_and_the_replica_keeps_serving(
    replicas: Replicas, redis_client: RedisClientFactory
) -> None:
    replicas.start("r1", "--max_text_chars", "200")
    reply = audio_stream_key("bad")
    good = TTSJob(session="bad", seq=0, reply_to=reply, text="fine.").to_fields()
    cases = {
        1: {**good, "seq": "1", "text": "   "},  # empty text
        2: {k: v for k, v in {**good, "seq": "2"}.items() if k != "session"},  # no session
        3: {**good, "seq": "3", "text": "x " * 150},  # oversized
        4: {
            **{k: v for k, v in good.items() if k != "text"},
            "seq": "4",
            "text_stream": "llmvox:text:someone-else:4",
        },  # not this session's stream
        5: {**good, "seq": "5", "deadline_ms": "1"},  # long past
        6: {**good, "seq": "6", "first_chunk": "zero"},
    }

    async def scenario() -> list[AudioPart]:
        async with redis_client() as client:
            await client.xadd(JOBS_STREAM, good)
            for fields in cases.values():
                await client.xadd(JOBS_STREAM, fields)
            await client.xadd(JOBS_STREAM, {"seq": "9", "text": "no reply_to"})
            await client.xadd(JOBS_STREAM, {**good, "seq": "7"})
            return await TTSClient(client).collect("bad", 7, timeout_s=60)

    parts = asyncio.run(scenario())
    by_seq = {p.seq: p for p in parts if p.error}
    kinds = {seq: (by_seq[seq].error_kind, by_seq[seq].error) for seq in cases}
    assert kinds[1] == ("bad_job", "empty text")
    assert kinds[2] == ("bad_job", "missing field 'session'")
    assert kinds[3][0] == "bad_job"
    assert "max_text_chars=200" in kinds[3][1]
    assert kinds[4][0] == "bad_job"
    assert "llmvox:text:bad:4" in kinds[4][1]
    assert kinds[5][0] == "deadline"
    assert kinds[6][0] == "bad_job"
    assert "first_chunk" in kinds[6][1]
    ok = [p for p in parts if p.seq in (0, 7)]
    assert all(p.error is None for p in ok)
    assert {p.seq for p in ok if p.last} == {0, 7}
    client = redis.Redis.from_url(replicas.redis_url)
    dead = client.xrange(DEAD_LETTER_STREAM)
    assert len(dead) == 1
    assert dead[0][1][b"error"] == b"missing field 'session'"  # and no reply_to
    assert client.xpending(JOBS_STREAM, CONSUMER_GROUP)["pending"] == 0
    client.close()


def test_job_that_keeps_failing_goes_to_dead_letters(
    replicas: Replicas, redis_client: RedisClientFactory
) -> None:
    async def scenario() -> list[AudioPart]:
        async with redis_client() as client:
            tts = TTSClient(client)
            await tts.enqueue_text("d", 0, "doomed.")
            # A replica that took the job and died without a trace: delivered once, never acked.
            await client.xgroup_create(JOBS_STREAM, CONSUMER_GROUP, id="0", mkstream=True)
            await client.xreadgroup(CONSUMER_GROUP, "ghost", {JOBS_STREAM: ">"}, count=1)
            replicas.start("r1", "--max_deliveries", "1")
            return await tts.collect("d", 0, timeout_s=30)

    parts = asyncio.run(scenario())
    assert [(p.error_kind, p.last) for p in parts] == [("failed_repeatedly", True)]
    client = redis.Redis.from_url(replicas.redis_url)
    dead = client.xrange(DEAD_LETTER_STREAM)
    assert [d[1][b"error_kind"] for d in dead] == [b"failed_repeatedly"]
    client.close()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_finishes_active_jobs_and_metrics_are_exported(
    replicas: Replicas, redis_client: RedisClientFactory, reference_engine: ReplicaEngine
) -> None:
    port = free_port()
    proc = replicas.start("r1", "--metrics_port", str(port))
    text = "graceful shutdown keeps every word of this sentence."

    async def scenario() -> list[AudioPart]:
        async with redis_client() as client:
            tts = TTSClient(client)
            await tts.enqueue_text("g", 0, text, first_chunk=FIRST_CHUNK, max_chunk=MAX_CHUNK)
            await wait_for_parts(client, "g", 1)
            url = f"http://127.0.0.1:{port}/metrics"
            metrics = await asyncio.to_thread(scrape, url)
            assert "llmvox_tts_tokens_total" in metrics
            assert "llmvox_tts_time_to_first_part_seconds_bucket" in metrics
            assert "llmvox_tts_jobs_waiting" in metrics
            proc.send_signal(signal.SIGTERM)
            return await tts.collect("g", 0, timeout_s=30)

    parts = asyncio.run(scenario())
    assert proc.wait(timeout=30) == 0
    assert_same_audio(parts, reference_audio(reference_engine, text), "drained sentence")


def test_streamed_job_without_text_times_out(
    replicas: Replicas, redis_client: RedisClientFactory
) -> None:
    replicas.start("r1", "--text_timeout_s", "0.5")

    async def scenario() -> list[AudioPart]:
        async with redis_client() as client:
            tts = TTSClient(client)
            assert await tts.open_text_stream("t", 0) == text_stream_key("t", 0)
            return await tts.collect("t", 0, timeout_s=20)

    parts = asyncio.run(scenario())
    assert [(p.error_kind, p.last) for p in parts] == [("text_timeout", True)]


def test_replica_recreates_a_vanished_jobs_stream_and_keeps_serving(
    replicas: Replicas, redis_client: RedisClientFactory
) -> None:
    """A Redis restarted without persistence (or flushed) loses the stream and its group; the
    replica must not die of NOGROUP but create them again."""
    replicas.start("r1")

    async def scenario() -> list[AudioPart]:
        async with redis_client() as client:
            await client.delete(JOBS_STREAM)
            # No wait needed: whether the replica's read is woken with UNBLOCKED first or its
            # next read fails with NOGROUP on the stream this enqueue creates, it creates the
            # group again from id 0, which still delivers this job.
            tts = TTSClient(client)
            await tts.enqueue_text("after-flush", 0, "Still serving.")
            return await tts.collect("after-flush", 0, timeout_s=30)

    parts = asyncio.run(scenario())
    assert parts
    assert parts[-1].last
    assert all(p.error is None for p in parts)
    assert "creating it again" in replicas.log("r1")


def _metric(text: str, name: str, label: str) -> float:
    """The value of one labelled sample of the replica's Prometheus text, 0 when absent."""
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(label)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_jobs_past_their_deadline_are_dropped_acknowledged_and_counted(
    replicas: Replicas, redis_client: RedisClientFactory
) -> None:
    port = free_port()
    replicas.start("r1", "--metrics_port", str(port), "--max_tokens_per_text_id", "50")
    url = f"http://127.0.0.1:{port}/metrics"

    async def scenario() -> tuple[list[AudioPart], list[AudioPart], str]:
        async with redis_client() as client:
            tts = TTSClient(client)
            # Expired before any replica takes it: dropped before it starts.
            past = int(time.time() * 1000) - 1000
            await tts.enqueue_text("late", 0, "Too late to say.", deadline_ms=past)
            late = await tts.collect("late", 0, timeout_s=60)
            # Expires while it is being spoken: its text never ends, so it is still active when
            # the deadline passes, with audio already written.
            soon = int(time.time() * 1000) + 3000
            await tts.open_text_stream(
                "expiring",
                0,
                first_chunk=FIRST_CHUNK,
                max_chunk=MAX_CHUNK,
                deadline_ms=soon,
                first_piece="these words arrive but the sentence never ends",
            )
            expiring = await tts.collect("expiring", 0, timeout_s=60)
            assert (await client.xpending(JOBS_STREAM, CONSUMER_GROUP))["pending"] == 0
            return late, expiring, await asyncio.to_thread(scrape, url)

    late, expiring, metrics = asyncio.run(scenario())
    assert [(p.error_kind, p.last, p.tokens) for p in late] == [("deadline", True, 0)]
    assert expiring[-1].error_kind == "deadline"
    assert expiring[-1].last
    assert [p.error for p in expiring[:-1]] == [None] * (len(expiring) - 1)
    assert len(expiring) > 1, "the job should have spoken before its deadline"
    assert _metric(metrics, "llmvox_tts_errors_total", 'kind="deadline"') == 2
    assert _metric(metrics, "llmvox_tts_jobs_total", 'outcome="deadline"') == 2
