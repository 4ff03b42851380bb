"""A small speech dataset made offline (espeak-ng), prepared by the real `llmvox-prepare` with
the tiny random-weight WavTokenizer: the training tests run the whole pipeline."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from llmvox_tts.loading.bundle import ModelBundle, build_tiny
from llmvox_tts.training.prepare import main as prepare_main

from .conftest import ensure_espeak

SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "Rain falls softly on the quiet town.",
    "She sells sea shells by the sea shore.",
    "Bright stars shine over the dark hills.",
    "We walked along the river at dawn.",
    "The old clock struck twelve times.",
    "Fresh bread smells wonderful in the morning.",
    "He painted the fence a pale shade of blue.",
    "Music filled the hall until midnight.",
    "The train left the station on time.",
    "Cold wind blew across the open field.",
    "Birds sang loudly in the tall green trees.",
    "Please close the window before you leave.",
    "The little boat drifted toward the island.",
    "Our garden is full of red roses.",
    "Snow covered the mountains all winter.",
    "They laughed at the funny story.",
    "A warm cup of tea helps me relax.",
    "The children played games in the park.",
    "Lightning flashed and thunder rolled.",
    "My brother reads a book every week.",
    "The market opens early on Saturday.",
    "Waves crashed against the rocky coast.",
    "The library was silent and calm.",
    "Turn left at the next corner.",
    "Honey bees buzzed around the flowers.",
    "The soup needs a little more salt.",
]


def espeak_binary() -> str:
    return ensure_espeak()


def build_espeak_dataset(out_dir: Path, count: int = len(SENTENCES)) -> ModelBundle:
    """espeak-ng speech in the original dataset format, tokenised by `llmvox-prepare --profile
    tiny` into `out_dir`; returns the tiny bundle (same seed) whose tables it holds."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    espeak = espeak_binary()
    wav_dir = out_dir.parent / f"{out_dir.name}-wav"
    wav_dir.mkdir(exist_ok=True)
    rows = []
    for i, text in enumerate(SENTENCES[:count]):
        wav = wav_dir / f"utt{i:03d}.wav"
        subprocess.run([espeak, "-w", str(wav), text], check=True, capture_output=True)
        rows.append(
            {
                "speech_folder": str(wav_dir),
                "speech_file": wav.name,
                "answer_text": text,
                "id": f"utt{i:03d}",
            }
        )
    data_path = wav_dir / "data.json"
    data_path.write_text(json.dumps(rows))
    code = prepare_main(
        [
            "--data_path",
            str(data_path),
            "--out_dir",
            str(out_dir),
            "--profile",
            "tiny",
            "--seed",
            "0",
            "--shard_size",
            str(max(1, count // 2)),
            "--no_progress",
        ]
    )
    assert code == 0, "llmvox-prepare failed"
    return build_tiny(seed=0)
