"""Device, dtype and attention-kernel choices of the LLM server, GGUF source resolution, end
tokens; and (`gpu`) SmolLM2 generating on CUDA as on the CPU."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch

from llmvox_llm.loading import (
    ModelSource,
    attention_implementation,
    context_length,
    eos_token_ids,
    resolve_device,
    resolve_dtype,
)

pytestmark = pytest.mark.unit

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def test_flash_attention_only_on_cuda_in_half_precision_when_installed() -> None:
    assert attention_implementation(CUDA, torch.bfloat16, True) == "flash_attention_2"
    assert attention_implementation(CUDA, torch.float16, True) == "flash_attention_2"
    assert attention_implementation(CUDA, torch.float32, True) == "sdpa"
    assert attention_implementation(CUDA, torch.bfloat16, False) == "sdpa"
    assert attention_implementation(CPU, torch.bfloat16, True) == "sdpa"


def test_auto_dtype_is_float32_on_the_cpu() -> None:
    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16
    assert resolve_device("cpu") == CPU
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_a_gguf_path_as_model_splits_into_directory_and_file(tmp_path: Path) -> None:
    gguf = tmp_path / "model.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    assert ModelSource.resolve(str(gguf), None) == ModelSource(str(tmp_path), "model.Q4_1.gguf")
    assert ModelSource.resolve("org/model", "f.gguf").kwargs() == {"gguf_file": "f.gguf"}
    assert ModelSource.resolve("org/model", None).kwargs() == {}


class FakeTokenizer:
    eos_token_id = 2
    vocab: ClassVar[dict[str, list[int]]] = {
        "<|im_end|>": [2],
        "<|eot_id|>": [27, 91, 68],
        "<|end|>": [9],
    }

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.vocab[text]


def model_with(eos: object, **config: object) -> SimpleNamespace:
    return SimpleNamespace(
        generation_config=SimpleNamespace(eos_token_id=eos), config=SimpleNamespace(**config)
    )


def test_end_tokens_join_the_model_the_tokenizer_and_the_configured_one() -> None:
    assert eos_token_ids(model_with([2, 5]), FakeTokenizer(), None) == ({2, 5}, set())
    assert eos_token_ids(model_with(5), FakeTokenizer(), "<|end|>") == ({2, 5, 9}, set())
    # Not one token in this vocabulary: matched as text instead.
    assert eos_token_ids(model_with(None), FakeTokenizer(), "<|eot_id|>") == (
        {2},
        {"<|eot_id|>"},
    )


def test_context_length_reads_the_text_config_of_multimodal_models() -> None:
    assert context_length(model_with(None, max_position_embeddings=8192)) == 8192
    nested = model_with(None, text_config=SimpleNamespace(max_position_embeddings=4096))
    assert context_length(nested) == 4096
    assert context_length(model_with(None)) is None


@pytest.mark.gpu
def test_smollm2_answers_on_cuda_in_half_precision() -> None:
    """On CUDA in bfloat16 with the chosen attention kernel, greedy SmolLM2 still says Paris."""
    from llmvox_llm.adapters import LoadOptions
    from llmvox_llm.adapters.text import TextAdapter
    from llmvox_llm.engine import GenerationEngine
    from llmvox_llm.requests import ChatMessage, Sampling
    from tests.integration.llm_support import smollm2_dir

    adapter = TextAdapter(LoadOptions(ModelSource(str(smollm2_dir())), device="cuda", dtype="auto"))
    adapter.load()
    assert adapter.model.device.type == "cuda"
    assert adapter.model.dtype in (torch.bfloat16, torch.float16)
    engine = GenerationEngine(adapter, *eos_token_ids(adapter.model, adapter.tokenizer, None))
    try:
        prepared = adapter.prepare_exclusive(
            (ChatMessage("user", "What is the capital of France? Answer in one word."),)
        )
        text, finished = engine.run_blocking(
            prepared, Sampling(temperature=0.0, top_p=1.0, top_k=0, max_tokens=16)
        )
    finally:
        engine.close()
    assert "Paris" in text
    assert finished.completion_tokens > 0
