"""Golden case `convert_audio`: channel mean + Hann-windowed sinc resampling to 24 kHz."""

from __future__ import annotations

from typing import Any

import pytest

from llmvox_tts.model.resample import convert_audio

from .conftest import assert_close

CASE = "convert_audio"
pytestmark = pytest.mark.unit

README_TOLERANCE = {"atol": 2e-5, "rtol": 1e-4}  # cases/README.md, bounds table: resampling


def test_every_item(golden_case: dict[str, Any]):
    tol = golden_case.get("tolerances") or README_TOLERANCE
    atol, rtol = float(tol.get("atol", 2e-5)), float(tol.get("rtol", 1e-4))
    items = golden_case["inputs"]["items"]
    outputs = golden_case["expected"]["outputs"]
    assert len(items) == len(outputs)
    for i, (item, want) in enumerate(zip(items, outputs, strict=True)):
        assert item["wav"].shape[0] == item.get("channels", item["wav"].shape[0])
        got = convert_audio(item["wav"], int(item["sr"]), 24_000, 1)
        assert_close(got, want, atol, rtol, f"item {i} ({item['sr']} Hz)")
