"""The ASR's per-request decode options that the OpenAI-compatible transcription endpoints pass
through gRPC (prompt, temperature, word timings), checked at the servicer's edge, and what one
decode hands faster-whisper (a recording stand-in for its model: nothing is decoded)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from llmvox_asr.servicer import AsrServicer, transcript_message
from llmvox_asr.settings import AsrSettings
from llmvox_asr.transcriber import FALLBACK_TEMPERATURES, DecodeOptions, Transcriber
from llmvox_common._proto.llmvox.asr.v1 import asr_pb2
from llmvox_common.grpc_service import InvalidArgument

pytestmark = pytest.mark.unit


class RecordingModel:
    """Stands in for faster_whisper.WhisperModel: records the call, answers one segment."""

    model = SimpleNamespace(is_multilingual=False)

    def __init__(self) -> None:
        self.kwargs: dict[str, Any] = {}

    def transcribe(self, samples: np.ndarray, **kwargs: Any) -> tuple[Any, Any]:
        self.kwargs = kwargs
        word = SimpleNamespace(word=" Hi", start=0.1, end=0.4, probability=0.9)
        segment = SimpleNamespace(
            text=" Hi.",
            start=0.0,
            end=0.5,
            seek=0,
            tokens=[1, 2],
            temperature=0.0,
            avg_logprob=-0.2,
            compression_ratio=1.1,
            no_speech_prob=0.01,
            words=[word] if kwargs["word_timestamps"] else None,
        )
        return iter([segment]), SimpleNamespace(language="en", language_probability=1.0)


def options(**config: Any) -> DecodeOptions:
    transcriber = Transcriber(RecordingModel(), name="fake")  # type: ignore[arg-type]
    servicer = AsrServicer(AsrSettings())
    return servicer._options(transcriber, asr_pb2.RecognitionConfig(sample_rate_hz=16000, **config))


def test_prompt_temperature_and_word_timings_reach_the_options() -> None:
    assert options() == DecodeOptions(language="en", task="transcribe")
    chosen = options(prompt="  Kenobi ", temperature=0.5, word_timestamps=True)
    assert (chosen.prompt, chosen.temperature, chosen.word_timestamps) == ("Kenobi", 0.5, True)
    assert options(temperature=0.0).temperature == 0.0  # set, unlike unset (None)


@pytest.mark.parametrize("temperature", [-0.1, 1.5])
def test_temperature_outside_zero_to_one_is_invalid(temperature: float) -> None:
    with pytest.raises(InvalidArgument, match="temperature must be between 0 and 1"):
        options(temperature=temperature)


def test_decode_passes_them_to_whisper_and_returns_words() -> None:
    model = RecordingModel()
    transcriber = Transcriber(model, name="fake")  # type: ignore[arg-type]
    silence = np.zeros(1600, np.float32)

    transcriber.transcribe(silence, DecodeOptions(language="en", task="transcribe"))
    assert model.kwargs["initial_prompt"] is None
    assert model.kwargs["temperature"] == list(FALLBACK_TEMPERATURES)  # OpenAI's 0 = fallback

    result = transcriber.transcribe(
        silence,
        DecodeOptions(
            language="en", task="transcribe", prompt="Hi", temperature=0.3, word_timestamps=True
        ),
    )
    assert (model.kwargs["initial_prompt"], model.kwargs["temperature"]) == ("Hi", 0.3)
    message = transcript_message(result)
    assert [(w.text, w.start_s) for w in message.words] == [("Hi", pytest.approx(0.1))]
    segment = message.segments[0]
    assert (segment.text, list(segment.tokens)) == ("Hi.", [1, 2])
    assert segment.avg_logprob == pytest.approx(-0.2)
