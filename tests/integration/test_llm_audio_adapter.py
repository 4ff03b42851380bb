"""`--chat_type multimodal` with a model that hears: a tiny random-weight Qwen2-Audio built from
a config in the test. It stands in for Phi-4-multimodal (image + audio + text), whose processor
needs torchvision and so cannot be built here; the adapter's audio path is the same: WAV or raw
PCM16 from the request, resampled to the feature extractor's rate, placeholders expanded by the
processor. The answers are random text."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from llmvox_common._proto.llmvox.llm.v1 import llm_pb2, llm_pb2_grpc
from llmvox_common.audio import float_to_pcm16

from .llm_support import (
    build_tiny_qwen2_audio,
    png_bytes,
    tiny_model_stub,
    wav_bytes,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[llm_pb2_grpc.LlmServiceStub]:
    with tiny_model_stub(
        tmp_path_factory, build_tiny_qwen2_audio, "tiny-qwen2-audio", "multimodal"
    ) as stub:
        yield stub


def audio_request(*audios: llm_pb2.Audio) -> llm_pb2.GenerateRequest:
    return llm_pb2.GenerateRequest(
        messages=[llm_pb2.Message(role=llm_pb2.ROLE_USER, text="What was said?", audios=audios)],
        sampling=llm_pb2.SamplingParams(temperature=0.0, max_tokens=5),
    )


def final_of(responses: Iterator[llm_pb2.GenerateResponse]) -> llm_pb2.GenerateFinal:
    items = list(responses)
    assert items[-1].HasField("final")
    assert "".join(r.delta for r in items[:-1]) == items[-1].final.text
    return items[-1].final


def test_tiny_random_weight_audio_model_answers_a_wav(stub: llm_pb2_grpc.LlmServiceStub) -> None:
    final = final_of(stub.Generate(audio_request(llm_pb2.Audio(data=wav_bytes())), timeout=60))
    assert final.usage.completion_tokens > 0
    # One second of 16 kHz audio: 100 mel frames → 25 audio tokens in the prompt.
    assert final.usage.prompt_tokens > 25


def test_tiny_random_weight_audio_model_takes_raw_pcm_at_another_rate(
    stub: llm_pb2_grpc.LlmServiceStub,
) -> None:
    samples = (0.3 * np.sin(np.arange(8000) / 5)).astype(np.float32)
    pcm = llm_pb2.Audio(data=float_to_pcm16(samples).tobytes(), sample_rate_hz=8000)
    wav = llm_pb2.Audio(data=wav_bytes(seconds=1.0))
    # 1 s at 8 kHz is resampled to 1 s at 16 kHz: as many audio tokens as the 16 kHz WAV.
    from_pcm = final_of(stub.Generate(audio_request(pcm), timeout=60))
    from_wav = final_of(stub.Generate(audio_request(wav), timeout=60))
    assert from_pcm.usage.prompt_tokens == from_wav.usage.prompt_tokens


def test_bad_audio_bytes_are_invalid_argument(stub: llm_pb2_grpc.LlmServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        final_of(stub.Generate(audio_request(llm_pb2.Audio(data=b"RIFF....WAVEjunk")), timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages[0].audios[0]: not a WAV file" in caught.value.details()


def test_odd_length_pcm_is_invalid_argument(stub: llm_pb2_grpc.LlmServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        final_of(
            stub.Generate(
                audio_request(llm_pb2.Audio(data=b"\x00" * 3, sample_rate_hz=16000)), timeout=30
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_image_to_an_audio_only_model_is_invalid_argument(
    stub: llm_pb2_grpc.LlmServiceStub,
) -> None:
    bad = audio_request(llm_pb2.Audio(data=wav_bytes()))
    bad.messages[0].images.add(data=png_bytes())
    with pytest.raises(grpc.RpcError) as caught:
        final_of(stub.Generate(bad, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "takes no images" in caught.value.details()
