"""Continuous batching in the generation engine, on a tiny model with RANDOM WEIGHTS (a 2-layer
Llama, hidden size 64, built in the test; its text means nothing) and a word-level tokenizer:
calls of different prompt lengths share decode steps and still give exactly what they give
alone, each keeps its own sampling settings, stop strings and length, a late call starts before
an earlier long one ends, the batch never exceeds max_batch, and a cancelled call leaves the
batch at the next step."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from llmvox_common._proto.llmvox.llm.v1 import llm_pb2
from llmvox_llm.adapters.base import PreparedPrompt
from llmvox_llm.engine import Finished, GenerationEngine, TextDelta
from llmvox_llm.requests import Sampling

from .tiny_llm import greedy, random_llama, word_tokenizer

pytestmark = pytest.mark.unit

VOCAB = 96
# Bounds for waits that only a broken engine reaches; a passing test never waits this long.
TIMEOUT_S = 60


@dataclass
class TinyAdapter:
    model: Any
    tokenizer: Any
    supports_batching: bool = True


@pytest.fixture(scope="module")
def adapter() -> TinyAdapter:
    tokenizer = word_tokenizer(VOCAB)
    model = random_llama(
        VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    )
    # Random weights give near-flat logits; scaled up, the greedy choice is clear-cut, so
    # "identical alone and batched" tests the batching, not float rounding between near-ties.
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return TinyAdapter(model, tokenizer)


def prompt(adapter: TinyAdapter, length: int, offset: int = 0) -> PreparedPrompt:
    ids = torch.tensor([[2 + (offset + 7 * i) % (VOCAB - 2) for i in range(length)]])
    return PreparedPrompt(
        inputs={"input_ids": ids, "attention_mask": torch.ones_like(ids)}, prompt_tokens=length
    )


@contextlib.contextmanager
def engine(adapter: TinyAdapter, max_batch: int = 8) -> Iterator[GenerationEngine]:
    running = GenerationEngine(adapter, set(), set(), max_batch=max_batch)  # type: ignore[arg-type]
    assert running.batching
    try:
        yield running
    finally:
        running.close()


@dataclass
class Outcome:
    text: str
    finished: Finished


@dataclass
class Log:
    """Every event of every call, in the order the event loop received them."""

    events: list[tuple[str, TextDelta | Finished]] = field(default_factory=list)
    waits: dict[tuple[str, int], asyncio.Event] = field(default_factory=dict)

    def add(self, name: str, event: TextDelta | Finished) -> None:
        self.events.append((name, event))
        count = sum(1 for who, _ in self.events if who == name)
        if (name, count) in self.waits:
            self.waits[name, count].set()

    async def reached(self, name: str, count: int) -> None:
        """Until `name` has received `count` events."""
        if sum(1 for who, _ in self.events if who == name) < count:
            await self.waits.setdefault((name, count), asyncio.Event()).wait()

    def index(self, name: str, kind: type) -> int:
        return next(
            i for i, (who, ev) in enumerate(self.events) if who == name and isinstance(ev, kind)
        )


async def consume(
    running: GenerationEngine, name: str, prepared: PreparedPrompt, sampling: Sampling, log: Log
) -> Outcome:
    pieces: list[str] = []
    async for event in running.stream(prepared, sampling):
        log.add(name, event)
        if isinstance(event, TextDelta):
            pieces.append(event.text)
        else:
            return Outcome("".join(pieces), event)
    raise AssertionError("no Finished")


@contextlib.contextmanager
def batch_sizes(adapter: TinyAdapter) -> Iterator[list[int]]:
    """The batch size of every forward pass of the model (prefills are 1)."""
    sizes: list[int] = []

    def before_forward(module: Any, args: Any, kwargs: Any) -> None:
        sizes.append(int(kwargs["input_ids"].shape[0]))

    handle = adapter.model.register_forward_pre_hook(before_forward, with_kwargs=True)
    try:
        yield sizes
    finally:
        handle.remove()


def run_together(
    running: GenerationEngine, calls: list[tuple[PreparedPrompt, Sampling]]
) -> list[Outcome]:
    async def scenario() -> list[Outcome]:
        log = Log()
        return await asyncio.gather(
            *(consume(running, str(i), p, s, log) for i, (p, s) in enumerate(calls))
        )

    return asyncio.run(asyncio.wait_for(scenario(), TIMEOUT_S))


def test_greedy_answers_are_the_same_alone_and_batched(adapter: TinyAdapter) -> None:
    calls = [(prompt(adapter, n, offset=n), greedy(12 + n)) for n in (3, 11, 6, 20)]
    with engine(adapter) as running:
        alone = [running.run_blocking(p, s) for p, s in calls]
        with batch_sizes(adapter) as sizes:
            together = run_together(running, calls)
    assert max(sizes) == 4  # they did share decode steps
    for (text, finished), outcome in zip(alone, together, strict=True):
        assert outcome.text == text
        assert outcome.finished.completion_tokens == finished.completion_tokens
        assert outcome.finished.finish_reason == llm_pb2.FINISH_REASON_LENGTH


def test_each_call_keeps_its_own_settings_in_the_batch(adapter: TinyAdapter) -> None:
    base = prompt(adapter, 5)
    with engine(adapter) as running:
        full, _ = running.run_blocking(base, greedy(16))
        words = full.split()
        stop = f"{words[4]} {words[5]}"
        top_k_one = Sampling(temperature=1.3, top_p=1.0, top_k=1, max_tokens=16, seed=7)
        outcomes = run_together(
            running,
            [
                (base, greedy(16)),
                (base, greedy(3)),  # its own max_tokens
                (base, greedy(16, (stop,))),  # its own stop string
                (base, top_k_one),  # sampling from the top token only = greedy
            ],
        )
    assert outcomes[0].text == full
    assert outcomes[1].text.split() == words[:3]
    assert outcomes[1].finished.finish_reason == llm_pb2.FINISH_REASON_LENGTH
    assert outcomes[2].text == full[: full.index(stop)]
    assert outcomes[2].finished.finish_reason == llm_pb2.FINISH_REASON_STOP_STRING
    # Stopped on the token that completed the stop string.
    assert outcomes[2].finished.completion_tokens == len(
        full[: full.index(stop) + len(stop)].split()
    )
    assert outcomes[3].text == full


def test_seeded_sampling_does_not_depend_on_the_batch(adapter: TinyAdapter) -> None:
    seeded = Sampling(temperature=1.0, top_p=0.95, top_k=0, max_tokens=10, seed=1234)
    with engine(adapter) as running:
        alone, _ = running.run_blocking(prompt(adapter, 4), seeded)
        outcomes = run_together(
            running,
            [
                (prompt(adapter, 9, offset=3), greedy(10)),
                (prompt(adapter, 4), seeded),
                (prompt(adapter, 2, offset=5), Sampling(1.0, 1.0, 0, 10)),
            ],
        )
    assert outcomes[1].text == alone


def test_a_late_call_starts_and_ends_before_an_earlier_long_one(adapter: TinyAdapter) -> None:
    async def scenario(running: GenerationEngine) -> Log:
        log = Log()
        long_call = asyncio.create_task(
            consume(running, "long", prompt(adapter, 8), greedy(300), log)
        )
        await log.reached("long", 1)  # the long call is generating
        await consume(running, "late", prompt(adapter, 3, offset=9), greedy(5), log)
        await long_call
        return log

    with engine(adapter) as running:
        log = asyncio.run(asyncio.wait_for(scenario(running), TIMEOUT_S))
    assert log.index("long", TextDelta) < log.index("late", TextDelta)
    assert log.index("late", Finished) < log.index("long", Finished)
    long_end = log.events[log.index("long", Finished)][1]
    assert isinstance(long_end, Finished)
    assert long_end.completion_tokens == 300


def test_the_batch_never_exceeds_max_batch(adapter: TinyAdapter) -> None:
    calls = [(prompt(adapter, 3 + i, offset=i), greedy(6 + i)) for i in range(5)]
    with engine(adapter, max_batch=2) as running, batch_sizes(adapter) as sizes:
        outcomes = run_together(running, calls)
    assert max(sizes) == 2
    assert [o.finished.completion_tokens for o in outcomes] == [6, 7, 8, 9, 10]


def test_a_cancelled_call_leaves_the_batch_at_the_next_step(adapter: TinyAdapter) -> None:
    sizes: list[int] = []
    held: list[int] = []
    gate = threading.Event()  # set: the model thread waits at the next forward pass
    reached, release = threading.Event(), threading.Event()

    def before_forward(module: Any, args: Any, kwargs: Any) -> None:
        sizes.append(int(kwargs["input_ids"].shape[0]))
        if gate.is_set():
            gate.clear()
            reached.set()
            release.wait(TIMEOUT_S)

    async def scenario(running: GenerationEngine) -> None:
        log = Log()
        keep = asyncio.create_task(consume(running, "keep", prompt(adapter, 4), greedy(60), log))
        gone = asyncio.create_task(consume(running, "gone", prompt(adapter, 6), greedy(60), log))
        await log.reached("gone", 2)
        gate.set()
        assert await asyncio.to_thread(reached.wait, TIMEOUT_S)
        held.append(sizes[-1])
        sizes.clear()  # the steps after the held one
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        release.set()
        await keep

    handle = adapter.model.register_forward_pre_hook(before_forward, with_kwargs=True)
    try:
        with engine(adapter) as running:
            asyncio.run(asyncio.wait_for(scenario(running), TIMEOUT_S))
            assert running.idle
    finally:
        release.set()
        handle.remove()
    # The step held when the cancel came still carries both; every later one only the other.
    assert held == [2]
    assert set(sizes) == {1}


def test_a_call_ending_at_its_first_token_never_joins_the_batch(adapter: TinyAdapter) -> None:
    with engine(adapter) as running, batch_sizes(adapter) as sizes:
        text, finished = running.run_blocking(prompt(adapter, 5), greedy(1))
        assert running.idle
    assert sizes == [1]  # the prefill only
    assert finished.completion_tokens == 1
    assert len(text.split()) == 1


def test_only_text_models_with_plain_caches_batch(adapter: TinyAdapter) -> None:
    from transformers import MistralConfig, MistralForCausalLM

    from llmvox_llm.engine import batchable

    assert batchable(adapter)  # type: ignore[arg-type]
    # Media adapters say they cannot (per-call state on the model, media features).
    assert not batchable(TinyAdapter(adapter.model, adapter.tokenizer, supports_batching=False))  # type: ignore[arg-type]
    # A sliding-window cache keeps only the window: rows cannot be padded and cut like the rest.
    windowed = MistralForCausalLM(
        MistralConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            sliding_window=8,
        )
    ).eval()
    assert not batchable(TinyAdapter(windowed, adapter.tokenizer))  # type: ignore[arg-type]
    serial = GenerationEngine(
        TinyAdapter(windowed, adapter.tokenizer),  # type: ignore[arg-type]
        set(),
        set(),
        max_batch=8,
    )
    try:
        assert not serial.batching
        assert serial.max_batch == 1
    finally:
        serial.close()


def test_calls_admitted_together_are_prefilled_together(adapter: TinyAdapter) -> None:
    calls = [(prompt(adapter, n, offset=n), greedy(10)) for n in (3, 11, 6, 20)]
    shapes: list[tuple[int, int]] = []

    def before_forward(module: Any, args: Any, kwargs: Any) -> None:
        shapes.append(tuple(kwargs["input_ids"].shape))

    with engine(adapter) as running:
        alone = [running.run_blocking(p, s)[0] for p, s in calls]
        texts: list[list[str]] = [[] for _ in calls]
        handle = adapter.model.register_forward_pre_hook(before_forward, with_kwargs=True)
        try:
            # Holding the engine's lock, the model thread cannot take the first call before
            # the last is queued: all four are admitted in the same step.
            with running._condition:
                futures = [
                    running._submit(
                        p,
                        s,
                        lambda e, out=out: out.append(e.text) if isinstance(e, TextDelta) else None,
                        threading.Event(),
                    )
                    for (p, s), out in zip(calls, texts, strict=True)
                ]
            for future in futures:
                future.result(TIMEOUT_S)
        finally:
            handle.remove()
    assert shapes[0] == (4, 20)  # one padded pass over the four prompts
    assert ["".join(t) for t in texts] == alone
