"""`/v1/realtime` (realtime_session.py) with FAKE backends and a FAKE socket (gateway_fakes.py):
the OpenAI Realtime events of server-VAD turns, manual commits, typed items, cancels, barge-in,
truncation, G.711 audio and our `llmvox.` extras. The VAD's model is replaced by a loudness
model (speech = loud), so the segmentation is exact and no ONNX runs; vad.py has its own tests.

Every frame every test receives is validated against the SDK's `RealtimeServerEvent` union
(`llmvox.` extras against our own models), so drift from the SDK's types fails here.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter
from starlette.websockets import WebSocket, WebSocketDisconnect

from llmvox_gateway.app import create_app
from llmvox_gateway.realtime import realtime_key_accepted
from llmvox_gateway.realtime_audio import alaw_decode, ulaw_decode, ulaw_encode
from llmvox_gateway.realtime_protocol import EXTRA_PREFIX, EXTRA_SERVER_EVENT
from llmvox_gateway.realtime_session import RealtimeSession
from llmvox_gateway.runtime import GatewayRuntime
from llmvox_gateway.settings import GatewaySettings

from .gateway_fakes import WAIT_S, FakeAsr, FakeLlm, FakeSocket, FakeTts, fake_runtime

pytestmark = pytest.mark.unit

SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(RealtimeServerEvent)


def validate_all(frames: list[str | bytes]) -> None:
    """Every frame is a JSON event of the SDK's server union (or one of our extras)."""
    for frame in frames:
        assert isinstance(frame, str), "the Realtime protocol sends text frames only"
        kind = json.loads(frame)["type"]
        if kind.startswith(EXTRA_PREFIX):
            EXTRA_SERVER_EVENT.validate_json(frame)
        else:
            event = SERVER_EVENT.validate_json(frame)
            assert event.type == kind


class LoudModel:
    """A speech model that calls a window speech when it is loud: exact, and no ONNX."""

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        return (np.abs(windows).max(axis=1) > 0.1).astype(np.float32)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 3 * WAIT_S))


@asynccontextmanager
async def session(runtime: GatewayRuntime) -> AsyncIterator[FakeSocket]:
    socket = FakeSocket()
    realtime = RealtimeSession(socket, runtime, model="test-model", speech_model=LoudModel)  # type: ignore[arg-type]
    task = asyncio.create_task(realtime.run())
    await socket.wait_for("session.created")
    try:
        yield socket
    finally:
        socket.disconnect()
        await task
        validate_all(socket.frames)


