"""PCM16 / WAV helpers shared by the services."""

from pathlib import Path

import numpy as np
import pytest

from llmvox_common.audio import float_to_pcm16, pcm16_to_float, read_wav, wav_bytes, write_wav

pytestmark = pytest.mark.unit


def test_pcm16_clips_and_round_trips() -> None:
    x = np.array([0.0, 0.5, -0.5, 1.5, -2.0], dtype=np.float32)
    pcm = float_to_pcm16(x)
    assert pcm.dtype == np.dtype("<i2")
    assert pcm.tolist() == [0, 16384, -16384, 32767, -32767]
    back = pcm16_to_float(pcm.tobytes())
    np.testing.assert_allclose(back[:3], x[:3], atol=1e-4)


def test_wav_file_round_trip(tmp_path: Path) -> None:
    t = np.arange(2400) / 24000
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = write_wav(tmp_path / "sub" / "a.wav", x)
    y, rate = read_wav(path)
    assert rate == 24000
    np.testing.assert_allclose(y, x, atol=1e-4)
    assert wav_bytes(x)[:4] == b"RIFF"
