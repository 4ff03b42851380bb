"""`--chat_type visual_speech` on a tiny random-weight Qwen2.5-VL built from a config in the
test (vision tower, merger, mrope text model; SmolLM2's tokenizer plus the vision tokens). The
answers are random text: these tests check the image path and its errors, not the words."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from llmvox_common._proto.llmvox.llm.v1 import llm_pb2, llm_pb2_grpc

from .llm_support import (
    build_tiny_qwen2_5_vl,
    png_bytes,
    tiny_model_stub,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[llm_pb2_grpc.LlmServiceStub]:
    with tiny_model_stub(
        tmp_path_factory, build_tiny_qwen2_5_vl, "tiny-qwen2_5_vl", "visual_speech"
    ) as stub:
        yield stub


def image_request(*images: bytes, text: str = "What is in the picture?") -> llm_pb2.GenerateRequest:
    return llm_pb2.GenerateRequest(
        messages=[
            llm_pb2.Message(
                role=llm_pb2.ROLE_USER,
                text=text,
                images=[llm_pb2.Image(data=data, mime_type="image/png") for data in images],
            )
        ],
        sampling=llm_pb2.SamplingParams(temperature=0.0, max_tokens=6),
    )


def final_of(responses: Iterator[llm_pb2.GenerateResponse]) -> llm_pb2.GenerateFinal:
    items = list(responses)
    assert items
    assert items[-1].HasField("final")
    assert all(not r.HasField("final") for r in items[:-1])
    deltas = "".join(r.delta for r in items[:-1])
    assert deltas == items[-1].final.text
    return items[-1].final


def test_tiny_random_weight_vlm_answers_an_image_question(
    stub: llm_pb2_grpc.LlmServiceStub,
) -> None:
    final = final_of(stub.Generate(image_request(png_bytes()), timeout=60))
    assert final.usage.completion_tokens > 0
    # 64x48 px → a 4x4 patch grid merged 2x2: 4 image tokens besides the text.
    assert final.usage.prompt_tokens > 4


def test_tiny_random_weight_vlm_takes_two_images_and_text_only_turns(
    stub: llm_pb2_grpc.LlmServiceStub,
) -> None:
    two = final_of(stub.Generate(image_request(png_bytes(), png_bytes(96, 96)), timeout=60))
    none = final_of(stub.Generate(image_request(), timeout=60))
    assert two.usage.prompt_tokens > none.usage.prompt_tokens


def test_bad_image_bytes_are_invalid_argument(stub: llm_pb2_grpc.LlmServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        final_of(stub.Generate(image_request(b"\x89PNG but not really"), timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages[0].images[0]: not a readable image" in caught.value.details()


def test_truncated_image_is_invalid_argument(stub: llm_pb2_grpc.LlmServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        final_of(stub.Generate(image_request(png_bytes()[:60]), timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_audio_to_the_vision_model_is_invalid_argument(stub: llm_pb2_grpc.LlmServiceStub) -> None:
    bad = image_request(png_bytes())
    bad.messages[0].audios.add(data=b"\x00\x00" * 160, sample_rate_hz=16000)
    with pytest.raises(grpc.RpcError) as caught:
        final_of(stub.Generate(bad, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "takes no audio" in caught.value.details()
