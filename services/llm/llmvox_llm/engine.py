"""Generation on one dedicated model thread, streamed to asyncio, with continuous batching.

One thread owns the model. Text models run a continuous batch: every step it admits waiting
calls (each prefilled alone, then appended to the batch's key/value cache, left-padded to a
common length), runs one decode step for every running call at once, picks each call's next
token with that call's own sampling settings, and drops calls that finished or were cancelled.
A new call therefore waits at most for one decode step and its own prefill, never for the
others' whole answers.

Models whose state does not split per row (Qwen-VL keeps rotary offsets on the model; caches
other than plain per-layer key/value tensors, e.g. sliding-window layers) run one call at a time
through `model.generate`, exactly as before; `batching` says which mode an engine is in.

Tokens are turned into safe text on the model thread (incremental decoding, stop strings held
back) and handed to the caller's event loop; when the caller goes away (client cancel, deadline)
a threading.Event removes its row before the next step."""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Collection, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer

from llmvox_common._proto.llmvox.llm.v1 import llm_pb2

from . import metrics
from .adapters.base import ChatAdapter, PreparedPrompt
from .requests import Sampling
from .stops import IncrementalDecoder, StopStringFilter, finish_reason

log = logging.getLogger(__name__)

# Padded prompt tokens (calls × longest prompt) of one joint prefill pass; longer groups are
# split, a longer prompt goes alone. Bounds the pass's activations and attention mask.
PREFILL_TOKENS = 4096


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
Emit = Callable[[Any], None]


class _Answer:
    """One call's generated tokens turned into text: decoded incrementally, stop strings held
    back and matched, end tokens kept out of the text. Used on the model thread only."""

    def __init__(
        self,
        decode: Callable[[Sequence[int]], str],
        stops: Collection[str],
        eos_ids: Collection[int],
        emit: Emit,
    ) -> None:
        self._decoder = IncrementalDecoder(decode)
        self.filter = StopStringFilter(stops)
        self._eos_ids = eos_ids
        self._emit = emit
        self.count = 0
        self.last_token: int | None = None
        self.first_token_at: float | None = None

    def push(self, token: int) -> bool:
        """Handle one generated token; True when it ends the answer (end token, stop string)."""
        self.count += 1
        self.last_token = token
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        # An end-of-turn token ends the answer; its text (often a special token) is not part of it.
        if token in self._eos_ids:
            return True
        safe = self.filter.feed(self._decoder.push(token))
        if safe:
            self._emit(TextDelta(safe))
        return self.filter.match is not None

    def finish(self, prompt_tokens: int, started: float, eos_strings: Collection[str]) -> Finished:
        tail = self.filter.flush()
        if tail:
            self._emit(TextDelta(tail))
        return Finished(
            finish_reason=finish_reason(
                stop_match=self.filter.match,
                eos_strings=eos_strings,
                last_token=self.last_token,
                eos_ids=self._eos_ids,
            ),
            prompt_tokens=prompt_tokens,
            completion_tokens=self.count,
            first_token_at=self.first_token_at,
            generation_seconds=time.perf_counter() - started,
        )


class _TokenSink(StoppingCriteria):
    """For the one-at-a-time path: a stopping criterion that also receives every token.
    generate() calls it once per step on the model thread, so a stop string or a cancellation
    takes effect before the next step."""

    def __init__(self, answer: _Answer, cancel: threading.Event) -> None:
        self.answer = answer
        self._cancel = cancel

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        ended = self.answer.push(int(input_ids[0, -1]))
        # End tokens are also generate()'s own eos, so `ended` only matters for stop strings.
        stop = ended or self._cancel.is_set()
        done = torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
        return done  # type: ignore[return-value]  # BoolTensor is a typing-only alias


@dataclass
class _Job:
    prepared: PreparedPrompt
    sampling: Sampling
    emit: Emit
    cancel: threading.Event
    future: Future[Finished | None]
    queued_at: float = field(default_factory=time.perf_counter)
    ended: bool = False


@dataclass
class _Row:
    """A running call in the batch. `pending` is the token sampled last, not yet read by the
    model; `position` is its position (the call's real tokens so far, padding excluded)."""

    job: _Job
    answer: _Answer
    processors: LogitsProcessorList
    generator: torch.Generator | None
    ids: torch.Tensor  # (1, prompt + generated): what repetition penalties look at
    started: float
    pending: int = 0
    position: int = 0


