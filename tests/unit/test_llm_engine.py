"""The generation engine on a tiny random-weight Llama with a word-level tokenizer built in the
test (no files, no server): cancellation stops generation on the model thread, stop strings and
end tokens end it early, max_tokens ends it on length."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from llmvox_common._proto.llmvox.llm.v1 import llm_pb2
from llmvox_llm.adapters.base import PreparedPrompt
from llmvox_llm.engine import Finished, GenerationEngine, TextDelta
from llmvox_llm.requests import Sampling

pytestmark = pytest.mark.unit

VOCAB = 64


@dataclass
class TinyAdapter:
    """What the engine uses of an adapter: the model and the tokenizer that decodes."""

    model: Any
    tokenizer: Any


@pytest.fixture(scope="module")
def adapter() -> TinyAdapter:
    words = {"[UNK]": 0, "<eos>": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    backend = Tokenizer(WordLevel(words, unk_token="[UNK]"))
    backend.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token="<eos>", pad_token="<eos>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        bos_token_id=None,
        eos_token_id=1,
        pad_token_id=1,
    )
    return TinyAdapter(LlamaForCausalLM(config).eval(), tokenizer)


def prompt(tokenizer: Any) -> PreparedPrompt:
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(["w5", "w9", "w17"])])
    return PreparedPrompt(
        inputs={"input_ids": ids, "attention_mask": torch.ones_like(ids)}, prompt_tokens=3
    )


def greedy(max_tokens: int, stop: tuple[str, ...] = ()) -> Sampling:
    return Sampling(temperature=0.0, top_p=1.0, top_k=0, max_tokens=max_tokens, stop=stop)


def engine_for(adapter: TinyAdapter, eos_ids: set[int] | None = None) -> GenerationEngine:
    # No end tokens by default: a random model would otherwise stop whenever it likes.
    return GenerationEngine(adapter, eos_ids or set(), set())  # type: ignore[arg-type]


def wait_idle(engine: GenerationEngine, timeout: float) -> float:
    started = time.monotonic()
    while not engine.idle:
        assert time.monotonic() - started < timeout, "generation still running"
        time.sleep(0.005)
    return time.monotonic() - started


def test_max_tokens_ends_on_length(adapter: TinyAdapter) -> None:
    engine = engine_for(adapter)
    try:
        text, finished = engine.run_blocking(prompt(adapter.tokenizer), greedy(7))
    finally:
        engine.close()
    assert finished.finish_reason == llm_pb2.FINISH_REASON_LENGTH
    assert finished.completion_tokens == 7
    assert finished.prompt_tokens == 3
    assert len(text.split()) == 7


def test_an_end_token_ends_with_eos_and_is_not_in_the_text(adapter: TinyAdapter) -> None:
    engine = engine_for(adapter)
    first_word = engine.run_blocking(prompt(adapter.tokenizer), greedy(1))[0].split()[0]
    engine.close()
    eos = adapter.tokenizer.convert_tokens_to_ids(first_word)
    engine = engine_for(adapter, eos_ids={eos})
    try:
        text, finished = engine.run_blocking(prompt(adapter.tokenizer), greedy(10))
    finally:
        engine.close()
    assert finished.finish_reason == llm_pb2.FINISH_REASON_EOS
    assert finished.completion_tokens == 1
    assert text == ""


def test_a_stop_string_halts_generation_at_once(adapter: TinyAdapter) -> None:
    engine = engine_for(adapter)
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


def test_cancelling_the_stream_stops_generation_on_the_model_thread(adapter: TinyAdapter) -> None:
    engine = engine_for(adapter)

    async def scenario() -> tuple[list[str], float]:
        received: list[str] = []
        got_three = asyncio.Event()

        async def consume() -> None:
            # Tens of thousands of tokens: only the cancel can end this in time.
            async for event in engine.stream(prompt(adapter.tokenizer), greedy(50_000)):
                assert isinstance(event, TextDelta)
                received.append(event.text)
                if len(received) == 3:
                    got_three.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(got_three.wait(), timeout=30)
        assert not engine.idle
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return received, await asyncio.to_thread(wait_idle, engine, 2.0)

    try:
        received, stopped_after = asyncio.run(scenario())
    finally:
        engine.close()
    assert len(received) >= 3
    assert stopped_after < 2.0


def test_a_call_cancelled_while_waiting_never_generates(adapter: TinyAdapter) -> None:
    engine = engine_for(adapter)
    calls: list[int] = []
    original = adapter.model.generate

    def counting_generate(**kwargs: Any) -> Any:
        calls.append(1)
        return original(**kwargs)

    adapter.model.generate = counting_generate

    async def scenario() -> None:
        first_delta = asyncio.Event()

        async def busy() -> None:
            async for _ in engine.stream(prompt(adapter.tokenizer), greedy(50_000)):
                first_delta.set()

        async def waiting() -> None:
            async for _ in engine.stream(prompt(adapter.tokenizer), greedy(5)):
                raise AssertionError("the queued call must not generate")

        running = asyncio.create_task(busy())
        await asyncio.wait_for(first_delta.wait(), timeout=30)
        queued = asyncio.create_task(waiting())
        await asyncio.sleep(0.05)
        queued.cancel()
        running.cancel()
        await asyncio.gather(running, queued, return_exceptions=True)
        await asyncio.to_thread(wait_idle, engine, 2.0)

    try:
        asyncio.run(scenario())
    finally:
        del adapter.model.generate
        engine.close()
    assert calls == [1]


def test_stream_ends_with_one_finished_after_the_deltas(adapter: TinyAdapter) -> None:
    engine = engine_for(adapter)

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
