"""The gRPC servicer of `llmvox.llm.v1.LlmService` and the server around it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import grpc

from llmvox_common._proto.llmvox.llm.v1 import llm_pb2, llm_pb2_grpc
from llmvox_common.grpc_service import (
    ConcurrencyLimit,
    InvalidArgument,
    ServiceError,
    Unavailable,
    grpc_errors,
    run_grpc_service,
)

from . import metrics
from .adapters import LoadOptions, build_adapter
from .engine import Finished, GenerationEngine, TextDelta
from .loading import ModelSource, context_length, eos_token_ids
from .requests import ChatMessage, RequestPolicy, Sampling, parse_request
from .settings import LlmSettings

log = logging.getLogger(__name__)

SERVICE_NAME = llm_pb2.DESCRIPTOR.services_by_name["LlmService"].full_name
WARM_UP_TOKENS = 2


class LlmService(llm_pb2_grpc.LlmServiceServicer):
    def __init__(self, settings: LlmSettings) -> None:
        if not settings.model:
            raise ValueError("no model: pass --model (or set LLMVOX_LLM_MODEL)")
        self.settings = settings
        # Calls admitted (preparing, waiting or generating): the batch plus its queue; set
        # again in load() once the engine knows whether this model batches.
        self.limit = ConcurrencyLimit(settings.max_batch + settings.max_queue)
        self.adapter = build_adapter(
            settings.chat_type,
            LoadOptions(
                source=ModelSource.resolve(settings.model, settings.gguf_file),
                device=settings.device,
                dtype=settings.dtype,
                trust_remote_code=settings.trust_remote_code,
            ),
        )
        self.engine: GenerationEngine | None = None
        self.policy: RequestPolicy | None = None
        self.max_prompt_tokens: int | None = None

    def load(self) -> None:
        """Weights, then a short generation, so the first real call pays no first-use costs
        (kernel selection, allocator growth); runs on a thread before SERVING."""
        started = time.perf_counter()
        adapter = self.adapter
        adapter.load()
        eos_ids, eos_strings = eos_token_ids(
            adapter.model, adapter.tokenizer, self.settings.eos_token
        )
        self.policy = RequestPolicy(
            max_tokens=self.settings.max_tokens,
            temperature=self.settings.temperature,
            top_p=self.settings.top_p,
            top_k=self.settings.top_k,
            system_prompt=self.settings.system_prompt,
            takes_images=adapter.takes_images,
            takes_audio=adapter.takes_audio,
            chat_type=self.settings.chat_type,
        )
        self.max_prompt_tokens = self.settings.max_prompt_tokens or context_length(adapter.model)
        engine = GenerationEngine(
            adapter,
            eos_ids,
            eos_strings,
            max_batch=self.settings.max_batch,
            max_positions=context_length(adapter.model),
        )
        self.limit.limit = engine.max_batch + self.settings.max_queue
        prepared = adapter.prepare_exclusive((ChatMessage(role="user", text="Hello"),))
        engine.run_blocking(
            prepared, Sampling(temperature=0.0, top_p=1.0, top_k=0, max_tokens=WARM_UP_TOKENS)
        )
        self.engine = engine
        log.info(
            "loaded %s (%s adapter, %s, %s) and warmed up in %.1f s; eos ids %s; %s",
            self.settings.model,
            self.settings.chat_type,
            adapter.device,
            adapter.dtype,
            time.perf_counter() - started,
            sorted(eos_ids),
            f"continuous batching, up to {engine.max_batch} calls per step"
            if engine.batching
            else "one call at a time (this model cannot batch)",
        )

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()

    @grpc_errors
    async def Generate(
        self, request: llm_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[llm_pb2.GenerateResponse]:
        started = time.perf_counter()
        status = "internal"
        try:
            engine, policy = self._ready()
            parsed = parse_request(request, policy)
            async with self.limit.slot():
                with metrics.REQUESTS_IN_PROGRESS.track_inprogress():
                    # Templating, tokenising and image decoding are CPU work: off the loop.
                    prepared = await asyncio.to_thread(
                        self.adapter.prepare_exclusive, parsed.messages
                    )
                    self._check_prompt_length(prepared.prompt_tokens)
                    metrics.PROMPT_TOKENS.inc(prepared.prompt_tokens)
                    pieces: list[str] = []
                    finished: Finished | None = None
                    async with contextlib.aclosing(
                        engine.stream(prepared, parsed.sampling)
                    ) as events:
                        async for event in events:
                            if isinstance(event, TextDelta):
                                pieces.append(event.text)
                                yield llm_pb2.GenerateResponse(delta=event.text)
                            else:
                                finished = event
                    if finished is None:  # stream() always ends with Finished or raises
                        raise RuntimeError("generation ended without a result")
                    yield llm_pb2.GenerateResponse(final=self._final(finished, pieces, started))
            status = "ok"
        except ServiceError as error:
            status = error.code.name.lower()
            raise
        except asyncio.CancelledError:
            remaining = context.time_remaining()
            status = (
                "deadline_exceeded" if remaining is not None and remaining <= 0 else "cancelled"
            )
            raise
        finally:
            metrics.REQUESTS.labels(status).inc()
            metrics.REQUEST_SECONDS.observe(time.perf_counter() - started)

    def _ready(self) -> tuple[GenerationEngine, RequestPolicy]:
        if self.engine is None or self.policy is None:
            raise Unavailable("the model is still loading")
        return self.engine, self.policy

    def _check_prompt_length(self, prompt_tokens: int) -> None:
        limit = self.max_prompt_tokens
        if limit is not None and prompt_tokens > limit:
            raise InvalidArgument(
                f"prompt is {prompt_tokens} tokens, more than this server's limit of {limit}"
            )

    @staticmethod
    def _final(finished: Finished, pieces: list[str], started: float) -> llm_pb2.GenerateFinal:
        ttft = finished.first_token_at - started if finished.first_token_at is not None else 0.0
        if finished.first_token_at is not None:
            metrics.TIME_TO_FIRST_TOKEN.observe(ttft)
        if finished.completion_tokens:
            metrics.TOKENS_PER_SECOND.observe(finished.tokens_per_second)
        return llm_pb2.GenerateFinal(
            finish_reason=finished.finish_reason,
            text="".join(pieces),
            usage=llm_pb2.Usage(
                prompt_tokens=finished.prompt_tokens,
                completion_tokens=finished.completion_tokens,
                time_to_first_token_s=ttft,
                tokens_per_second=finished.tokens_per_second,
            ),
        )


async def serve(
    settings: LlmSettings,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or `stop`): NOT_SERVING until the model is loaded and warm."""
    service = LlmService(settings)
    try:
        await run_grpc_service(
            register=lambda server: llm_pb2_grpc.add_LlmServiceServicer_to_server(service, server),
            service_names=[SERVICE_NAME],
            port=settings.port,
            host=settings.host,
            load=service.load,
            metrics_port=settings.metrics_port,
            drain_seconds=settings.drain_seconds,
            ready=ready,
            stop=stop,
        )
    finally:
        service.close()