def pcm24(seconds: float, amplitude: float) -> bytes:
    """PCM16 at 24 kHz: a 220 Hz tone (`amplitude` 0 is silence)."""
    t = np.arange(int(seconds * 24_000)) / 24_000
    return (amplitude * 32767 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()


def append(socket: FakeSocket, audio: bytes, chunk: int = 4800) -> None:
    for start in range(0, len(audio), chunk):
        piece = base64.b64encode(audio[start : start + chunk]).decode()
        socket.send({"type": "input_audio_buffer.append", "audio": piece})


def kinds(events: list[dict[str, Any]], *ignore: str) -> list[str]:
    """Event types in order, runs of the same type collapsed (deltas come in any number)."""
    out: list[str] = []
    for event in events:
        if event["type"] not in ignore and (not out or out[-1] != event["type"]):
            out.append(event["type"])
    return out


SPOKEN = pcm24(0.6, 0.5) + pcm24(0.8, 0.0)  # speech, then more silence than 500 ms


def test_session_created_states_the_protocol_defaults() -> None:
    async def scenario() -> None:
        async with session(fake_runtime(asr=FakeAsr(), llm=FakeLlm("Hi."))) as socket:
            created = socket.of("session.created")[0]["session"]
            assert created["type"] == "realtime"
            assert created["model"] == "test-model"
            audio = created["audio"]
            assert audio["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
            assert audio["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
            assert audio["input"]["turn_detection"] == {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 500,
                "create_response": True,
                "interrupt_response": True,
            }

    run(scenario)


def test_server_vad_commits_the_utterance_and_answers_it() -> None:
    asr = FakeAsr("What is the capital of France?")
    llm = FakeLlm("Paris is the capital. ", "It is in France.")
    tts = FakeTts()

    async def scenario() -> None:
        async with session(fake_runtime(asr=asr, llm=llm, tts=tts)) as socket:
            append(socket, pcm24(0.5, 0.0) + SPOKEN)
            await socket.wait_for("response.done")
            await socket.wait_for("llmvox.timings")

        events = socket.events
        assert kinds(events)[1:] == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "response.created",
            "conversation.item.input_audio_transcription.completed",
            "conversation.item.done",
            "response.output_item.added",
            "conversation.item.added",
            "response.content_part.added",
            *kinds(
                [e for e in events if e["type"].startswith("response.output_audio")],
                "response.output_audio.done",
                "response.output_audio_transcript.done",
            ),
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
            "llmvox.timings",
        ]
        started = socket.of("input_audio_buffer.speech_started")[0]
        stopped = socket.of("input_audio_buffer.speech_stopped")[0]
        # Speech began at 500 ms; the event starts 300 ms earlier (prefix padding), within a
        # window (32 ms) of it.
        assert abs(started["audio_start_ms"] - 200) <= 32
        assert 1100 + 500 - 32 <= stopped["audio_end_ms"] <= 1100 + 500 + 64
        committed = socket.of("input_audio_buffer.committed")[0]
        assert committed["item_id"] == started["item_id"] == stopped["item_id"]
        # The ASR heard the speech with its prefix padding, at 16 kHz, not the silence before.
        (stream,) = asr.streams
        heard = len(stream.audio) / 2 / 16_000
        assert 0.6 + 0.3 - 0.05 <= heard <= 0.6 + 0.3 + 0.6
        completed = socket.of("conversation.item.input_audio_transcription.completed")[0]
        assert completed["transcript"] == "What is the capital of France?"
        assert llm.calls[0][-1].text == "What is the capital of France?"
        transcript = "".join(
            e["delta"] for e in socket.of("response.output_audio_transcript.delta")
        )
        assert transcript == "Paris is the capital. It is in France."
        audio = b"".join(
            base64.b64decode(e["delta"]) for e in socket.of("response.output_audio.delta")
        )
        assert len(audio) == 2 * 2 * 2 * 240  # two jobs, two parts each, PCM16
        done = socket.of("response.done")[0]["response"]
        assert done["status"] == "completed"
        assert done["output"][0]["content"][0]["transcript"] == transcript
        timings = socket.of("llmvox.timings")[0]
        assert timings["response_id"] == done["id"]
        assert timings["timings"]["first_audio_s"] is not None

    run(scenario)


def test_speech_during_a_response_interrupts_it() -> None:
    asr = FakeAsr("Tell me a story.")
    llm = FakeLlm("Once upon a time. ", hold=True)
    tts = FakeTts(hold=True)

    async def scenario() -> None:
        async with session(fake_runtime(asr=asr, llm=llm, tts=tts)) as socket:
            append(socket, SPOKEN)
            await tts.changes.until(lambda: 0 in tts.jobs and tts.jobs[0].closed)
            tts.speak(0, parts=1)
            await socket.wait_for("response.output_audio.delta")
            append(socket, pcm24(0.3, 0.5))  # the user talks over the answer
            done = await socket.wait_for("response.done")
            assert socket.of("input_audio_buffer.speech_started")[1:]  # the second one
            append(socket, pcm24(0.8, 0.0))
            await socket.wait_for("response.created", 2)
            llm.end()
            await tts.changes.until(lambda: 1 in tts.jobs and tts.jobs[1].closed)
            tts.speak(1)
            second = await socket.wait_for("response.done", 2)

        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"] == {
            "type": "cancelled",
            "reason": "turn_detected",
        }
        assert done["response"]["output"][0]["status"] == "incomplete"
        assert llm.cancelled.is_set()
        assert tts.cancels == [0]
        # The speech_started that interrupted came before the cancelled response.done.
        types = [e["type"] for e in socket.events]
        assert (
            types.index("response.done")
            > [i for i, t in enumerate(types) if t == "input_audio_buffer.speech_started"][1]
        )
        assert second["response"]["status"] == "completed"
        # The second answer was asked with the whole conversation: both utterances and the
        # interrupted answer's text.
        assert [m.role for m in llm.calls[1]] == ["user", "assistant", "user"]

    run(scenario)


def test_manual_turns_commit_without_answering_until_response_create() -> None:
    asr = FakeAsr("Hello there.")
    llm = FakeLlm("Hi.")

    async def scenario() -> None:
        async with session(fake_runtime(asr=asr, llm=llm)) as socket:
            socket.send(
                {
                    "type": "session.update",
                    "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}},
                }
            )
            updated = await socket.wait_for("session.updated")
            assert updated["session"]["audio"]["input"]["turn_detection"] is None
            append(socket, pcm24(0.4, 0.5))
            socket.send({"type": "input_audio_buffer.commit"})
            await socket.wait_for("conversation.item.done")
            assert not socket.of("response.created")
            assert not socket.of("input_audio_buffer.speech_started")
            socket.send({"type": "response.create"})
            await socket.wait_for("response.done")
            socket.send({"type": "input_audio_buffer.commit"})
            error = await socket.wait_for("error")

        assert len(asr.streams[0].audio) == 2 * int(0.4 * 16_000)
        assert socket.of("response.done")[0]["response"]["status"] == "completed"
        assert llm.calls[0][-1].text == "Hello there."
        assert error["error"]["code"] == "input_audio_buffer_commit_empty"

    run(scenario)


def test_a_typed_item_then_response_create_and_a_cancel() -> None:
    llm = FakeLlm("Paris. ", hold=True)
    tts = FakeTts(hold=True)

    async def scenario() -> None:
        async with session(fake_runtime(llm=llm, tts=tts, system_prompt="Be brief.")) as socket:
            socket.send(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "Capital of France?"}],
                    },
                }
            )
            added = await socket.wait_for("conversation.item.added")
            socket.send({"type": "response.create"})
            await tts.changes.until(lambda: 0 in tts.jobs)
            socket.send({"type": "response.cancel"})
            done = await socket.wait_for("response.done")
            socket.send({"type": "response.cancel"})
            error = await socket.wait_for("error")

        assert added["item"]["content"] == [{"type": "input_text", "text": "Capital of France?"}]
        assert [(m.role, m.text) for m in llm.calls[0]] == [
            ("system", "Be brief."),
            ("user", "Capital of France?"),
        ]
        assert done["response"]["status_details"] == {
            "type": "cancelled",
            "reason": "client_cancelled",
        }
        assert llm.cancelled.is_set()
        assert error["error"]["code"] == "response_cancel_not_active"

    run(scenario)


