"""Continuous batching in the real server (SmolLM2-135M-Instruct, greedy, through the gRPC
stubs): concurrent calls answer exactly what they answer alone, each with its own settings; a
late call's first token comes before earlier long answers end; a cancelled call leaves the batch
(llmvox_llm_batch_size drops) while the others go on; beyond max_batch + max_queue calls the
server answers RESOURCE_EXHAUSTED."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import pytest

from llmvox_common._proto.llmvox.llm.v1 import llm_pb2, llm_pb2_grpc

from .llm_support import RunningServer, running_server, smollm2_dir

pytestmark = pytest.mark.integration

MAX_BATCH = 3
MAX_QUEUE = 1
BATCH_SIZE = "llmvox_llm_batch_size"
ESSAY = "Write a long essay about the history of the sea, with many details."
PROMPTS = (
    "What is the capital of France? Answer in one word.",
    "Name three colours.",
    "You are helping me plan a trip to the mountains next month. Tell me what to pack for a "
    "cold and rainy week of walking, and why each thing matters.",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(
        smollm2_dir(),
        "--max_tokens",
        "48",
        "--max_batch",
        str(MAX_BATCH),
        "--max_queue",
        str(MAX_QUEUE),
        log_path=tmp_path_factory.mktemp("llm-batching") / "server.log",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[llm_pb2_grpc.LlmServiceStub]:
    with server.channel() as channel:
        yield llm_pb2_grpc.LlmServiceStub(channel)


def request(text: str, **sampling: object) -> llm_pb2.GenerateRequest:
    return llm_pb2.GenerateRequest(
        messages=[llm_pb2.Message(role=llm_pb2.ROLE_USER, text=text)],
        sampling=llm_pb2.SamplingParams(**sampling),  # type: ignore[arg-type]
    )


def answer(stub: llm_pb2_grpc.LlmServiceStub, call: llm_pb2.GenerateRequest) -> str:
    for response in stub.Generate(call, timeout=300):
        if response.HasField("final"):
            return response.final.text
    raise AssertionError("no final message")


def together(stub: llm_pb2_grpc.LlmServiceStub, calls: list[llm_pb2.GenerateRequest]) -> list[str]:
    """The calls started together (one thread each); they overlap for most of their answers
    (test_batching_is_on... and the batch-size tests show they share the batch)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: answer(stub, call), calls))


def test_batching_is_on_for_a_text_model(server: RunningServer) -> None:
    samples = server.metrics()
    assert samples["llmvox_llm_batching_enabled"] == 1
    assert samples["llmvox_llm_max_batch"] == MAX_BATCH


def test_greedy_answers_are_the_same_alone_and_batched(
    server: RunningServer, stub: llm_pb2_grpc.LlmServiceStub
) -> None:
    calls = [request(text, temperature=0.0, max_tokens=24) for text in PROMPTS]
    alone = [answer(stub, call) for call in calls]
    batched = together(stub, calls)
    assert batched == alone
    assert "Paris" in alone[0]


def test_each_call_keeps_its_own_settings(stub: llm_pb2_grpc.LlmServiceStub) -> None:
    full = answer(stub, request(PROMPTS[2], temperature=0.0, max_tokens=24))
    stop = full.split()[3]
    texts = together(
        stub,
        [
            request(PROMPTS[2], temperature=0.0, max_tokens=24),
            request(PROMPTS[2], temperature=0.0, max_tokens=24, stop=[stop]),
            # Sampling from the single most likely token is greedy decoding.
            request(PROMPTS[2], temperature=1.5, top_k=1, max_tokens=24),
        ],
    )
    assert texts[0] == full
    assert texts[1] == full[: full.index(stop)]
    assert texts[2] == full
    short = together(stub, [request(PROMPTS[2], temperature=0.0, max_tokens=n) for n in (2, 24)])
    assert full.startswith(short[0])
    assert len(short[0]) < len(short[1])


