"""`llmvox-prepare --profile tiny` end to end on espeak-ng speech, with two worker processes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmvox_tts.training.dataset import load_audio_24k
from llmvox_tts.training.shards import iter_items, read_meta, read_tables

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
SENTENCES = [
    "Hello there, how are you today?",
    "The weather is lovely this morning.",
    "Streaming speech synthesis needs low latency.",
    "Seven small birds sat on the fence.",
    "Please turn left at the next corner.",
    "Numbers like forty two are spoken too.",
    "A short one.",
]


def test_prepare_tiny_profile_with_two_workers(espeak: str, tmp_path: Path) -> None:
    audio = tmp_path / "speech"
    audio.mkdir()
    rows = []
    for i, text in enumerate(SENTENCES):
        # espeak-ng writes 22.05 kHz PCM16 mono, so every item goes through the resampler.
        subprocess.run([espeak, "-w", str(audio / f"s{i}.wav"), text], check=True, timeout=60)
        # Odd rows use the upstream `<speech_folder>/<id>.wav` convention (no speech_file).
        row = {"speech_folder": "/elsewhere", "answer_text": text, "id": f"s{i}"}
        if i % 2 == 0:
            row["speech_file"] = f"s{i}.wav"
        rows.append(json.dumps(row))
    rows.append(json.dumps({"speech_folder": "/x", "answer_text": "gone", "id": "missing"}))
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "prepared"

    cmd = [
        sys.executable,
        "-m",
        "llmvox_tts.training.prepare",
        "--data_path",
        str(data),
        "--speech_data_folder",
        str(audio),
        "--out_dir",
        str(out),
        "--profile",
        "tiny",
        "--shard_size",
        "3",
        "--workers",
        "2",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    assert "items ok 7, skipped 1" in result.stdout
    assert "shards 3 (written now 3, reused 0)" in result.stdout
    assert "missing audio file" in result.stdout
    assert "untrained tiny profile" in result.stdout
    assert "RANDOM-WEIGHT" in result.stderr  # said before any work starts

    meta = read_meta(out)
    assert meta["complete"] is True
    assert meta["untrained"] is True
    assert [s["file"] for s in meta["shards"]] == [f"shard-0000{i}.pt" for i in range(3)]
    items = list(iter_items(out))
    assert [it.id for it in items] == [f"s{i}" for i in range(len(SENTENCES))]
    total_tokens = 0
    for i, it in enumerate(items):
        samples = load_audio_24k(audio / f"s{i}.wav").shape[-1]
        assert it.codes.numel() == math.ceil(samples / 320), it.id
        assert it.seconds == pytest.approx(samples / 24_000)
        assert it.text == SENTENCES[i]
        total_tokens += it.codes.numel()
    assert sum(s["tokens"] for s in meta["shards"]) == total_tokens
    assert f"speech tokens {total_tokens}," in result.stdout
    hours = sum(it.seconds for it in items) / 3600
    assert f"audio {hours:.4f} h" in result.stdout
    table, codebook = read_tables(out)
    assert table.shape == (386, meta["text_dim"])
    assert codebook.shape == (meta["codebook_size"], meta["codebook_dim"])
    assert codebook.dtype == torch.float32

    # A rerun finds everything done and writes nothing.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert again.returncode == 0, again.stderr
    assert "shards 3 (written now 0, reused 3)" in again.stdout
    assert "items ok 7, skipped 1" in again.stdout