class GenerationEngine:
    def __init__(
        self,
        adapter: ChatAdapter,
        eos_ids: set[int],
        eos_strings: set[str],
        *,
        max_batch: int = 16,
        batching: bool | None = None,
        max_positions: int | None = None,
    ) -> None:
        """`batching=None` decides from the adapter and the model's cache layout."""
        self.adapter = adapter
        self.eos_ids = eos_ids
        self.eos_strings = eos_strings
        self.max_positions = max_positions
        self.batching = batching if batching is not None else batchable(adapter)
        self.max_batch = max(1, max_batch) if self.batching else 1
        # Its own copy: the adapter's tokenizer is in use by prepare() on other threads, and a
        # fast tokenizer cannot be used by two threads at once.
        self._tokenizer = copy.deepcopy(adapter.tokenizer)
        self._condition = threading.Condition()
        self._waiting: deque[_Job] = deque()
        self._unfinished = 0  # jobs submitted whose future is not done
        self._closed = False
        # The running batch (model thread only): rows, their caches side by side (left-padded to
        # a common length) and the matching attention mask (0 over padding).
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._cache_arg = cache_argument(adapter.model) if self.batching else ""
        metrics.BATCHING_ENABLED.set(1 if self.batching else 0)
        metrics.MAX_BATCH.set(self.max_batch)
        self._thread = threading.Thread(target=self._run, name="llm-model", daemon=True)
        self._thread.start()

    @property
    def idle(self) -> bool:
        """No generation running or waiting (a cancelled call's generation included)."""
        with self._condition:
            return self._unfinished == 0

    def close(self, timeout: float = 10.0) -> None:
        """Stop the model thread: calls still running or waiting fail; waits for the step in
        progress (torch must not be torn down under a running thread at exit)."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def run_blocking(self, prepared: PreparedPrompt, sampling: Sampling) -> tuple[str, Finished]:
        """One whole generation on the model thread (warm-up, tests): the text and the end."""
        pieces: list[str] = []
        cancel = threading.Event()

        def collect(event: Event | _Failed) -> None:
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
        emit: Emit,
        cancel: threading.Event,
    ) -> Future[Finished | None]:
        future: Future[Finished | None] = Future()
        future.set_running_or_notify_cancel()
        job = _Job(prepared, sampling, emit, cancel, future)
        with self._condition:
            if self._closed:
                raise RuntimeError("the generation engine is closed")
            self._waiting.append(job)
            self._unfinished += 1
            metrics.QUEUE_DEPTH.set(len(self._waiting))
            self._condition.notify_all()
        return future

    # -- the model thread -----------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                admitted = self._next_jobs()
                if admitted is None:
                    break
                try:
                    if self.batching:
                        self._admit(admitted)
                        self._step()
                    else:
                        for job in admitted:
                            self._serial(job)
                except BaseException as error:  # a failed step fails the calls it carried
                    log.exception("generation step failed")
                    for row in self._rows:
                        self._end(row.job, error=error)
                    self._reset_batch()
        shutdown = RuntimeError("the LLM server is shutting down")
        for row in self._rows:
            self._end(row.job, error=shutdown)
        self._reset_batch()
        with self._condition:
            waiting, self._waiting = list(self._waiting), deque()
        for job in waiting:
            self._end(job, error=shutdown)

    def _next_jobs(self) -> list[_Job] | None:
        """The waiting calls that fit in the batch now (blocks while there is nothing to do);
        None once closed. Calls cancelled while they waited end here without generating."""
        with self._condition:
            while not self._closed and not self._waiting and not self._rows:
                self._condition.wait()
            if self._closed:
                return None
            # Calls cancelled while they waited leave the queue now, even with the batch full.
            gone = [job for job in self._waiting if job.cancel.is_set()]
            if gone:
                self._waiting = deque(job for job in self._waiting if not job.cancel.is_set())
            admitted: list[_Job] = []
            while self._waiting and len(self._rows) + len(admitted) < self.max_batch:
                admitted.append(self._waiting.popleft())
            metrics.QUEUE_DEPTH.set(len(self._waiting))
        for job in gone:
            self._end(job)
        now = time.perf_counter()
        for job in admitted:
            metrics.QUEUE_WAIT_SECONDS.observe(now - job.queued_at)
        return admitted

    def _end(
        self, job: _Job, finished: Finished | None = None, error: BaseException | None = None
    ) -> None:
        """Answer a call once: its Finished, its error, or nothing (cancelled)."""
        if job.ended:  # a step that failed after some of its calls had ended
            return
        job.ended = True
        # Counted out before the caller hears of the end: whoever then looks sees it idle.
        with self._condition:
            self._unfinished -= 1
        if error is not None:
            job.emit(_Failed(error))
        elif finished is not None:
            job.emit(finished)
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(finished)

    def _answer(self, job: _Job) -> _Answer:
        tokenizer = self._tokenizer
        return _Answer(
            decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
            stops=[*job.sampling.stop, *self.eos_strings],
            eos_ids=self.eos_ids,
            emit=job.emit,
        )

    # One at a time (models that cannot batch).

    def _serial(self, job: _Job) -> None:
        answer = self._answer(job)
        sink = _TokenSink(answer, job.cancel)
        if job.sampling.seed is not None:
            # Global RNG, but only this thread generates, so the seed alone decides the draws.
            torch.manual_seed(job.sampling.seed)
        self._set_running(1)
        started = time.perf_counter()
        try:
            self.adapter.model.generate(
                **job.prepared.inputs,
                generation_config=self._generation_config(job.sampling),
                stopping_criteria=StoppingCriteriaList([sink]),
            )
        except BaseException as error:
            self._end(job, error=error)
            return
        finally:
            self._set_running(0)
            # Counted here, not per answer: a cancelled call's tokens cost the same compute.
            metrics.GENERATED_TOKENS.inc(answer.count)
        if job.cancel.is_set() and answer.filter.match is None:
            self._end(job)
        else:
            self._end(job, answer.finish(job.prepared.prompt_tokens, started, self.eos_strings))

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

    # Continuous batching.

    def _admit(self, jobs: list[_Job]) -> None:
        """Prefill the new calls, pick each one's first token, and append their caches to the
        batch's. Calls admitted together are prefilled together in one left-padded pass (on
        this CPU 16 prompts of ~45 tokens took half the time of 16 passes), in groups of at
        most PREFILL_TOKENS padded tokens; a call alone is prefilled exactly as it would be
        running by itself."""
        live = []
        for job in jobs:
            if job.cancel.is_set():  # gone since it was taken from the queue: no prefill
                self._end(job)
            else:
                live.append(job)
        group: list[_Job] = []
        width = 0
        for job in live:
            length = int(job.prepared.inputs["input_ids"].shape[1])
            if group and (len(group) + 1) * max(width, length) > PREFILL_TOKENS:
                self._prefill(group)
                group, width = [], 0
            group.append(job)
            width = max(width, length)
        if group:
            self._prefill(group)

    def _prefill(self, jobs: list[_Job]) -> None:
        model = self.adapter.model
        started = time.perf_counter()
        prompts = [job.prepared.inputs["input_ids"] for job in jobs]
        lengths = [int(ids.shape[1]) for ids in prompts]
        try:
            cache = DynamicCache(config=model.config)
            if len(jobs) == 1:
                ids = prompts[0]
                mask = torch.ones_like(ids)
                output = model(
                    input_ids=ids,
                    attention_mask=mask,
                    use_cache=True,
                    logits_to_keep=1,
                    **{self._cache_arg: cache},
                )
            else:
                width = max(lengths)
                ids = torch.cat([_left_pad(p, width) for p in prompts])
                mask = torch.cat([_left_pad(torch.ones_like(p), width) for p in prompts])
                # Each row's positions start at its first real token, as when it runs alone.
                positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
                output = model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    use_cache=True,
                    logits_to_keep=1,
                    **{self._cache_arg: cache},
                )
        except BaseException as error:
            log.exception("prefill failed")
            for job in jobs:
                self._end(job, error=error)
            return
        rows = [
            _Row(
                job=job,
                answer=self._answer(job),
                processors=self._processors(job.sampling),
                generator=self._generator(job.sampling),
                ids=prompt,
                started=started,
                position=length,
            )
            for job, prompt, length in zip(jobs, prompts, lengths, strict=True)
        ]
        logits = output.logits[:, -1, :]
        # The cache was filled in place by the forward; rows done after one token (an end
        # token, max_tokens 1) join and leave at once.
        self._append(cache, mask)
        self._rows.extend(rows)
        first = len(self._rows) - len(rows)
        done = [False] * first + [
            self._choose(row, logits[i : i + 1]) for i, row in enumerate(rows)
        ]
        self._drop(done)
        self._set_running(len(self._rows))

    def _step(self) -> None:
        """One decode step for every running call."""
        # A call cancelled since the last step leaves before this one: its slot is free now.
        cancelled = [row.job.cancel.is_set() for row in self._rows]
        for row, gone in zip(self._rows, cancelled, strict=True):
            if gone:
                self._end(row.job)
        self._drop(cancelled)
        if not self._rows or self._cache is None or self._mask is None:
            return
        device = self._mask.device
        tokens = torch.tensor([[row.pending] for row in self._rows], device=device)
        positions = torch.tensor([[row.position] for row in self._rows], device=device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self._rows), 1))], dim=1)
        output = self.adapter.model(
            input_ids=tokens,
            attention_mask=self._mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_arg: self._cache},
        )
        logits = output.logits[:, -1, :]
        done = [self._choose(row, logits[i : i + 1]) for i, row in enumerate(self._rows)]
        self._drop(done)

    def _choose(self, row: _Row, logits: torch.Tensor) -> bool:
        """Pick the row's next token, hand it to its answer; True when the call has ended (and
        then it has been answered)."""
        job = row.job
        if job.cancel.is_set():
            # Cancelled during the step: its token is computed but nobody wants it.
            metrics.GENERATED_TOKENS.inc()
            self._end(job)
            return True
        scores = logits.float()
        if row.processors:
            scores = row.processors(row.ids, scores)
        if job.sampling.greedy:
            token = int(scores.argmax(dim=-1))
        else:
            probs = torch.softmax(scores, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=row.generator))
        metrics.GENERATED_TOKENS.inc()
        if row.processors:  # only penalties read the ids: no copy per token otherwise
            row.ids = torch.cat([row.ids, row.ids.new_tensor([[token]])], dim=1)
        ended = row.answer.push(token)
        row.pending = token
        row.position += 1
        out_of_room = self.max_positions is not None and row.position >= self.max_positions
        if ended or row.answer.count >= job.sampling.max_tokens or out_of_room:
            prompt_tokens = job.prepared.prompt_tokens
            self._end(job, row.answer.finish(prompt_tokens, row.started, self.eos_strings))
            return True
        return False

    def _processors(self, sampling: Sampling) -> LogitsProcessorList:
        """The call's logit processors, as generate() would build them for these settings: the
        model's repetition penalty, then temperature, top-k, top-p when sampling."""
        processors = LogitsProcessorList()
        penalty = getattr(self.adapter.model.generation_config, "repetition_penalty", None)
        if penalty is not None and penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(penalty))
        if not sampling.greedy:
            if sampling.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_k > 0:
                processors.append(TopKLogitsWarper(sampling.top_k))
            if sampling.top_p < 1.0:
                processors.append(TopPLogitsWarper(sampling.top_p))
        return processors

    def _generator(self, sampling: Sampling) -> torch.Generator | None:
        """A seeded call draws from its own generator, so its draws do not depend on which
        other calls share the batch; unseeded calls share the global one."""
        if sampling.greedy or sampling.seed is None:
            return None
        generator = torch.Generator(device=self.adapter.model.device)
        generator.manual_seed(sampling.seed)
        return generator

    def _append(self, cache: DynamicCache, mask: torch.Tensor) -> None:
        """Add prefilled calls' cache rows to the batch, left-padding the shorter side so every
        row ends at the same column (the next token goes in the same place for all)."""
        if self._cache is None or self._mask is None:
            self._cache, self._mask = cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])
        for layer, new in zip(self._cache.layers, cache.layers, strict=True):
            layer.keys = torch.cat([_left_pad(layer.keys, width), _left_pad(new.keys, width)])
            layer.values = torch.cat([_left_pad(layer.values, width), _left_pad(new.values, width)])
        self._mask = torch.cat([_left_pad(self._mask, width), _left_pad(mask, width)])

    def _drop(self, done: list[bool]) -> None:
        """Remove ended rows, then the leading columns that are padding in every row left."""
        if not any(done) or self._cache is None or self._mask is None:
            return
        keep = [index for index, gone in enumerate(done) if not gone]
        self._rows = [self._rows[index] for index in keep]
        self._set_running(len(self._rows))
        if not keep:
            self._reset_batch()
            return
        index = torch.tensor(keep, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        start = int((mask.sum(dim=0) > 0).nonzero()[0])  # first column some row still uses
        self._mask = mask[:, start:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]

    def _reset_batch(self) -> None:
        self._rows, self._cache, self._mask = [], None, None
        self._set_running(0)

    @staticmethod
    def _set_running(count: int) -> None:
        metrics.BATCH_SIZE.set(count)
        metrics.GENERATIONS_ACTIVE.set(count)


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros before the sequence axis (the last of a mask, the third of a key/value tensor)."""
    axis = 1 if tensor.dim() == 2 else 2
    missing = width - tensor.shape[axis]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)


def batchable(adapter: ChatAdapter) -> bool:
    """Whether the continuous batch can carry this model: a text adapter, and a cache made of
    plain per-layer key/value tensors (no sliding windows or other per-layer state), checked
    with a one-token forward pass."""
    if not getattr(adapter, "supports_batching", False):
        return False
    model = adapter.model
    cache = DynamicCache(config=model.config)
    probe = torch.zeros((1, 1), dtype=torch.long, device=model.device)
    try:
        with torch.inference_mode():
            model(
                input_ids=probe, use_cache=True, logits_to_keep=1, **{cache_argument(model): cache}
            )
    except (TypeError, ValueError) as error:  # a forward() without these arguments
        log.warning("continuous batching off: the model's forward does not fit (%s)", error)
        return False
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)  # type: ignore[arg-type]


def cache_argument(model: Any) -> str:
    """transformers 5 is renaming forward()'s `past_key_values` to `cache`: whichever this
    model's forward takes (the old name warns where both are accepted)."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
