"""`/v1/realtime` against the real stack, driven by the official `openai` SDK's realtime client
(`AsyncOpenAI(base_url=<gateway>/v1).realtime.connect(model=...)`): a spoken question that the
server's VAD commits and answers, a typed turn, and a cancel. Every server event received is
validated against the SDK's `RealtimeServerEvent` union (our `llmvox.` extras against ours).
The TTS replicas run the tiny profile (**untrained random weights: the audio is noise**).
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr
from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

from llmvox_common.audio import float_to_pcm16, read_wav
from llmvox_gateway.realtime_protocol import EXTRA_PREFIX, EXTRA_SERVER_EVENT

from .stack import Stack
from .test_websocket import eventually

pytestmark = pytest.mark.integration

TIMEOUT_S = 240.0  # a failsafe: every wait returns at its event
SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(RealtimeServerEvent)


@dataclass
class Events:
    """Every server event of the connection, in order, each validated as it arrived."""

    all: list[dict[str, Any]] = field(default_factory=list)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.all if e["type"] == kind]

    def since(self, index: int) -> Events:
        return Events(self.all[index:])


async def receive_until(connection: AsyncRealtimeConnection, events: Events, kind: str) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            raw = await connection.recv_bytes()
            event = json.loads(raw)
            if event["type"].startswith(EXTRA_PREFIX):
                EXTRA_SERVER_EVENT.validate_json(raw)
            else:
                SERVER_EVENT.validate_json(raw)  # strict: the SDK's own parser does not check
            # What the SDK's `recv()` does; our extras pass through it as their own type.
            assert connection.parse_event(raw).type == event["type"]
            events.all.append(event)
            if event["type"] == kind:
                return


def spoken_question(espeak: str, path: Path) -> bytes:
    """espeak-ng's question as PCM16 at 24 kHz, with 0.5 s of silence before and 1.5 s after
    (three times the silence that ends a turn)."""
    subprocess.run(
        [espeak, "-w", str(path), "What is the capital of France?"],
        check=True,
        capture_output=True,
    )
    samples, rate = read_wav(path)
    speech = soxr.resample(samples, rate, 24_000).astype(np.float32)
    audio = np.concatenate([np.zeros(12_000, np.float32), speech, np.zeros(36_000, np.float32)])
    return float_to_pcm16(audio).tobytes()


def test_the_openai_sdk_holds_a_spoken_conversation(
    stack: Stack, espeak_bin: str, tmp_path: Path
) -> None:
    audio = spoken_question(espeak_bin, tmp_path / "question.wav")
    cancelled_before = stack.llm_calls_cancelled()

    async def conversation() -> Events:
        client = AsyncOpenAI(base_url=f"{stack.base_url}/v1", api_key="not-checked-here")
        events = Events()
        async with client.realtime.connect(model="llmvox") as connection:
            await receive_until(connection, events, "session.created")
            await connection.session.update(
                session={
                    "type": "realtime",
                    "instructions": "Answer in one short sentence.",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "turn_detection": {
                                "type": "server_vad",
                                "silence_duration_ms": 500,
                                "create_response": True,
                            },
                        },
                        "output": {"format": {"type": "audio/pcm", "rate": 24000}},
                    },
                }
            )
            await receive_until(connection, events, "session.updated")

            # 1. Spoken: appended as a microphone would (100 ms at a time); the server's VAD
            # finds the end of the question, commits it and answers.
            chunk = 2400 * 2
            for start in range(0, len(audio), chunk):
                piece = base64.b64encode(audio[start : start + chunk]).decode()
                await connection.input_audio_buffer.append(audio=piece)
            await receive_until(connection, events, "response.done")
            await receive_until(connection, events, "llmvox.timings")

            # 2. Typed: an item, then response.create.
            mark = len(events.all)
            await connection.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "And of Italy?"}],
                }
            )
            await connection.response.create()
            await receive_until(connection, events, "response.done")
            typed = events.since(mark)
            assert typed.of("conversation.item.added")[0]["item"]["content"][0]["text"] == (
                "And of Italy?"
            )

            # 3. Cancelled once the LLM has begun: its call stops.
            mark = len(events.all)
            await connection.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Tell me a long story."}],
                }
            )
            await connection.response.create()
            await receive_until(connection, events, "response.output_audio_transcript.delta")
            await connection.response.cancel()
            await receive_until(connection, events, "response.done")
            cancelled = events.since(mark).of("response.done")[0]["response"]
            assert cancelled["status"] == "cancelled"
            assert cancelled["status_details"]["reason"] == "client_cancelled"
        return events

    events = asyncio.run(conversation())

    # The spoken turn, in the protocol's order.
    first_done = next(i for i, e in enumerate(events.all) if e["type"] == "response.done")
    spoken = Events(events.all[: first_done + 1])
    order = [e["type"] for e in spoken.all]
    for before, after in [
        ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"),
        ("input_audio_buffer.speech_stopped", "input_audio_buffer.committed"),
        ("input_audio_buffer.committed", "response.created"),
        ("response.created", "conversation.item.input_audio_transcription.completed"),
        ("conversation.item.input_audio_transcription.completed", "response.output_audio.delta"),
        ("response.output_audio.delta", "response.output_audio.done"),
        ("response.output_audio.done", "response.done"),
    ]:
        assert order.index(before) < order.index(after), (before, after)
    started = spoken.of("input_audio_buffer.speech_started")[0]
    stopped = spoken.of("input_audio_buffer.speech_stopped")[0]
    # The speech begins at 500 ms (espeak adds a little silence of its own); 300 ms of padding.
    assert 0 <= started["audio_start_ms"] <= 500
    assert started["audio_start_ms"] + 1000 < stopped["audio_end_ms"]
    transcript = spoken.of("conversation.item.input_audio_transcription.completed")[0]
    assert "france" in transcript["transcript"].lower()
    assert transcript["item_id"] == spoken.of("input_audio_buffer.committed")[0]["item_id"]
    text = "".join(e["delta"] for e in spoken.of("response.output_audio_transcript.delta"))
    assert text.strip()
    assert spoken.of("response.output_audio_transcript.done")[0]["transcript"] == text
    pcm = b"".join(base64.b64decode(e["delta"]) for e in spoken.of("response.output_audio.delta"))
    assert pcm
    assert len(pcm) % 2 == 0
    done = spoken.of("response.done")[0]["response"]
    assert done["status"] == "completed"
    assert done["output"][0]["content"][0]["transcript"] == text
    timings = events.of("llmvox.timings")[0]["timings"]
    assert timings["asr_s"] is not None
    assert timings["asr_s"] <= timings["llm_first_token_s"] <= timings["first_audio_s"]

    # The typed turn answered with audio, and saw the spoken one (its history).
    typed_done = events.of("response.done")[1]["response"]
    assert typed_done["status"] == "completed"
    assert typed_done["output"][0]["content"][0]["transcript"].strip()

    # The cancel reached the LLM server.
    eventually(
        lambda: stack.llm_calls_cancelled() >= cancelled_before + 1,
        "the LLM server never saw the call cancelled",
    )