@dataclass
class Timeline:
    """Events of concurrent streams in the order the client saw them."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    events: list[tuple[str, str]] = field(default_factory=list)
    first_delta: dict[str, threading.Event] = field(default_factory=dict)

    def add(self, who: str, what: str) -> None:
        with self.lock:
            self.events.append((who, what))
        if what == "delta":
            self.first_delta.setdefault(who, threading.Event()).set()

    def started(self, who: str) -> threading.Event:
        with self.lock:
            return self.first_delta.setdefault(who, threading.Event())

    def index(self, who: str, what: str) -> int:
        return self.events.index((who, what))


def test_a_late_call_starts_before_earlier_long_answers_end(
    server: RunningServer, stub: llm_pb2_grpc.LlmServiceStub
) -> None:
    server.wait_idle()
    timeline = Timeline()
    finals: dict[str, llm_pb2.GenerateFinal] = {}

    def run(who: str, call: llm_pb2.GenerateRequest) -> None:
        for response in stub.Generate(call, timeout=300):
            if response.HasField("final"):
                finals[who] = response.final
                timeline.add(who, "final")
            else:
                timeline.add(who, "delta")

    essay = request(ESSAY, temperature=0.0, max_tokens=48)
    with ThreadPoolExecutor(3) as pool:
        longs = [pool.submit(run, f"long{i}", essay) for i in range(2)]
        for i in range(2):
            assert timeline.started(f"long{i}").wait(300)
        late = pool.submit(run, "late", request(PROMPTS[0], temperature=0.0, max_tokens=4))
        for future in (*longs, late):
            future.result()
    for i in range(2):
        # The long answers ran to their length, so "before they end" means something.
        assert finals[f"long{i}"].finish_reason == llm_pb2.FINISH_REASON_LENGTH
        assert timeline.index("late", "delta") < timeline.index(f"long{i}", "final")
        assert timeline.index("late", "final") < timeline.index(f"long{i}", "final")


def test_a_cancelled_call_leaves_the_batch_while_the_others_go_on(
    server: RunningServer, stub: llm_pb2_grpc.LlmServiceStub
) -> None:
    server.wait_idle()
    essay = request(ESSAY, temperature=0.0, max_tokens=48)
    kept = stub.Generate(essay, timeout=300)
    gone = stub.Generate(essay, timeout=300)
    kept_responses, gone_responses = iter(kept), iter(gone)
    assert next(kept_responses).delta
    assert next(gone_responses).delta
    server.wait_until(lambda s: s.get(BATCH_SIZE) == 2, "both calls in the batch")
    gone.cancel()
    server.wait_until(lambda s: s.get(BATCH_SIZE) == 1, "the cancelled call left")
    # The other call is still streaming, to its normal end.
    rest = list(kept_responses)
    assert rest[-1].final.finish_reason == llm_pb2.FINISH_REASON_LENGTH
    assert rest[-1].final.usage.completion_tokens == 48
    server.wait_idle()


def test_calls_beyond_the_batch_and_its_queue_are_refused(
    server: RunningServer, stub: llm_pb2_grpc.LlmServiceStub
) -> None:
    server.wait_idle()
    essay = request(ESSAY, temperature=0.0, max_tokens=48)
    calls = [stub.Generate(essay, timeout=300) for _ in range(MAX_BATCH + MAX_QUEUE)]
    try:
        server.wait_until(
            lambda s: s.get("llmvox_llm_requests_in_progress") == MAX_BATCH + MAX_QUEUE
            and s.get(BATCH_SIZE) == MAX_BATCH
            and s.get("llmvox_llm_queue_depth") == MAX_QUEUE,
            "batch full and the queue taken",
        )
        with pytest.raises(grpc.RpcError) as caught:
            answer(stub, request(PROMPTS[0], max_tokens=4))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for call in calls:
            call.cancel()
    samples = server.wait_idle()
    assert samples["llmvox_llm_queue_depth"] == 0
    assert samples["llmvox_llm_queue_wait_seconds_count"] > 0
