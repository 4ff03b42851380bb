"""The generation engine on a tiny random-weight Llama with a word-level tokenizer built in the
test (no files, no server), on both paths (continuous batch, one-at-a-time generate()):
cancellation stops generation on the model thread, stop strings and end tokens end it early,
max_tokens ends it on length. tests/unit/test_llm_batching.py covers calls sharing the batch."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from llmvox_common._proto.llmvox.llm.v1 import llm_pb2
from llmvox_llm.adapters.base import PreparedPrompt
from llmvox_llm.engine import Finished, GenerationEngine, TextDelta

from .tiny_llm import greedy, random_llama, word_tokenizer

pytestmark = pytest.mark.unit

VOCAB = 64
PROMPT = ["w5", "w9", "w17"]
PROMPT_TOKENS = len(PROMPT)


@dataclass
class TinyAdapter:
    """What the engine uses of an adapter: the model and the tokenizer that decodes."""

    model: Any
    tokenizer: Any


@pytest.fixture(scope="module")
def adapter() -> TinyAdapter:
    tokenizer = word_tokenizer(VOCAB)
    model = random_llama(
        VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32768,
    )
    return TinyAdapter(model, tokenizer)


def prompt(tokenizer: Any) -> PreparedPrompt:
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(PROMPT)])
    return PreparedPrompt(
        inputs={"input_ids": ids, "attention_mask": torch.ones_like(ids)},
        prompt_tokens=PROMPT_TOKENS,
    )


@pytest.fixture(params=["batched", "serial"])
def mode(request: pytest.FixtureRequest) -> str:
    """Every test runs on both paths: the continuous batch and one-at-a-time generate()."""
    return str(request.param)


def engine_for(
    adapter: TinyAdapter, mode: str, eos_ids: set[int] | None = None
) -> GenerationEngine:
    # No end tokens by default: a random model would otherwise stop whenever it likes.
    return GenerationEngine(
        adapter,  # type: ignore[arg-type]
        eos_ids or set(),
        set(),
        batching=mode == "batched",
    )


# Bounds for waits that only a broken engine reaches; a passing test never waits this long.
TIMEOUT_S = 60


@dataclass
class Hold:
    """Where generation is held on the model thread: at the start of the model's forward pass
    number `at`, i.e. tokens 1..at-1 are generated and handled, token `at` is not computed yet.
    `reached` is set once the model thread waits there, `release` lets it go on; `forwards`
    counts the forward passes. With it a test knows exactly which token the engine handles
    first after a cancellation, instead of racing the model thread."""

    at: int
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    forwards: int = 0


@contextlib.contextmanager
def hold_generation(adapter: TinyAdapter, at: int) -> Iterator[Hold]:
    """A forward pre-hook on the model (both paths call the model once per token)."""
    hold = Hold(at)

    def before_forward(module: Any, args: Any, kwargs: Any) -> None:
        hold.forwards += 1
        if hold.forwards == hold.at:
            hold.reached.set()
            hold.release.wait(TIMEOUT_S)

    handle = adapter.model.register_forward_pre_hook(before_forward, with_kwargs=True)
    try:
        yield hold
    finally:
        hold.release.set()
        handle.remove()


def record_jobs(
    engine: GenerationEngine, on_submit: Callable[[int], None] = lambda _: None
) -> list[Future[Any]]:
    """The futures of the engine's model-thread jobs, in order: waiting on one waits for that
    call's generation to end (cancelled calls end with None). `on_submit(n)` runs on the event
    loop as the n-th call is queued."""
    jobs: list[Future[Any]] = []
    submit = engine._submit

    def recording_submit(*args: Any) -> Future[Any]:
        jobs.append(submit(*args))
        on_submit(len(jobs))
        return jobs[-1]

    engine._submit = recording_submit  # type: ignore[method-assign]
    return jobs


def test_max_tokens_ends_on_length(adapter: TinyAdapter, mode: str) -> None:
    engine = engine_for(adapter, mode)
    try:
        text, finished = engine.run_blocking(prompt(adapter.tokenizer), greedy(7))
    finally:
        engine.close()
    assert finished.finish_reason == llm_pb2.FINISH_REASON_LENGTH
    assert finished.completion_tokens == 7
    assert finished.prompt_tokens == 3
    assert len(text.split()) == 7


def test_an_end_token_ends_with_eos_and_is_not_in_the_text(adapter: TinyAdapter, mode: str) -> None:
    engine = engine_for(adapter, mode)
    first_word = engine.run_blocking(prompt(adapter.tokenizer), greedy(1))[0].split()[0]
    engine.close()
    eos = adapter.tokenizer.convert_tokens_to_ids(first_word)
    engine = engine_for(adapter, mode, eos_ids={eos})
    try:
        text, finished = engine.run_blocking(prompt(adapter.tokenizer), greedy(10))
    finally:
        engine.close()
    assert finished.finish_reason == llm_pb2.FINISH_REASON_EOS
    assert finished.completion_tokens == 1
    assert text == ""


def test_a_stop_string_halts_generation_at_once(adapter: TinyAdapter, mode: str) -> None:
    engine = engine_for(adapter, mode)
    try:
        full, _ = engine.run_blocking(prompt(adapter.tokenizer), greedy(12))
        words = full.split()
        stop = f"{words[2]} {words[3]}"
        text, finished = engine.run_blocking(prompt(adapter.tokenizer), greedy(12, (stop,)))
    finally:
        engine.close()
    assert finished.finish_reason == llm_pb2.FINISH_REASON_STOP_STRING
    assert text == full[: full.index(stop)]
    # Generation stopped on the token that completed the stop string, not at max_tokens.
    assert finished.completion_tokens == len(full[: full.index(stop) + len(stop)].split())


def test_cancelling_the_stream_stops_generation_on_the_model_thread(
    adapter: TinyAdapter, mode: str
) -> None:
    engine = engine_for(adapter, mode)
    jobs = record_jobs(engine)

    async def scenario(hold: Hold) -> tuple[list[str], Any]:
        received: list[str] = []
        got_two = asyncio.Event()

        async def consume() -> None:
            async for event in engine.stream(prompt(adapter.tokenizer), greedy(50_000)):
                assert isinstance(event, TextDelta)
                received.append(event.text)
                if len(received) == 2:
                    got_two.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(got_two.wait(), timeout=TIMEOUT_S)
        assert await asyncio.to_thread(hold.reached.wait, TIMEOUT_S)
        assert not engine.idle
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        hold.release.set()
        outcome = await asyncio.wait_for(asyncio.wrap_future(jobs[0]), timeout=TIMEOUT_S)
        return received, outcome

    # Two tokens reach the client, the 3rd is held before it is computed until the stream is
    # cancelled: it is the first the engine handles after the cancel, so generation must end
    # right there, far from max_tokens.
    try:
        with hold_generation(adapter, at=3) as hold:
            received, outcome = asyncio.run(scenario(hold))
    finally:
        engine.close()
    assert len(received) == 2
    assert outcome is None  # the job reports a cancelled call, not a Finished
    assert hold.forwards == 3
    assert engine.idle


def test_a_call_cancelled_while_waiting_never_generates(adapter: TinyAdapter, mode: str) -> None:
    engine = engine_for(adapter, mode)

    async def scenario(hold: Hold) -> list[Any]:
        queued_submitted = asyncio.Event()
        jobs = record_jobs(engine, lambda n: queued_submitted.set() if n == 2 else None)

        async def busy() -> None:
            async for _ in engine.stream(prompt(adapter.tokenizer), greedy(50_000)):
                pass

        async def waiting() -> None:
            async for _ in engine.stream(prompt(adapter.tokenizer), greedy(5)):
                raise AssertionError("the queued call must not generate")

        running = asyncio.create_task(busy())
        assert await asyncio.to_thread(hold.reached.wait, TIMEOUT_S)
        queued = asyncio.create_task(waiting())
        await asyncio.wait_for(queued_submitted.wait(), timeout=TIMEOUT_S)
        queued.cancel()
        running.cancel()
        await asyncio.gather(running, queued, return_exceptions=True)
        hold.release.set()
        ended = asyncio.gather(*(asyncio.wrap_future(job) for job in jobs))
        return await asyncio.wait_for(ended, timeout=TIMEOUT_S)

    # The running call holds the model thread before its 1st token until both calls are
    # cancelled, so the queued one is cancelled while it waits, never after it started.
    try:
        with hold_generation(adapter, at=1) as hold:
            outcomes = asyncio.run(scenario(hold))
    finally:
        engine.close()
    assert outcomes == [None, None]  # both calls ended as cancelled
    assert hold.forwards == 1  # one forward pass, the running call's, then the cancel
    assert engine.idle


def test_stream_ends_with_one_finished_after_the_deltas(adapter: TinyAdapter, mode: str) -> None:
    engine = engine_for(adapter, mode)

    async def scenario() -> list[TextDelta | Finished]:
        return [event async for event in engine.stream(prompt(adapter.tokenizer), greedy(4))]

    try:
        events = asyncio.run(scenario())
    finally:
        engine.close()
    assert isinstance(events[-1], Finished)
    assert all(isinstance(e, TextDelta) for e in events[:-1])
    assert events[-1].completion_tokens == 4
    assert events[-1].first_token_at is not None
