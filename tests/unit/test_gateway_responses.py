"""The life of a response (turn.py) as the WebSocket client sees it, with FAKE backends and a
FAKE socket (gateway_fakes.py): the order of events around commits, barge-ins, verbatim text,
LLM failures and a client that leaves, and what each one stops. Plus the pull form (`events()`)
the HTTP endpoints use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from llmvox_gateway.errors import GatewayError
from llmvox_gateway.runtime import GatewayRuntime
from llmvox_gateway.turn import AudioChunk, LlmText, TurnDone, VerbatimText
from llmvox_gateway.ws_session import WsSession

from .gateway_fakes import WAIT_S, FakeAsr, FakeLlm, FakeSocket, FakeTts, fake_runtime

pytestmark = pytest.mark.unit

SPEECH = b"\x01\x00" * 1600  # 100 ms of PCM16 at 16 kHz


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 3 * WAIT_S))


@asynccontextmanager
async def session(runtime: GatewayRuntime) -> AsyncIterator[tuple[FakeSocket, asyncio.Task[None]]]:
    socket = FakeSocket()
    task = asyncio.create_task(WsSession(socket, runtime).run())  # type: ignore[arg-type]
    await socket.wait_for("session.created")
    try:
        yield socket, task
    finally:
        socket.disconnect()
        await task


def kinds(events: list[dict[str, Any]], *ignore: str) -> list[str]:
    """Event types in order, runs of the same type collapsed (deltas come in any number)."""
    out: list[str] = []
    for event in events:
        if event["type"] not in ignore and (not out or out[-1] != event["type"]):
            out.append(event["type"])
    return out


def for_response(events: list[dict[str, Any]], response_id: str) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e.get("response_id") == response_id or e.get("response", {}).get("id") == response_id
    ]


def test_commit_while_the_asr_runs_waits_for_the_transcript_then_answers() -> None:
    asr = FakeAsr("What is the capital of France?", hold=True)
    llm = FakeLlm("Paris is ", "the capital. ", "It is big.")
    tts = FakeTts()

    async def scenario() -> None:
        async with session(fake_runtime(tts=tts, asr=asr, llm=llm)) as (socket, _):
            socket.send_audio(SPEECH)
            socket.send({"type": "input_audio_buffer.commit"})
            await socket.wait_for("response.created")
            await asyncio.wait_for(asr.streams[0].finishing.wait(), WAIT_S)
            # The response exists, its transcript does not yet: nothing else has happened.
            assert kinds(socket.events) == [
                "session.created",
                "input_audio_buffer.committed",
                "response.created",
            ]
            assert llm.calls == []
            asr.streams[0].answer()
            done = await socket.wait_for("response.done")

        assert done["response"]["status"] == "completed"
        assert kinds(socket.events, "response.text.delta", "response.audio.delta") == [
            "session.created",
            "input_audio_buffer.committed",
            "response.created",
            "transcript.final",
            "response.text.done",
            "response.done",
        ]
        types = [e["type"] for e in socket.events]
        assert types.index("response.text.delta") < types.index("response.audio.delta")
        assert socket.of("transcript.final")[0]["text"] == "What is the capital of France?"
        assert llm.calls[0][-1].text == "What is the capital of France?"
        assert done["response"]["text"] == "Paris is the capital. It is big."
        assert [job.words for job in tts.jobs.values()] == [
            ["Paris", "is", "the", "capital."],
            ["It", "is", "big."],
        ]
        # Every job carries the turn's deadline (Unix ms), turn_timeout_s from its start.
        now_ms = time.time() * 1000
        for job in tts.jobs.values():
            assert now_ms < job.deadline_ms <= now_ms + 120_000
        seqs = [(e["seq"], e["part"]) for e in socket.of("response.audio.delta")]
        assert seqs == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert tts.cancels == []  # a completed turn cancels nothing
        assert not llm.cancelled.is_set()

    run(scenario)


def test_barge_in_during_the_asr_abandons_it_and_starts_nothing() -> None:
    asr = FakeAsr(hold=True)
    llm = FakeLlm("Never said.")
    tts = FakeTts()

    async def scenario() -> None:
        async with session(fake_runtime(tts=tts, asr=asr, llm=llm)) as (socket, _):
            socket.send_audio(SPEECH)
            socket.send({"type": "input_audio_buffer.commit"})
            await socket.wait_for("response.created")
            await asyncio.wait_for(asr.streams[0].finishing.wait(), WAIT_S)
            socket.send({"type": "response.cancel"})
            done = await socket.wait_for("response.done")
            assert done["response"]["status"] == "cancelled"
            # The session goes on: the next response plays.
            socket.send({"type": "llmvox.text.append", "text": "Next one."})
            socket.send({"type": "llmvox.text.commit"})
            second = await socket.wait_for("response.done", 2)

        assert asr.streams[0].abandoned
        assert socket.of("transcript.final") == []
        assert llm.calls == []
        assert tts.cancels == []  # no job was opened for it
        assert len(socket.of("response.done")) == 2
        assert second["response"]["status"] == "completed"
        assert [job.seq for job in tts.jobs.values()] == [0]

    run(scenario)


def test_barge_in_during_audio_stops_the_audio_the_llm_and_the_jobs() -> None:
    llm = FakeLlm("First sentence here. ", "Second ", hold=True)
    tts = FakeTts(hold=True, parts_per_job=3)

    async def scenario() -> None:
        async with session(fake_runtime(tts=tts, llm=llm)) as (socket, _):
            socket.send({"type": "response.create"})
            await tts.changes.until(lambda: 1 in tts.jobs and tts.jobs[0].closed)
            tts.speak(0, parts=1)
            audio = await socket.wait_for("response.audio.delta")
            socket.send({"type": "response.cancel"})
            done = await socket.wait_for("response.done")
            # Late audio of the cancelled jobs never reaches the client.
            tts.speak(0)
            socket.send({"type": "llmvox.text.append", "text": "After."})
            socket.send({"type": "llmvox.text.commit"})
            await tts.changes.until(lambda: 2 in tts.jobs and tts.jobs[2].closed)
            tts.speak(2)
            second = await socket.wait_for("response.done", 2)

        first_id = done["response"]["id"]
        assert audio["response_id"] == first_id
        assert done["response"]["status"] == "cancelled"
        assert llm.cancelled.is_set()
        assert tts.cancels == [1]  # seqs 0 and 1 were opened
        first = for_response(socket.events, first_id)
        assert first[-1]["type"] == "response.done"
        assert [(e["seq"], e["part"]) for e in first if e["type"] == "response.audio.delta"] == [
            (0, 0)
        ]
        assert second["response"]["status"] == "completed"
        second_audio = for_response(socket.events, second["response"]["id"])
        assert {e["seq"] for e in second_audio if e["type"] == "response.audio.delta"} == {2}

    run(scenario)


def test_verbatim_text_after_a_commit_starts_a_new_response() -> None:
    tts = FakeTts(hold=True)

    async def scenario() -> None:
        async with session(fake_runtime(tts=tts)) as (socket, _):
            socket.send({"type": "llmvox.text.append", "text": "Hello "})
            socket.send({"type": "llmvox.text.append", "text": "there."})
            socket.send({"type": "llmvox.text.commit"})
            await tts.changes.until(lambda: 0 in tts.jobs and tts.jobs[0].closed)
            socket.send({"type": "llmvox.text.append", "text": "Again."})
            socket.send({"type": "llmvox.text.commit"})
            await tts.changes.until(lambda: 1 in tts.jobs and tts.jobs[1].closed)
            tts.speak(1)
            await socket.wait_for("response.done", 2)

        created = socket.of("response.created")
        first, second = (socket.of("response.done")[i]["response"] for i in (0, 1))
        assert [c["response"]["source"] for c in created] == ["verbatim", "verbatim"]
        assert (first["status"], first["text"]) == ("cancelled", "Hello there.")
        assert (second["status"], second["text"]) == ("completed", "Again.")
        # The first response ended (response.done) before the second began.
        types = [e["type"] for e in socket.events]
        second_created = [i for i, kind in enumerate(types) if kind == "response.created"][1]
        assert types.index("response.done") < second_created
        assert tts.jobs[0].words == ["Hello", "there."]
        assert tts.jobs[1].words == ["Again."]
        assert tts.cancels == [0]

    run(scenario)


def test_an_llm_error_mid_answer_ends_the_response_failed_exactly_once() -> None:
    llm = FakeLlm("Half an answer. ", "And more ", hold=True)
    tts = FakeTts()

    async def scenario() -> None:
        async with session(fake_runtime(tts=tts, llm=llm)) as (socket, _):
            socket.send({"type": "response.create"})
            await tts.changes.until(lambda: 1 in tts.jobs)
            llm.fail(GatewayError(503, "unavailable", "llm: UNAVAILABLE: gone"))
            done = await socket.wait_for("response.done")
            # Anything else the session sends from now on is later than this point.
            socket.send({"type": "session.update", "session": {}})
            await socket.wait_for("session.updated")

        ending = kinds(socket.events, "response.audio.delta", "response.text.delta")
        assert ending[-4:] == ["error", "response.text.done", "response.done", "session.updated"]
        assert len(socket.of("error")) == 1
        assert len(socket.of("response.done")) == 1
        assert socket.of("error")[0]["error"]["status"] == 503
        assert done["response"]["status"] == "failed"
        assert done["response"]["error"]["type"] == "unavailable"
        assert done["response"]["text"] == "Half an answer. And more "
        assert tts.cancels == [1]

    run(scenario)


def test_a_client_that_leaves_stops_the_llm_and_the_jobs() -> None:
    llm = FakeLlm("Something long. ", "And ", hold=True)
    tts = FakeTts(hold=True)

    async def scenario() -> None:
        async with session(fake_runtime(tts=tts, llm=llm)) as (socket, task):
            socket.send({"type": "response.create"})
            await tts.changes.until(lambda: 1 in tts.jobs)
            socket.disconnect()
            await asyncio.wait_for(task, WAIT_S)
            assert llm.cancelled.is_set()
            assert tts.cancels == [1]
            assert socket.of("response.done") == []

    run(scenario)


# -- the pull form (HTTP) --------------------------------------------------------------------------


def test_leaving_the_event_stream_early_cancels_the_turn_even_with_audio_queued() -> None:
    """An HTTP client that hangs up while the turn fills its bounded queue with audio it will
    never read: the turn must not wait on the queue, and stops the LLM and the jobs."""
    llm = FakeLlm(*["One more sentence. "] * 100, hold=True)
    tts = FakeTts(parts_per_job=4)

    async def scenario() -> None:
        runtime = fake_runtime(tts=tts, llm=llm)
        text = LlmText(llm, runtime.sampling, lambda _: [])
        events = runtime.turn("http-1", text, endpoint="tts").events()
        async for event in events:
            if isinstance(event, AudioChunk):
                break
        # Ten jobs are five events each: the 64-event queue is (nearly) full by now.
        await tts.changes.until(lambda: len(tts.jobs) >= 10)
        await events.aclose()
        assert llm.cancelled.is_set()
        assert tts.cancels == [max(tts.jobs)]

    run(scenario)


def test_the_event_stream_ends_with_one_done_after_verbatim_text() -> None:
    tts = FakeTts()

    async def scenario() -> None:
        runtime = fake_runtime(tts=tts)
        turn = runtime.turn("http-2", VerbatimText("One. Two."), endpoint="speech")
        events = [event async for event in turn.events()]
        dones = [e for e in events if isinstance(e, TurnDone)]
        assert dones == [events[-1]]
        assert dones[0].status == "completed"
        assert turn.done is dones[0]
        assert sum(isinstance(e, AudioChunk) for e in events) == 4
        await turn.cancel()  # after the end: nothing changes
        assert turn.done.status == "completed"
        assert tts.cancels == []

    run(scenario)
