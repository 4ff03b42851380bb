"""Generation on one dedicated model thread, streamed to asyncio.

Calls run one at a time on the model thread (the model's weights and, for Qwen-VL, its rotary
state are shared); callers wait their turn. Each token is turned into safe text on that thread
and handed to the caller's event loop; when the caller goes away (client cancel, deadline), a
threading.Event stops `generate` at its next step."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import AsyncGenerator, Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from llmvox_common._proto.llmvox.llm.v1 import llm_pb2

from . import metrics
from .adapters.base import ChatAdapter, PreparedPrompt
from .requests import Sampling
from .stops import IncrementalDecoder, StopStringFilter, finish_reason


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    finish_reason: llm_pb2.FinishReason.ValueType
    prompt_tokens: int
    completion_tokens: int
    first_token_at: float | None  # time.perf_counter() of the first generated token
    generation_seconds: float

    @property
    def tokens_per_second(self) -> float:
        if self.generation_seconds <= 0:
            return 0.0
        return self.completion_tokens / self.generation_seconds


@dataclass(frozen=True)
class _Failed:
    error: BaseException


Event = TextDelta | Finished


class _TokenSink(StoppingCriteria):
    """A stopping criterion that also receives every token: generate() calls it once per step
    with the sequence so far, on the model thread, so tokens are decoded, stop strings matched
    and cancellation checked right there, and a stop takes effect before the next step."""

    def __init__(
        self,
        decode: Callable[[Sequence[int]], str],
        stops: Collection[str],
        eos_ids: Collection[int],
        emit: Callable[[Event], None],
        cancel: threading.Event,
    ) -> None:
        self._decoder = IncrementalDecoder(decode)
        self.filter = StopStringFilter(stops)
        self._eos_ids = eos_ids
        self._emit = emit
        self._cancel = cancel
        self.count = 0
        self.last_token: int | None = None
        self.first_token_at: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        token = int(input_ids[0, -1])
        self.count += 1
        self.last_token = token
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        # An end-of-turn token ends the answer; its text (often a special token) is not part of it.
        if token not in self._eos_ids:
            safe = self.filter.feed(self._decoder.push(token))
            if safe:
                self._emit(TextDelta(safe))
        stop = self._cancel.is_set() or self.filter.match is not None
        done = torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
        return done  # type: ignore[return-value]  # BoolTensor is a typing-only alias


class GenerationEngine:
    def __init__(self, adapter: ChatAdapter, eos_ids: set[int], eos_strings: set[str]) -> None:
        self.adapter = adapter
        self.eos_ids = eos_ids
        self.eos_strings = eos_strings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-model")
        self._pending: set[Future[Any]] = set()
        self._pending_lock = threading.Lock()
        # Its own copy: the adapter's tokenizer is in use by prepare() on other threads, and a
        # fast tokenizer cannot be used by two threads at once.
        self._tokenizer = copy.deepcopy(adapter.tokenizer)

    @property
    def idle(self) -> bool:
        """No generation running or waiting (a cancelled call's generation included)."""
        with self._pending_lock:
            return not self._pending

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def run_blocking(self, prepared: PreparedPrompt, sampling: Sampling) -> tuple[str, Finished]:
        """One whole generation on the model thread (warm-up, tests): the text and the end."""
        pieces: list[str] = []
        cancel = threading.Event()

        def collect(event: Event) -> None:
            if isinstance(event, TextDelta):
                pieces.append(event.text)

        finished = self._submit(prepared, sampling, collect, cancel).result()
        if finished is None:  # only a cancelled call has no result, and nobody cancels this one
            raise RuntimeError("generation was cancelled")
        return "".join(pieces), finished

    async def stream(
        self, prepared: PreparedPrompt, sampling: Sampling
    ) -> AsyncGenerator[Event, None]:
        """Text deltas, then one Finished. Leaving early (cancellation included) stops the
        generation; use it under `contextlib.aclosing` so that happens at once."""
        loop = asyncio.get_running_loop()
        # Unbounded, yet bounded in effect: at most max_tokens deltas and one end per call.
        events: asyncio.Queue[Event | _Failed] = asyncio.Queue()
        cancel = threading.Event()

        def emit(event: Event | _Failed) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancel.set()

        self._submit(prepared, sampling, emit, cancel)
        try:
            while True:
                event = await events.get()
                if isinstance(event, _Failed):
                    raise event.error
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            cancel.set()

    def _submit(
        self,
        prepared: PreparedPrompt,
        sampling: Sampling,
        emit: Callable[[Any], None],
        cancel: threading.Event,
    ) -> Future[Finished | None]:
        def job() -> Finished | None:
            try:
                finished = self._generate(prepared, sampling, emit, cancel)
            except BaseException as error:
                emit(_Failed(error))
                raise
            if finished is not None:
                emit(finished)
            return finished

        future = self._executor.submit(job)
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future[Any]) -> None:
        with self._pending_lock:
            self._pending.discard(future)

    def _generate(
        self,
        prepared: PreparedPrompt,
        sampling: Sampling,
        emit: Callable[[Event], None],
        cancel: threading.Event,
    ) -> Finished | None:
        if cancel.is_set():  # the caller left while this call waited for the model thread
            return None
        tokenizer = self._tokenizer
        sink = _TokenSink(
            decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
            stops=[*sampling.stop, *self.eos_strings],
            eos_ids=self.eos_ids,
            emit=emit,
            cancel=cancel,
        )
        if sampling.seed is not None:
            # Global RNG, but only this thread generates, so the seed alone decides the draws.
            torch.manual_seed(sampling.seed)
        metrics.GENERATIONS_ACTIVE.inc()
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                self.adapter.model.generate(
                    **prepared.inputs,
                    generation_config=self._generation_config(sampling),
                    stopping_criteria=StoppingCriteriaList([sink]),
                )
        finally:
            metrics.GENERATIONS_ACTIVE.dec()
            # Counted here, not per answer: a cancelled call's tokens cost the same compute.
            metrics.GENERATED_TOKENS.inc(sink.count)
        if cancel.is_set() and sink.filter.match is None:
            return None
        tail = sink.filter.flush()
        if tail:
            emit(TextDelta(tail))
        return Finished(
            finish_reason=finish_reason(
                stop_match=sink.filter.match,
                eos_strings=self.eos_strings,
                last_token=sink.last_token,
                eos_ids=self.eos_ids,
            ),
            prompt_tokens=prepared.prompt_tokens,
            completion_tokens=sink.count,
            first_token_at=sink.first_token_at,
            generation_seconds=time.perf_counter() - started,
        )

    def _generation_config(self, sampling: Sampling) -> GenerationConfig:
        """The model's own generation config (repetition penalty and the like) with this call's
        length, sampling and end tokens."""
        config: GenerationConfig = copy.deepcopy(self.adapter.model.generation_config)
        eos = sorted(self.eos_ids)
        pad = self._tokenizer.pad_token_id
        config.max_new_tokens = sampling.max_tokens
        config.eos_token_id = eos
        config.pad_token_id = pad if pad is not None else (eos[0] if eos else None)
        config.num_beams = 1
        config.num_return_sequences = 1
        config.do_sample = not sampling.greedy
        if sampling.greedy:
            # Unset, so greedy decoding does not warn about sampling values it ignores.
            config.temperature = config.top_p = config.top_k = None
        else:
            config.temperature = sampling.temperature
            config.top_p = sampling.top_p
            config.top_k = sampling.top_k
        return config