def test_truncate_cuts_the_answer_the_llm_sees_next() -> None:
    llm = FakeLlm("one two three four. ")
    tts = FakeTts(parts_per_job=2, samples=2400)  # 200 ms of audio

    async def scenario() -> None:
        async with session(fake_runtime(llm=llm, tts=tts)) as socket:
            socket.send({"type": "response.create"})
            done = await socket.wait_for("response.done")
            item_id = done["response"]["output"][0]["id"]
            socket.send(
                {
                    "type": "conversation.item.truncate",
                    "item_id": item_id,
                    "content_index": 0,
                    "audio_end_ms": 100,
                }
            )
            truncated = await socket.wait_for("conversation.item.truncated")
            socket.send({"type": "response.create"})
            await socket.wait_for("response.done", 2)

        assert truncated["audio_end_ms"] == 100
        assert [(m.role, m.text) for m in llm.calls[1]] == [("assistant", "one two")]

    run(scenario)


def test_g711_in_and_out() -> None:
    asr = FakeAsr("Hello.")
    tts = FakeTts(parts_per_job=2, samples=2400)

    async def scenario() -> None:
        async with session(fake_runtime(asr=asr, llm=FakeLlm("Hi."), tts=tts)) as socket:
            socket.send(
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "audio": {
                            "input": {"format": {"type": "audio/pcmu"}},
                            "output": {"format": {"type": "audio/pcma"}},
                        },
                    },
                }
            )
            await socket.wait_for("session.updated")
            t = np.arange(8000) / 8000
            tone = (0.5 * 32767 * np.sin(2 * np.pi * 220 * t)).astype("<i2")
            speech = ulaw_encode(np.concatenate([tone[:4800], np.zeros(8000, "<i2")]))
            append(socket, speech, chunk=1600)
            await socket.wait_for("response.done")

        assert socket.of("session.updated")[0]["session"]["audio"]["output"]["format"] == {
            "type": "audio/pcma"
        }
        assert asr.streams[0].audio  # the μ-law speech was heard
        audio = b"".join(
            base64.b64decode(e["delta"]) for e in socket.of("response.output_audio.delta")
        )
        # 2 parts x 2400 samples at 24 kHz = 200 ms = 1600 A-law bytes at 8 kHz.
        assert abs(len(audio) - 1600) <= 8
        # The fake's parts are constant levels (1.0 clipped, here seq 0: 0.0 and 0.1).
        assert np.abs(alaw_decode(audio)).max() > 0.05 * 32768
        assert ulaw_decode(b"\xff")[0] == 0

    run(scenario)


