"""Golden case `wavtokenizer_decode`: codes -> features -> backbone -> ISTFT waveform."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch

from llmvox_tts.loading.wavtokenizer import load_wavtokenizer
from llmvox_tts.model.wavtokenizer import WavTokenizer

from .conftest import assert_close

CASE = "wavtokenizer_decode"
pytestmark = pytest.mark.unit

# cases/README.md, bounds table; used when a case file carries none.
README_TOLERANCES = {"backbone_out": (1e-4, 1e-4), "waveform": (1e-4, 1e-3)}


def tolerance(case: Mapping[str, Any], name: str) -> tuple[float, float]:
    entry = case.get("tolerances", {}).get(name)
    if isinstance(entry, Mapping) and "atol" in entry:
        return float(entry["atol"]), float(entry.get("rtol", 0.0))
    return README_TOLERANCES[name]


@pytest.fixture
def model(golden_case: dict[str, Any], save_checkpoint) -> WavTokenizer:
    return load_wavtokenizer(save_checkpoint(golden_case["checkpoint"], "wavtokenizer.ckpt"))


def test_sizes_are_inferred_from_the_weights(golden_case: dict[str, Any], model: WavTokenizer):
    cfg, want = model.config, golden_case["config"]
    pairs = {
        "vq_bins": cfg.vq_bins,
        "codebook_dim": cfg.codebook_dim,
        "n_filters": cfg.n_filters,
        "lstm_layers": cfg.lstm_layers,
        "backbone_dim": cfg.dim,
        "intermediate_dim": cfg.intermediate_dim,
        "num_layers": cfg.num_layers,
        "adanorm_num_embeddings": cfg.adanorm_num_embeddings,
        "n_fft": cfg.n_fft,
        "hop_length": cfg.hop_length,
    }
    for name, got in pairs.items():
        if name in want:
            assert got == want[name], f"{name}: inferred {got}, case config {want[name]}"
    assert not model.training


def test_features_backbone_and_waveform(golden_case: dict[str, Any], model: WavTokenizer):
    bb_atol, bb_rtol = tolerance(golden_case, "backbone_out")
    wav_atol, wav_rtol = tolerance(golden_case, "waveform")
    bandwidth_id = int(golden_case["inputs"].get("bandwidth_id", 0))
    sequences = golden_case["inputs"]["codes"]
    expected = golden_case["expected"]["per_sequence"]
    assert len(sequences) == len(expected)
    with torch.inference_mode():
        for i, (codes, want) in enumerate(zip(sequences, expected, strict=True)):
            features = model.codes_to_features(codes)
            assert torch.equal(features, want["features"]), f"sequence {i}: features differ"
            assert_close(
                model.backbone_forward(features, bandwidth_id),
                want["backbone_out"],
                bb_atol,
                bb_rtol,
                f"sequence {i} backbone_out",
            )
            waveform = model.decode(codes, bandwidth_id)
            assert waveform.dtype == torch.float32
            assert waveform.shape[-1] == model.config.hop_length * codes.shape[-1]
            assert_close(waveform, want["waveform"], wav_atol, wav_rtol, f"sequence {i} waveform")


def test_batch(golden_case: dict[str, Any], model: WavTokenizer):
    wav_atol, wav_rtol = tolerance(golden_case, "waveform")
    codes = golden_case["inputs"]["batch_codes"]
    expected = golden_case["expected"]
    bandwidth_id = int(golden_case["inputs"].get("bandwidth_id", 0))
    with torch.inference_mode():
        features = model.codes_to_features(codes)
        assert torch.equal(features, expected["batch_features"]), "batch features differ"
        waveform = model.decode(codes, bandwidth_id)
    assert_close(waveform, expected["batch_waveform"], wav_atol, wav_rtol, "batch waveform")


def test_alternative_bandwidth(golden_case: dict[str, Any], model: WavTokenizer):
    wav_atol, wav_rtol = tolerance(golden_case, "waveform")
    inputs = golden_case["inputs"]
    codes = inputs["codes"][int(inputs.get("alt_codes_index", 1))]
    with torch.inference_mode():
        waveform = model.decode(codes, bandwidth_id=int(inputs.get("alt_bandwidth_id", 2)))
    assert_close(
        waveform,
        golden_case["expected"]["alt_bandwidth_waveform"],
        wav_atol,
        wav_rtol,
        "alt bandwidth waveform",
    )
