"""Reduced-precision serving: int8 is batch-invariant bit for bit and close to fp32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmvox_tts.loading.bundle import random_decoder, tiny_gpt_config
from llmvox_tts.model.gpt import LLMVoXDecoder
from llmvox_tts.model.precision import Int8Linear, quantize_rows, with_precision

pytestmark = pytest.mark.unit


def test_int8_linear_rows_do_not_depend_on_their_batch() -> None:
    torch.manual_seed(0)
    layer = Int8Linear(nn.Linear(96, 288))
    rows = torch.randn(33, 96)
    rows[5] *= 1000.0  # one loud row: with a per-tensor scale it would coarsen all others
    together = layer(rows)
    for i in (0, 5, 17, 32):
        assert torch.equal(layer(rows[i : i + 1])[0], together[i])
    assert torch.equal(layer(rows[3:20]), together[3:20])


def test_int8_linear_is_close_to_fp32() -> None:
    torch.manual_seed(1)
    linear = nn.Linear(256, 512)
    x = torch.randn(8, 256)
    want = linear(x)
    got = Int8Linear(linear)(x)
    # Two 8-bit roundings: well under 2 % of the output's spread.
    assert (got - want).abs().max() < 0.02 * want.abs().max()


def test_quantize_rows_keeps_each_rows_peak() -> None:
    x = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0]])
    codes, scale = quantize_rows(x)
    assert codes.dtype == torch.int8
    assert codes[0].tolist() == [64, -127, 32]
    assert codes[1].tolist() == [0, 0, 0]
    assert scale[0].item() == pytest.approx(1.0 / 127)


def _logits_alone_and_batched(model: LLMVoXDecoder, steps: int, batch: int) -> None:
    torch.manual_seed(2)
    width = model.config.n_embd
    inputs = torch.randn(steps, batch, width)
    inputs = inputs / inputs.norm(dim=-1, keepdim=True)
    with torch.inference_mode():
        cache = model.new_cache(batch)
        batched = [model.decode_step(inputs[n], cache, list(range(batch))) for n in range(steps)]
        for row in (0, batch - 1):
            alone_cache = model.new_cache(1)
            for n in range(steps):
                alone = model.decode_step(inputs[n, row : row + 1], alone_cache, [0])
                assert torch.equal(alone[0], batched[n][row]), (row, n)


def test_int8_decoder_speaks_the_same_tokens_in_any_batch() -> None:
    """A job regenerated after a replica crash lands in another batch: same logits, bit for
    bit, hence the same tokens."""
    fp32 = random_decoder(tiny_gpt_config(64, 4096), seed=3)
    int8 = with_precision(fp32, "int8")
    assert isinstance(int8.lm_head, Int8Linear)
    _logits_alone_and_batched(int8, steps=12, batch=7)


def test_cpu_default_is_int8_and_other_devices_default_to_exact(monkeypatch) -> None:
    from llmvox_tts.settings import ModelSettings

    for name in ("LLMVOX_TTS_PRECISION", "LLMVOX_TTS_VOCODER_PRECISION", "LLMVOX_TTS_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    assert ModelSettings().precision == "int8"
    assert ModelSettings(device="cuda").precision == "fp32"
    assert ModelSettings(device="cuda", precision="bf16").precision == "bf16"
    assert ModelSettings(precision="fp32").precision == "fp32"  # the exact mode stays
    settings = ModelSettings(device="cuda")
    settings.resolve_numerics()
    assert settings.vocoder_precision == "fp32"
    settings = ModelSettings()
    settings.resolve_numerics()
    assert settings.vocoder_precision in ("bf16", "int8")
    assert settings.numerics() == f"decoder int8, vocoder {settings.vocoder_precision}"


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_vocoder_precisions_stay_close_and_keep_the_codebook(precision: str) -> None:
    from llmvox_tts.loading.bundle import tiny_wavtokenizer
    from llmvox_tts.model.precision import wavtokenizer_with_precision

    exact = tiny_wavtokenizer(0)
    fast = wavtokenizer_with_precision(exact, precision)
    assert fast is not exact
    # The decoder reads codebook rows as input: they must not be rounded.
    assert fast.codebook.dtype == torch.float32
    assert torch.equal(fast.codebook, exact.codebook)
    codes = torch.randint(0, 4096, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = exact.decode(codes)
        got = fast.decode(codes)
    assert got.dtype == torch.float32
    assert got.shape == want.shape
    snr = 10 * torch.log10(want.square().sum() / (want - got).square().sum())
    assert snr > 15.0, snr  # measured at the published size: bf16 ~35 dB, int8 ~32 dB


def test_bundle_reports_its_numerics() -> None:
    from llmvox_tts.loading.bundle import build_tiny

    bundle = build_tiny(0, precision="int8", vocoder_precision="bf16")
    assert (bundle.precision, bundle.vocoder_precision) == ("int8", "bf16")
    assert "decoder in int8, vocoder in bf16" in bundle.description


def test_int8_linear_paths_give_the_same_bits_even_for_huge_sums() -> None:
    """The pre-packed oneDNN matmul and torch._int_mm both give float32(exact integer sum):
    a replica without oneDNN speaks the same tokens."""
    import copy

    linear = nn.Linear(3072, 64)
    with torch.no_grad():
        linear.weight.copy_(torch.rand(64, 3072) + 0.5)
    layer = Int8Linear(linear)
    x = torch.rand(5, 3072) + 1.0  # sums near 127² · 3072 ≈ 5e7, past float32's exact 2^24
    x[0] = 1.0
    packed = layer(x)
    plain = copy.deepcopy(layer)
    plain._packed = None
    assert torch.equal(plain(x), packed)
