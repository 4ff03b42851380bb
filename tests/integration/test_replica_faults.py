"""Faults a TTS replica must survive, with real processes: its Redis killed (SIGKILL) and
restarted, a sibling replica killed mid-sentence, and job entries of any content.

Redis outages use a private `redis-server` started here (without persistence, as a restarted
cache loses everything), never the shared test server. The figure the takeover test measures
(the longest gap in the client's audio after `kill -9`) is printed: run with `-s` to see it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmvox_common.tts_client import TTSClient
from llmvox_common.tts_streams import (
    CONSUMER_GROUP,
    DEAD_LETTER_STREAM,
    JOBS_STREAM,
    WORKERS_KEY_PREFIX,
    AudioPart,
    JobFormatError,
    TTSJob,
    audio_stream_key,
)
from llmvox_tts.worker.engine import ReplicaEngine

from .conftest import RedisClientFactory
from .test_tts_pool import (
    FIRST_CHUNK,
    MAX_CHUNK,
    Replicas,
    assert_same_audio,
    free_port,
    reference_audio,
    reference_engine,  # noqa: F401 (a fixture)
    replicas,  # noqa: F401 (a fixture)
    scrape,
    wait_for_parts,
)

pytestmark = pytest.mark.integration

POLL_S = 0.05  # pause between checks of a condition that has no event to wait on


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL_S)


class PrivateRedis:
    """A redis-server of this test's own, on a fixed port so it can be killed and restarted
    where the replica expects it."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [server, "--port", str(self.port), "--save", "", "--appendonly", "no"],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.answers, f"redis-server on port {self.port}")

    def answers(self) -> bool:
        try:
            with redis.Redis.from_url(self.url, socket_connect_timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: connections drop, nothing is saved
        self.proc.wait()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill()


def _metric(text: str, name: str, label: str) -> float:
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(label)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _alive_with_heartbeat(server: PrivateRedis, pool: Replicas, name: str) -> bool:
    assert pool.procs[name].poll() is None, f"replica exited: {pool.log(name)}"
    try:
        with server.client() as client:
            return bool(client.exists(WORKERS_KEY_PREFIX + name))
    except redis.RedisError:
        return False


def test_replica_rides_out_redis_killed_while_idle_and_while_speaking(
    private_redis: PrivateRedis,
    tmp_path: Path,
    reference_engine: ReplicaEngine,  # noqa: F811
) -> None:
    pool = Replicas(private_redis.url, tmp_path)
    try:
        pool.start("r1")
        log_outages = lambda: pool.log("r1").count("Redis unreachable")  # noqa: E731

        # 1. Killed while the replica is idle.
        private_redis.kill()
        wait_until(lambda: log_outages() == 1, "the replica to notice the outage")
        private_redis.start()
        wait_until(lambda: _alive_with_heartbeat(private_redis, pool, "r1"), "the heartbeat")

        # 2. Killed while a job is being spoken: the job is lost with the server's memory (the
        # gateway fails that turn); the replica itself carries on.
        long_text = " ".join(["word"] * 120) + "."  # seconds of decoding

        async def start_long_job() -> None:
            async with redis.asyncio.Redis.from_url(private_redis.url) as client:
                await TTSClient(client).enqueue_text(
                    "long", 0, long_text, first_chunk=FIRST_CHUNK, max_chunk=MAX_CHUNK
                )
                await wait_for_parts(client, "long", 1)

        asyncio.run(start_long_job())
        private_redis.kill()
        wait_until(lambda: log_outages() == 2, "the replica to notice the second outage")
        private_redis.start()
        wait_until(lambda: _alive_with_heartbeat(private_redis, pool, "r1"), "the heartbeat")

        # 3. A job submitted after the restart is served completely, as a healthy pool would.
        text = "served after the restart."

        async def after_restart() -> list[AudioPart]:
            async with redis.asyncio.Redis.from_url(private_redis.url) as client:
                tts = TTSClient(client)
                await tts.enqueue_text(
                    "after", 0, text, first_chunk=FIRST_CHUNK, max_chunk=MAX_CHUNK
                )
                return await tts.collect("after", 0, timeout_s=60)

        parts = asyncio.run(after_restart())
        assert_same_audio(parts, reference_audio(reference_engine, text), "after restart")
        assert pool.procs["r1"].poll() is None
        log = pool.log("r1")
        assert log.count("Redis unreachable") == 2, "one log line per outage, not per retry"
        assert log.count("Redis reachable again") == 2
        # The job in flight is not stuck: either a write failed and the replica dropped it, or
        # redis-py's retries outlasted the restart and the job went on into the new server.
        with redis.Redis.from_url(private_redis.url) as client:
            went_on = bool(client.exists(audio_stream_key("long")))
        assert "its part could not be written" in log or went_on
    finally:
        pool.stop_all()


def test_dead_replica_is_taken_over_when_its_heartbeat_lapses(
    replicas: Replicas,  # noqa: F811
    redis_client: RedisClientFactory,
    reference_engine: ReplicaEngine,  # noqa: F811
) -> None:
    # claim_idle_ms far above the takeover time: only the heartbeat path can rescue the job.
    ports = {"a": free_port(), "b": free_port()}
    for name, port in ports.items():
        replicas.start(name, "--claim_idle_ms", "30000", "--metrics_port", str(port))
    words = [f"w{i}" for i in range(24)] + ["end."]
    text = " ".join(words)

    async def scenario() -> tuple[list[AudioPart], list[float], str, float]:
        async with redis_client() as client:
            tts = TTSClient(client)
            await tts.open_text_stream("k", 0, first_chunk=FIRST_CHUNK, max_chunk=MAX_CHUNK)
            for word in words[:12]:
                await tts.append_text("k", 0, word)
            stream = tts.parts("k", last_seq=0, timeout_s=60)
            parts: list[AudioPart] = [await anext(stream)]
            arrivals = [time.monotonic()]
            owner = parts[0].worker
            replicas.kill(owner)  # kill -9 mid-sentence: its job stays pending under its name
            killed_at = time.monotonic()
            for word in words[12:]:
                await tts.append_text("k", 0, word)
            await tts.close_text("k", 0)
            async for part in stream:
                parts.append(part)
                arrivals.append(time.monotonic())
            survivor = "b" if owner == "a" else "a"
            metrics = await asyncio.to_thread(scrape, f"http://127.0.0.1:{ports[survivor]}/metrics")
            # The dead consumer is deleted once its jobs are taken.
            consumers = await client.xinfo_consumers(JOBS_STREAM, CONSUMER_GROUP)
            assert owner not in {c["name"].decode() for c in consumers}
            return parts, arrivals, metrics, killed_at

    parts, arrivals, metrics, killed_at = asyncio.run(scenario())
    assert_same_audio(parts, reference_audio(reference_engine, text), "taken-over sentence")
    assert len({p.worker for p in parts}) == 2
    assert _metric(metrics, "llmvox_tts_jobs_claimed_total", 'reason="heartbeat_lapsed"') == 1
    assert _metric(metrics, "llmvox_tts_jobs_claimed_total", 'reason="idle"') == 0
    after_kill = [t for t in arrivals if t > killed_at]
    gap = max(b - a for a, b in zip([killed_at, *after_kill], after_kill, strict=False))
    print(f"\nlongest gap in the client's audio after kill -9: {gap:.2f} s")


# -- job entries of any content ----------------------------------------------------------------

GOOD = TTSJob(session="fz", seq=1, reply_to=audio_stream_key("fz"), text="fine.").to_fields()
NAMES = [*GOOD, "text_stream"]
raw_values = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(str.encode),
    st.integers(-(10**25), 10**25).map(lambda n: str(n).encode()),
    st.sampled_from([b"", b"\xff\xfe", "\u00b2".encode(), b"llmvox:tts:jobs", b"1" * 5000]),
    st.sampled_from([b"llmvox:audio:fz", b"llmvox:text:fz:1", b"llmvox:cancel:fz"]),
    st.integers(0, 20_000).map(lambda n: b"y " * n),
)


