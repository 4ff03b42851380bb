"""`--chat_type multimodal` on a tiny random-weight LLaVA built from a config in the test (CLIP
vision tower, projector, Llama text model; SmolLM2's tokenizer plus `<image>`), loaded through
its saved LlavaProcessor. The answers are random text: these tests check the path, not words."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from llmvox_common._proto.llmvox.llm.v1 import llm_pb2, llm_pb2_grpc

from .llm_support import (
    build_tiny_llava,
    png_bytes,
    tiny_model_stub,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[llm_pb2_grpc.LlmServiceStub]:
    model = tiny_model_stub(tmp_path_factory, build_tiny_llava, "tiny-llava", "multimodal")
    with model as stub:
        yield stub


def image_request(*images: bytes) -> llm_pb2.GenerateRequest:
    return llm_pb2.GenerateRequest(
        messages=[
            llm_pb2.Message(role=llm_pb2.ROLE_SYSTEM, text="Describe images."),
            llm_pb2.Message(
                role=llm_pb2.ROLE_USER,
                text="What is this?",
                images=[llm_pb2.Image(data=data) for data in images],
            ),
        ],
        sampling=llm_pb2.SamplingParams(temperature=0.0, max_tokens=6),
    )


def test_tiny_random_weight_llava_answers_an_image_question(
    stub: llm_pb2_grpc.LlmServiceStub,
) -> None:
    items = list(stub.Generate(image_request(png_bytes()), timeout=60))
    assert items[-1].HasField("final")
    final = items[-1].final
    assert "".join(r.delta for r in items[:-1]) == final.text
    assert final.usage.completion_tokens > 0
    # A 28x28 image at patch 14 is 4 patches: the placeholder expands to 4 image tokens.
    assert final.usage.prompt_tokens > 4
    assert final.finish_reason in (llm_pb2.FINISH_REASON_EOS, llm_pb2.FINISH_REASON_LENGTH)


def test_tiny_random_weight_llava_answers_with_sampling(stub: llm_pb2_grpc.LlmServiceStub) -> None:
    request = image_request(png_bytes())
    request.sampling.temperature = 0.8
    request.sampling.top_k = 20
    request.sampling.seed = 7
    first = list(stub.Generate(request, timeout=60))[-1].final
    second = list(stub.Generate(request, timeout=60))[-1].final
    assert first.text == second.text, "the same seed samples the same answer"


def test_bad_image_bytes_are_invalid_argument(stub: llm_pb2_grpc.LlmServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Generate(image_request(b"GIF89a-not-an-image"), timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages[1].images[0]: not a readable image" in caught.value.details()


def test_audio_to_an_image_only_model_is_invalid_argument(
    stub: llm_pb2_grpc.LlmServiceStub,
) -> None:
    bad = image_request(png_bytes())
    bad.messages[1].audios.add(data=b"\x00\x00" * 160, sample_rate_hz=16000)
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Generate(bad, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "takes no audio" in caught.value.details()
