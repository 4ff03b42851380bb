"""What the gateway's endpoints share for the life of the process: settings, the Redis
connection and TTS client, the gRPC backends, the session limiter; and the turn factory that
wires them together for one answer.

The backends come in as `Clients`: `Clients.connect` makes the real ones, tests pass fakes."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from llmvox_common.sentences import SentenceSplitter
from llmvox_common.tts_client import TTSClient, ensure_group
from llmvox_common.tts_streams import WORKERS_KEY_PREFIX, Heartbeat

from .backends import (
    AsrBackend,
    AsrClient,
    ChatMessage,
    LlmBackend,
    LlmClient,
    Sampling,
    TranscriptSource,
    TtsJobs,
)
from .limits import SessionLimiter
from .openai_llm import OpenAiLlm
from .settings import GatewaySettings
from .turn import ChunkPlan, TextSource, Turn, TurnTimings

log = logging.getLogger(__name__)

# Redis connection: a dropped connection (a restarted Redis) is retried a few times with a short
# backoff, so a reconnect is invisible; a Redis that stays down fails the command within about a
# second, which ends the turns using it with a clear error instead of hanging them.
REDIS_RETRIES = 3
REDIS_BACKOFF_BASE_S = 0.05
REDIS_BACKOFF_CAP_S = 0.5
REDIS_CONNECT_TIMEOUT_S = 2.0
# Longer than any blocking read the gateway issues (the audio reader blocks 200 ms).
REDIS_SOCKET_TIMEOUT_S = 10.0
# Idle pooled connections are PINGed before reuse after this long, so a stale one is replaced.
REDIS_HEALTH_CHECK_S = 5
# How old a pool state a turn accepts when it checks for a live replica (the check scans keys).
POOL_CHECK_MAX_AGE_S = 0.5
SCAN_COUNT = 1000


@dataclass
class PoolState:
    """The TTS replicas whose heartbeat is alive, and whether any runs untrained weights."""

    replicas: int
    untrained: bool


def llm_client(settings: GatewaySettings) -> LlmClient | None:
    """The LLM the settings name: the built-in gRPC service, or an OpenAI-compatible server
    (both behind `LlmClient`, so turns do not care which); None when none is configured."""
    if settings.llm_backend == "openai":
        return OpenAiLlm(
            settings.llm_base_url,
            model=settings.llm_model,
            api_key=settings.llm_api_key.get_secret_value() if settings.llm_api_key else "",
            timeout_s=settings.llm_timeout_s,
            extra_body=settings.llm_extra_body,
        )
    if settings.llm_addr:
        return LlmBackend(settings.llm_addr, timeout_s=settings.llm_timeout_s)
    return None


@dataclass
class Clients:
    """The Redis connection (health, pool state), the TTS pool, and the gRPC services (None: not
    configured)."""

    redis: Redis
    tts: TtsJobs
    asr: AsrClient | None
    llm: LlmClient | None
    # Refuse and fail turns while no TTS replica's heartbeat lives (no_tts_replica). On for the
    # real pool; the in-memory fakes of the unit tests have no heartbeats.
    watch_pool: bool = False

    @classmethod
    def connect(cls, settings: GatewaySettings) -> Clients:
        redis: Redis = Redis.from_url(
            settings.redis_url,
            decode_responses=False,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            socket_keepalive=True,
            health_check_interval=REDIS_HEALTH_CHECK_S,
            retry=Retry(
                ExponentialWithJitterBackoff(base=REDIS_BACKOFF_BASE_S, cap=REDIS_BACKOFF_CAP_S),
                REDIS_RETRIES,
            ),
        )
        return cls(
            redis=redis,
            watch_pool=True,
            tts=TTSClient(redis, audio_ttl_s=int(max(600, settings.turn_timeout_s * 2))),
            asr=(
                AsrBackend(settings.asr_addr, timeout_s=settings.asr_timeout_s)
                if settings.asr_addr
                else None
            ),
            llm=llm_client(settings),
        )


class GatewayRuntime:
    def __init__(self, settings: GatewaySettings, clients: Clients | None = None) -> None:
        self.settings = settings
        clients = clients or Clients.connect(settings)
        self.redis = clients.redis
        self.tts = clients.tts
        self.asr = clients.asr
        self.llm = clients.llm
        self.watch_pool = clients.watch_pool
        self.limiter = SessionLimiter(settings.max_sessions)
        self.plan = ChunkPlan(
            settings.initial_dump_size_1, settings.initial_dump_size_2, settings.max_dump_size
        )
        self.sampling = Sampling(
            temperature=settings.llm_temperature,
            top_p=settings.llm_top_p,
            top_k=settings.llm_top_k,
            max_tokens=settings.llm_max_tokens,
        )
        self.draining = False
        self._pool_cache: tuple[float, PoolState] | None = None

    async def start(self) -> None:
        try:
            await ensure_group(self.redis)
        except RedisError as error:  # readiness reports it; the process still starts
            log.warning("Redis not reachable at start: %s", error)

    async def close(self) -> None:
        for backend in (self.asr, self.llm):
            if backend is not None:
                await backend.close()
        await self.redis.aclose()

    # -- turns ----------------------------------------------------------------------------------

    def messages(
        self, history: Sequence[ChatMessage], instructions: str | None = None
    ) -> list[ChatMessage]:
        system = instructions if instructions is not None else self.settings.system_prompt
        head = [ChatMessage("system", system)] if system else []
        return [*head, *history]

    def turn(
        self,
        session: str,
        text: TextSource,
        *,
        speech: TranscriptSource | None = None,
        first_seq: int = 0,
        endpoint: str,
        timings: TurnTimings | None = None,
        audio_start_id: str = "0",
    ) -> Turn:
        return Turn(
            self.tts,
            session,
            text,
            speech=speech,
            first_seq=first_seq,
            plan=self.plan,
            splitter=SentenceSplitter(
                clause_words=self.settings.clause_words,
                max_sentence_words=self.settings.max_sentence_words,
            ),
            timings=timings,
            audio_start_id=audio_start_id,
            part_timeout_s=self.settings.tts_part_timeout_s,
            turn_timeout_s=self.settings.turn_timeout_s,
            endpoint=endpoint,
            live_replicas=self.live_replicas if self.watch_pool else None,
        )

    async def live_replicas(self) -> int:
        """TTS replicas whose heartbeat lives (a pool state at most POOL_CHECK_MAX_AGE_S old);
        raises RedisError when Redis does not answer."""
        return (await self.pool_state(max_age_s=POOL_CHECK_MAX_AGE_S)).replicas

    # -- health ---------------------------------------------------------------------------------

    async def pool_state(self, max_age_s: float = 0.0) -> PoolState:
        """Live replicas and whether any is untrained. The key scan walks Redis' keyspace, so
        callers on a hot path (every new WebSocket) take an answer up to `max_age_s` old."""
        cached = self._pool_cache
        if cached is not None and time.monotonic() - cached[0] <= max_age_s:
            return cached[1]
        replicas, untrained = 0, False
        # COUNT: the keyspace also holds every session's audio and text streams; SCAN's default
        # of 10 keys a step would take hundreds of round trips on a busy Redis.
        keys = [
            key
            async for key in self.redis.scan_iter(match=WORKERS_KEY_PREFIX + "*", count=SCAN_COUNT)
        ]
        values = await self.redis.mget(keys) if keys else []
        for value in values:
            if value is None:
                continue
            replicas += 1
            untrained = untrained or Heartbeat.decode(value).untrained
        state = PoolState(replicas, untrained)
        self._pool_cache = (time.monotonic(), state)
        return state

    async def readiness(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            await self.redis.ping()
            pool = await self.pool_state()
            checks["redis"] = "ok"
            checks["tts_replicas"] = pool.replicas
            checks["tts_untrained"] = pool.untrained
        except RedisError as error:
            checks["redis"] = f"error: {error}"
            checks["tts_replicas"] = 0
        for name, backend in (("asr", self.asr), ("llm", self.llm)):
            if backend is None:
                checks[name] = "not configured"
            else:
                checks[name] = "ok" if await backend.ready() else f"not serving at {backend.addr}"
        ready = (
            not self.draining
            and checks["redis"] == "ok"
            and checks["tts_replicas"] > 0
            and all(checks[n] in ("ok", "not configured") for n in ("asr", "llm"))
        )
        return {"ready": ready, "checks": checks}