def test_verbatim_text_extra_is_spoken_as_given() -> None:
    tts = FakeTts()

    async def scenario() -> None:
        async with session(fake_runtime(tts=tts)) as socket:
            socket.send({"type": "llmvox.text.append", "text": "Hello from "})
            socket.send({"type": "llmvox.text.append", "text": "my own LLM."})
            socket.send({"type": "llmvox.text.commit"})
            done = await socket.wait_for("response.done")

        assert done["response"]["status"] == "completed"
        assert tts.jobs[0].words == ["Hello", "from", "my", "own", "LLM."]
        assert done["response"]["output"][0]["content"][0]["transcript"] == "Hello from my own LLM."

    run(scenario)


def test_bad_events_are_errors_that_name_the_event() -> None:
    async def scenario() -> None:
        async with session(fake_runtime(asr=FakeAsr())) as socket:
            socket.send({"type": "no.such.event", "event_id": "evt_1"})
            unknown = await socket.wait_for("error")
            socket.send({"type": "input_audio_buffer.append", "audio": "%%%"})
            bad_audio = await socket.wait_for("error", 2)
            socket.send(
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}},
                    },
                }
            )
            bad_rate = await socket.wait_for("error", 3)

        assert unknown["error"]["code"] == "unknown_event"
        assert unknown["error"]["event_id"] == "evt_1"
        assert "base64" in bad_audio["error"]["message"]
        assert bad_rate["error"]["type"] == "invalid_request_error"

    run(scenario)


def test_admission_refuses_a_missing_key_with_a_realtime_error(
    redis_free_settings: GatewaySettings,
) -> None:
    app = create_app(redis_free_settings)
    with TestClient(app) as client, client.websocket_connect("/v1/realtime?model=m") as ws:
        frame = ws.receive_text()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    validate_all([frame])
    assert json.loads(frame)["error"]["code"] == "invalid_api_key"
    assert closed.value.code == 1008


def _socket(
    headers: dict[str, str], query: str = "", subprotocols: tuple[str, ...] = ()
) -> WebSocket:
    scope = {
        "type": "websocket",
        "path": "/v1/realtime",
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "subprotocols": list(subprotocols),
    }
    return WebSocket(scope, receive=None, send=None)  # type: ignore[arg-type]


def test_the_key_comes_as_openai_clients_send_it() -> None:
    keys = ["secret"]
    assert realtime_key_accepted(_socket({"Authorization": "Bearer secret"}), keys)  # the SDKs
    assert realtime_key_accepted(_socket({}, "model=m&api_key=secret"), keys)  # as /v1/ws
    browser = _socket({}, "", ("realtime", "openai-insecure-api-key.secret"))
    assert realtime_key_accepted(browser, keys)
    assert not realtime_key_accepted(_socket({"Authorization": "Bearer nope"}), keys)
    assert not realtime_key_accepted(_socket({}, "", ("realtime",)), keys)
    assert realtime_key_accepted(_socket({}), [])  # no keys configured: open


