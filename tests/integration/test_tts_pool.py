"""The TTS replica pool against a real Redis server, with real worker processes.

Replicas run `llmvox-tts worker --profile tiny`: small random-weight models (untrained, the
audio is noise), the same ones the tests rebuild in-process for the reference audio.
"""

from __future__ import annotations

import asyncio
import os
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
WORKER = [sys.executable, "-m", "llmvox_tts.cli", "worker", "--profile", "tiny"]


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
            "--redis-url",
            self.redis_url,
            "--name",
            name,
            "--max-tokens-per-text-id",
            str(TOKENS_PER_ID),
            "--claim-idle-ms",
            "1500",
            "--context-tokens",
            str(CONTEXT),
            "--holdback-tokens",
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
    """Poll until `count` entries are in the session's audio stream (bounded)."""
    async with asyncio.timeout(30):
        while await client.xlen(audio_stream_key(session)) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def sentence(session: int, seq: int) -> str:
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    return f"{words[session % 8]} {words[(session + seq) % 8]} number {session} {seq}."


def test_two_replicas_twenty_sessions_in_order_and_identical(
    replicas: Replicas, redis_client: RedisClientFactory, reference_engine: ReplicaEngine
) -> None:
    replicas.start("r1", "--max-batch", "8")
    replicas.start("r2", "--max-batch", "8")
    sessions, sentences = 20, 3

    async def speak(tts: TTSClient, session: int) -> list[AudioPart]:
        name = f"s{session}"
        for seq in range(sentences):
            text = sentence(session, seq)
            last = seq == sentences - 1
            if session % 2 == 0:
                await tts.enqueue_text(
                    name, seq, text, last=last, first_chunk=FIRST_CHUNK, max_chunk=MAX_CHUNK
                )
                continue
            # Streamed word by word at an LLM's pace: the job starts on the first word.
            await tts.open_text_stream(
                name, seq, last=last, first_chunk=FIRST_CHUNK, max_chunk=MAX_CHUNK
            )
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
    replicas.start("doomed", "--max-batch", "4")
    text = "one two three four five six seven eight nine ten eleven twelve thirteen."
    words = text.split()

    async def scenario() -> tuple[list[AudioPart], int]:
        async with redis_client() as client:
            tts = TTSClient(client)
            await tts.open_text_stream(
                "s", 0, last=True, first_chunk=FIRST_CHUNK, max_chunk=MAX_CHUNK
            )
            for word in words[:6]:
                await tts.append_text("s", 0, word)
            # Wait until the doomed replica has written audio, then kill it mid-sentence.
            await wait_for_parts(client, "s", 1)
            replicas.kill("doomed")
            written_before = await client.xlen(audio_stream_key("s"))
            replicas.start("rescuer", "--max-batch", "4", wait=False)
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
    replicas.start("r1", "--max-batch", "4", "--max-tokens-per-text-id", "50")
    text = " ".join(["word"] * 60) + "."  # ~18000 tokens allowed: it would run for a long time

    async def scenario() -> tuple[AudioPart, float, int]:
        async with redis_client() as client:
            tts = TTSClient(client)
            await tts.enqueue_text(
                "c", 0, text, last=True, first_chunk=FIRST_CHUNK, max_chunk=MAX_CHUNK
            )
            await wait_for_parts(client, "c", 2)
            cancelled_at = time.monotonic()
            await tts.cancel("c")
            parts = await tts.collect("c", 0, timeout_s=10)
            took = time.monotonic() - cancelled_at
            tokens_after = sum(p.tokens for p in parts[2:])
            return parts[-1], took, tokens_after

    last, took, tokens_after = asyncio.run(scenario())
    assert last.error_kind == "cancelled"
    assert last.last
    assert took < 1.0
    # Parts are chunks of at most MAX_CHUNK tokens; a few steps after the cancel means at most
    # the chunks that were already complete.
    assert tokens_after <= 3 * MAX_CHUNK
    client = redis.Redis.from_url(replicas.redis_url)
    assert client.xpending(JOBS_STREAM, CONSUMER_GROUP)["pending"] == 0
    client.close()


def test_bad_jobs_get_error_parts_and_the_replica_keeps_serving(
    replicas: Replicas, redis_client: RedisClientFactory
) -> None:
    replicas.start("r1", "--max-text-chars", "200")
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
            await client.xadd(JOBS_STREAM, {**good, "seq": "7", "last": "1"})
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
            await tts.enqueue_text("d", 0, "doomed.", last=True)
            # A replica that took the job and died without a trace: delivered once, never acked.
            await client.xgroup_create(JOBS_STREAM, CONSUMER_GROUP, id="0", mkstream=True)
            await client.xreadgroup(CONSUMER_GROUP, "ghost", {JOBS_STREAM: ">"}, count=1)
            replicas.start("r1", "--max-deliveries", "1")
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
    proc = replicas.start("r1", "--metrics-port", str(port))
    text = "graceful shutdown keeps every word of this sentence."

    async def scenario() -> list[AudioPart]:
        async with redis_client() as client:
            tts = TTSClient(client)
            await tts.enqueue_text(
                "g", 0, text, last=True, first_chunk=FIRST_CHUNK, max_chunk=MAX_CHUNK
            )
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
    replicas.start("r1", "--text-timeout-s", "0.5")

    async def scenario() -> list[AudioPart]:
        async with redis_client() as client:
            tts = TTSClient(client)
            assert await tts.open_text_stream("t", 0, last=True) == text_stream_key("t", 0)
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
            await asyncio.sleep(0.5)  # the blocked read is woken with UNBLOCKED, then NOGROUP
            tts = TTSClient(client)
            await tts.enqueue_text("after-flush", 0, "Still serving.", last=True)
            return await tts.collect("after-flush", 0, timeout_s=30)

    parts = asyncio.run(scenario())
    assert parts
    assert parts[-1].last
    assert all(p.error is None for p in parts)
    assert "creating it again" in replicas.log("r1")