@st.composite
def job_entries(draw: st.DrawFn) -> list[tuple[bytes, bytes]]:
    """Field lists as XADD takes them: a good job mutated (fields dropped, replaced, given
    twice) or random names and values."""
    if draw(st.booleans()):
        fields = [(k.encode(), v.encode()) for k, v in GOOD.items()]
        for _ in range(draw(st.integers(1, 4))):
            action = draw(st.sampled_from(["drop", "set", "twice"]))
            name = draw(st.sampled_from(NAMES)).encode()
            if action == "drop":
                fields = [f for f in fields if f[0] != name] or fields
            elif action == "set":
                fields = [f for f in fields if f[0] != name] + [(name, draw(raw_values))]
            else:
                fields.append((name, draw(raw_values)))
        return fields
    names = st.one_of(st.sampled_from(NAMES).map(str.encode), st.binary(min_size=1, max_size=12))
    return draw(st.lists(st.tuples(names, raw_values), min_size=1, max_size=10))


def _expected_answer(fields: dict[bytes, bytes]) -> tuple[str, int] | None:
    """Where a replica must answer this entry (reply_to, seq), or None: dead letter only."""
    try:
        job = TTSJob.from_fields(fields)
    except JobFormatError as error:
        if error.reply_to and error.seq is not None:
            return error.reply_to, error.seq
        return None
    return job.reply_to, job.seq


