"""Golden case `wavtokenizer_encode`: 24 kHz waveform -> SEANet encoder -> nearest codebook row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch

from llmvox_tts.loading.wavtokenizer import load_wavtokenizer
from llmvox_tts.model.wavtokenizer import WavTokenizer

from .conftest import assert_close

CASE = "wavtokenizer_encode"
pytestmark = pytest.mark.unit

README_ENCODER_TOLERANCE = (1e-4, 1e-4)  # cases/README.md, bounds table: encoder_out


def encoder_tolerance(case: Mapping[str, Any]) -> tuple[float, float]:
    entry = case.get("tolerances", {}).get("encoder_out")
    if isinstance(entry, Mapping) and "atol" in entry:
        return float(entry["atol"]), float(entry.get("rtol", 0.0))
    return README_ENCODER_TOLERANCE


@pytest.fixture
def model(golden_case: dict[str, Any], save_checkpoint) -> WavTokenizer:
    return load_wavtokenizer(save_checkpoint(golden_case["checkpoint"], "wavtokenizer.ckpt"))


def test_encode(golden_case: dict[str, Any], model: WavTokenizer):
    atol, rtol = encoder_tolerance(golden_case)
    sample_rate = int(golden_case["inputs"].get("sample_rate", 24_000))
    waveforms = golden_case["inputs"]["waveforms"]
    expected = golden_case["expected"]["per_input"]
    assert len(waveforms) == len(expected)
    with torch.inference_mode():
        for i, (waveform, want) in enumerate(zip(waveforms, expected, strict=True)):
            encoder_out, codes, features = model.encode_24k(waveform)
            assert_close(encoder_out, want["encoder_out"], atol, rtol, f"input {i} encoder_out")
            # The upstream layout is (n_q=1, B, frames); ours drops the codebook axis.
            assert codes.dtype == torch.int64
            assert torch.equal(codes[None], want["codes"]), f"input {i}: codes differ"
            assert torch.equal(features, want["features"]), f"input {i}: features differ"
            assert torch.equal(model.encode(waveform, sample_rate), codes)