@pytest.fixture
def redis_free_settings() -> GatewaySettings:
    # Admission refuses before any service is called; the addresses only have to parse.
    return GatewaySettings(
        api_keys="secret", asr_addr="", llm_addr="", redis_url="redis://127.0.0.1:1/0"
    )


def test_without_a_vad_model_the_session_starts_with_manual_turns() -> None:
    def missing() -> LoudModel:
        raise FileNotFoundError("no silero_vad*.onnx")

    async def scenario() -> None:
        socket = FakeSocket()
        runtime = fake_runtime(asr=FakeAsr())
        realtime = RealtimeSession(socket, runtime, speech_model=missing)  # type: ignore[arg-type]
        task = asyncio.create_task(realtime.run())
        error = await socket.wait_for("error")
        socket.disconnect()
        await task
        validate_all(socket.frames)
        created = socket.of("session.created")[0]
        assert created["session"]["audio"]["input"]["turn_detection"] is None
        assert socket.events[0]["type"] == "session.created"
        assert error["error"]["type"] == "unavailable"

    run(scenario)


def test_a_bad_turn_detection_changes_nothing() -> None:
    async def scenario() -> None:
        async with session(fake_runtime(asr=FakeAsr())) as socket:
            socket.send(
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "instructions": "Changed?",
                        "audio": {
                            "input": {"turn_detection": {"type": "server_vad", "threshold": 2}}
                        },
                    },
                }
            )
            error = await socket.wait_for("error")
            socket.send({"type": "session.update", "session": {"type": "realtime"}})
            updated = await socket.wait_for("session.updated")

        assert error["error"]["code"] == "invalid_value"
        assert "instructions" not in updated["session"]
        assert updated["session"]["audio"]["input"]["turn_detection"]["threshold"] == 0.5

    run(scenario)


def test_an_utterance_without_words_fails_its_response_as_no_speech() -> None:
    llm = FakeLlm("Never said.")

    async def scenario() -> None:
        async with session(fake_runtime(asr=FakeAsr(""), llm=llm)) as socket:
            append(socket, SPOKEN)
            done = await socket.wait_for("response.done")

        assert done["response"]["status"] == "failed"
        assert done["response"]["status_details"]["error"]["code"] == "no_speech"
        assert done["response"]["output"] == []
        assert llm.calls == []

    run(scenario)


def test_items_are_retrieved_deleted_and_the_buffer_cleared() -> None:
    asr = FakeAsr()

    async def scenario() -> None:
        async with session(fake_runtime(asr=asr)) as socket:
            item = {
                "id": "item_mine",
                "type": "message",
                "role": "system",
                "content": [{"type": "input_text", "text": "Be brief."}],
            }
            socket.send({"type": "conversation.item.create", "item": item})
            socket.send({"type": "conversation.item.retrieve", "item_id": "item_mine"})
            retrieved = await socket.wait_for("conversation.item.retrieved")
            socket.send({"type": "conversation.item.delete", "item_id": "item_mine"})
            deleted = await socket.wait_for("conversation.item.deleted")
            socket.send({"type": "conversation.item.retrieve", "item_id": "item_mine"})
            missing = await socket.wait_for("error")
            append(socket, pcm24(0.3, 0.5))  # speech that is never finished
            await socket.wait_for("input_audio_buffer.speech_started")
            socket.send({"type": "input_audio_buffer.clear"})
            await socket.wait_for("input_audio_buffer.cleared")

        assert retrieved["item"]["role"] == "system"
        assert deleted["item_id"] == "item_mine"
        assert missing["error"]["code"] == "item_not_found"
        assert asr.streams[0].abandoned
        assert not socket.of("input_audio_buffer.committed")

    run(scenario)