def test_no_job_content_crashes_a_replica(
    replicas: Replicas,  # noqa: F811
    redis_client: RedisClientFactory,
) -> None:
    proc = replicas.start("fuzz", "--max_text_chars", "300", "--text_timeout_s", "1")
    round_no = 0

    @settings(
        max_examples=20,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(job_entries(), min_size=1, max_size=5))
    def one_batch(batch: list[list[tuple[bytes, bytes]]]) -> None:
        nonlocal round_no
        round_no += 1
        session = f"good{round_no}"

        async def scenario() -> None:
            async with redis_client() as client:
                ids = []
                for fields in batch:
                    flat = [item for pair in fields for item in pair]
                    ids.append(await client.execute_command("XADD", JOBS_STREAM, "*", *flat))
                tts = TTSClient(client)
                await tts.enqueue_text(session, 0, "still serving.")
                good = await tts.collect(session, 0, timeout_s=60)
                assert good[-1].last
                assert all(p.error is None for p in good)
                # Every entry ends acknowledged: answered on its stream, or a dead letter.
                # No event says "all acknowledged": poll the group's pending count.
                pending = lambda: sync.xpending(JOBS_STREAM, CONSUMER_GROUP)["pending"]  # noqa: E731
                await asyncio.to_thread(wait_until, lambda: pending() == 0, "all acks", 60)
                dead = {
                    fields[b"job_id"].decode()
                    for _, fields in await client.xrange(DEAD_LETTER_STREAM)
                }
                for entry_id, fields in zip(ids, batch, strict=True):
                    as_read = dict(fields)  # what XREADGROUP gives: the last of a name wins
                    answer = _expected_answer(as_read)
                    if answer is None:
                        assert entry_id.decode() in dead, as_read
                        continue
                    reply_to, seq = answer
                    ends = [
                        AudioPart.from_fields(f)
                        for _, f in await client.xrange(reply_to)
                        if f.get(b"seq") == str(seq).encode() and f.get(b"last") == b"1"
                    ]
                    assert ends or entry_id.decode() in dead, as_read

        with redis.Redis.from_url(redis_client.url) as sync:
            asyncio.run(scenario())
        assert proc.poll() is None, replicas.log("fuzz")

    one_batch()
    assert proc.poll() is None
    # Nothing reached the replica's last-resort handlers: every fault was a handled one.
    assert "loop failed" not in replicas.log("fuzz")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_takeover_leaves_live_replicas_alone(
    replicas: Replicas,  # noqa: F811
    redis_client: RedisClientFactory,
) -> None:
    """A live replica's jobs are never taken over: its heartbeat is refreshed well within the
    TTL even while it decodes."""
    port = free_port()
    replicas.start("busy", "--max_tokens_per_text_id", "20", "--max_batch", "2")
    replicas.start("watcher", "--metrics_port", str(port))
    text = " ".join(["word"] * 30) + "."

    async def scenario() -> tuple[list[AudioPart], str]:
        async with redis_client() as client:
            tts = TTSClient(client)
            for seq in range(4):
                await tts.enqueue_text("busy", seq, text, first_chunk=FIRST_CHUNK, max_chunk=40)
            parts = await tts.collect("busy", 3, timeout_s=120)
            return parts, await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/metrics")

    parts, metrics = asyncio.run(scenario())
    assert all(p.error is None for p in parts)
    assert _metric(metrics, "llmvox_tts_jobs_claimed_total", 'reason="heartbeat_lapsed"') == 0


def test_replica_restarted_under_its_name_takes_back_its_pending_jobs(
    replicas: Replicas,  # noqa: F811
    redis_client: RedisClientFactory,
) -> None:
    """A replica relaunched under the same name (a supervisor's restart) finds its previous
    life's jobs pending under its name, one of them unparseable: it answers both at once
    instead of waiting for claim_idle_ms, or dying on the bad one again."""
    port = free_port()

    async def scenario() -> tuple[list[AudioPart], str]:
        async with redis_client() as client:
            tts = TTSClient(client)
            await tts.enqueue_text("again", 0, "spoken after the restart.")
            bad = {"session": "again", "seq": "1", "reply_to": "llmvox:audio:again"}
            await client.xadd(JOBS_STREAM, {**bad, "text": b"\xff\xfe not utf-8"})
            # Its previous life took both and was killed before answering.
            await client.xgroup_create(JOBS_STREAM, CONSUMER_GROUP, id="0", mkstream=True)
            await client.xreadgroup(CONSUMER_GROUP, "same", {JOBS_STREAM: ">"}, count=2)
            replicas.start("same", "--claim_idle_ms", "60000", "--metrics_port", str(port))
            parts = await tts.collect("again", 1, timeout_s=30)
            return parts, await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/metrics")

    parts, metrics = asyncio.run(scenario())
    spoken = [p for p in parts if p.seq == 0]
    assert spoken[-1].last
    assert all(p.error is None for p in spoken)
    assert parts[-1].seq == 1
    assert parts[-1].error_kind == "bad_job"
    assert "UTF-8" in (parts[-1].error or "")
    assert _metric(metrics, "llmvox_tts_jobs_claimed_total", 'reason="restarted"') == 2
    assert replicas.procs["same"].poll() is None
