"""A small speech dataset made offline (espeak-ng), prepared by the real `llmvox-prepare` with
the tiny random-weight WavTokenizer: the training tests run the whole pipeline."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from llmvox_tts.constants import LOSS_IGNORE_INDEX
from llmvox_tts.loading.bundle import ModelBundle, build_tiny
from llmvox_tts.model.gpt import LLMVoXDecoder
from llmvox_tts.training.data import PreparedData
from llmvox_tts.training.prepare import main as prepare_main
from llmvox_tts.training.shards import iter_items

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

# More sentences built from a small vocabulary: held-out sentences then reuse words the model has
# heard, so learning (not only memorising) can show in the held-out accuracy.
_SUBJECTS = ["The old man", "A small dog", "My sister", "The farmer", "Our teacher", "A tall girl"]
_VERBS = ["found", "painted", "carried", "watched", "cleaned", "wanted"]
_OBJECTS = [
    "the red boat",
    "a green apple",
    "the wooden door",
    "a quiet garden",
    "the blue kite",
    "a heavy basket",
]
TEMPLATE_SENTENCES = [
    f"{s} {v} {o}."
    for i, s in enumerate(_SUBJECTS)
    for j, v in enumerate(_VERBS)
    for k, o in enumerate(_OBJECTS)
    if (i + 2 * j + 3 * k) % 3 == 0  # every third combination: 72 sentences
]
ALL_SENTENCES = SENTENCES + TEMPLATE_SENTENCES


def espeak_binary() -> str:
    return ensure_espeak()


def build_espeak_dataset(out_dir: Path, count: int = len(ALL_SENTENCES)) -> ModelBundle:
    """espeak-ng speech in the original dataset format, tokenised by `llmvox-prepare --profile
    tiny` into `out_dir`; returns the tiny bundle (same seed) whose tables it holds."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    espeak = espeak_binary()
    wav_dir = out_dir.parent / f"{out_dir.name}-wav"
    wav_dir.mkdir(exist_ok=True)
    rows = []
    for i, text in enumerate(ALL_SENTENCES[:count]):
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


@dataclass(frozen=True)
class HeldOutScore:
    """Teacher-forced next-token accuracy on held-out items, next to two baselines that know
    nothing of the text: always the most common training code, and "the previous code again"."""

    accuracy: float
    majority: float
    repeat_previous: float
    tokens: int


def held_out_score(decoder: LLMVoXDecoder, data: PreparedData) -> HeldOutScore:
    counts = torch.bincount(
        torch.cat([it.codes for it in data.train.items]), minlength=data.vocab_size
    )
    majority_code = int(counts.argmax())
    right = majority = repeat = total = 0
    decoder.eval()
    for item in data.val.items:
        batch = data.batch([item])
        with torch.inference_mode():
            logits, _ = decoder(batch.x, batch.targets)
        targets = batch.targets[0]
        keep = targets != LOSS_IGNORE_INDEX
        guess = logits[0].argmax(-1)
        right += int((guess[keep] == targets[keep]).sum())
        majority += int((targets[keep] == majority_code).sum())
        previous = torch.cat([targets.new_full((1,), -1), targets[:-1]])
        repeat += int((previous[keep] == targets[keep]).sum())
        total += int(keep.sum())
    return HeldOutScore(right / total, majority / total, repeat / total, total)


def distinct_codes(data_dir: Path) -> tuple[int, float]:
    """Distinct codes in a prepared directory, and the share of the most common one."""
    codes = torch.cat([it.codes for it in iter_items(data_dir)])
    counts = torch.bincount(codes)
    return int((counts > 0).sum()), float(counts.max()) / codes.numel()
