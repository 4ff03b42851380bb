"""A small prepared dataset made here, independent of `llmvox-prepare`: espeak-ng speech,
encoded by the tiny WavTokenizer, written in the shard format the trainer reads."""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch

from llmvox_common.audio import read_wav
from llmvox_tts.loading.bundle import ModelBundle, build_tiny
from llmvox_tts.model.resample import convert_audio
from llmvox_tts.training.shards import (
    PreparedItem,
    shard_name,
    write_meta,
    write_shard,
    write_tables,
)

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
    """Writes a prepared directory; returns the tiny bundle whose tables it holds."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bundle = build_tiny(seed=0)
    espeak = espeak_binary()
    wav_dir = out_dir / "wav"
    wav_dir.mkdir(exist_ok=True)
    items: list[PreparedItem] = []
    for i, text in enumerate(SENTENCES[:count]):
        wav = wav_dir / f"utt{i:03d}.wav"
        subprocess.run([espeak, "-w", str(wav), text], check=True, capture_output=True)
        samples, rate = read_wav(wav)
        audio = convert_audio(torch.from_numpy(samples)[None], rate, 24_000, 1)
        with torch.inference_mode():
            codes = bundle.wavtokenizer.encode(audio[0], 24_000)[0]
        items.append(
            PreparedItem(
                id=f"utt{i:03d}",
                text=text,
                codes=codes.to(torch.int64),
                seconds=audio.shape[-1] / 24_000,
            )
        )
    half = len(items) // 2
    shards = []
    for index, part in enumerate((items[:half], items[half:])):
        write_shard(out_dir / shard_name(index), part)
        shards.append({"file": shard_name(index), "items": len(part)})
    write_tables(out_dir, bundle.text_table, bundle.wavtokenizer.codebook)
    write_meta(
        out_dir,
        {
            "tokenizer": "tiny",
            "codebook_size": int(bundle.wavtokenizer.codebook.shape[0]),
            "codebook_dim": int(bundle.wavtokenizer.codebook.shape[1]),
            "text_dim": int(bundle.text_table.shape[1]),
            "shards": shards,
        },
    )
    return bundle
