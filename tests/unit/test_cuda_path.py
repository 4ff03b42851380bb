"""The CUDA path: same tokens and PCM as the CPU reference where the margins allow.

Runs only where a GPU is lent (marker `gpu`); elsewhere these are skipped as "needs a CUDA
device". Float32 runs with TF32 off; bf16 is compared on tokens of the trained golden model,
whose greedy decisions are far from ties (smallest top-2 gap ≈ 14).
"""

from pathlib import Path

import pytest
import torch

from llmvox_tts.loading.llmvox import load_llmvox_decoder
from llmvox_tts.loading.wavtokenizer import load_wavtokenizer
from llmvox_tts.model.attention import causal_attention
from llmvox_tts.model.precision import with_precision
from llmvox_tts.model.speech_decoder import SpeechTokenDecoder
from llmvox_tts.model.text_embedding import llmvox_text_table

from ..golden.conftest import case_files, load_case_file

pytestmark = [pytest.mark.unit, pytest.mark.gpu]


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(scope="module")
def e2e_models(tmp_path_factory: pytest.TempPathFactory):
    case = load_case_file(case_files("e2e_streaming")[0])
    tmp: Path = tmp_path_factory.mktemp("e2e")
    torch.save(case["checkpoint"]["llmvox"], tmp / "gpt.pt")
    torch.save(case["checkpoint"]["wavtokenizer"], tmp / "wt.ckpt")
    decoder = load_llmvox_decoder(tmp / "gpt.pt")
    wavtokenizer = load_wavtokenizer(tmp / "wt.ckpt")
    table = llmvox_text_table(case["checkpoint"]["t5_state_dict"])
    return decoder, wavtokenizer, table


def greedy(decoder, table, codebook, texts: list[list[int]], steps: int) -> list[list[int]]:
    dec = SpeechTokenDecoder(decoder, table, codebook, num_slots=len(texts))
    for s in range(len(texts)):
        dec.start_segment(s)
    out: list[list[int]] = [[] for _ in texts]
    for n in range(steps):
        ids = [t[n] if n < len(t) else 384 for t in texts]
        for row, tok in zip(out, dec.step(list(range(len(texts))), ids), strict=True):
            row.append(tok)
    return out


TEXTS = [[75, 108, 1, 385], [119, 107, 104, 117, 104, 1, 100, 1, 385], [66, 1, 385]]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batched_tokens_match_cpu(e2e_models, precision: str) -> None:
    decoder, wavtokenizer, table = e2e_models
    expected = greedy(decoder, table, wavtokenizer.codebook, TEXTS, 12)
    gpu = with_precision(decoder.to("cuda"), precision)
    got = greedy(gpu, table.cuda(), wavtokenizer.codebook.cuda(), TEXTS, 12)
    decoder.to("cpu")
    assert got == expected


def test_wavtokenizer_decode_matches_cpu(e2e_models) -> None:
    _, wavtokenizer, _ = e2e_models
    codes = torch.randint(0, wavtokenizer.codebook.shape[0], (2, 40))
    with torch.inference_mode():
        cpu = wavtokenizer.decode(codes)
        gpu = wavtokenizer.to("cuda").decode(codes.cuda()).cpu()
    wavtokenizer.to("cpu")
    torch.testing.assert_close(gpu, cpu, atol=1e-3, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_causal_attention_kernels_agree(dtype: torch.dtype) -> None:
    q, k, v = (torch.randn(2, 33, 4, 64, device="cuda", dtype=dtype) for _ in range(3))
    got = causal_attention(q, k, v)
    ref = causal_attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(got.float(), ref, atol=2e-2, rtol=2e-2)
