"""The upstream training dataset list (docs/training-data.md, "Dataset format").

Two container formats hold the same rows:
- a JSON list (upstream): `[{"speech_folder", "speech_file", "answer_text", "id"}, ...]`;
- JSONL: one such object per line (easier to append to and to stream for large corpora).

The audio of a row is `<folder>/<speech_file>`, or `<folder>/<id>.wav` when `speech_file` is
absent (the upstream `SpeechDataset` convention); `<folder>` is `--speech_data_folder` when given,
else the row's `speech_folder`. Bad rows are reported and skipped, never fatal: one broken file
must not cost a multi-hour preparation run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..constants import SAMPLE_RATE
from ..model.resample import convert_audio


@dataclass(frozen=True)
class DatasetRow:
    index: int  # position in the dataset file: it fixes the shard of the row (resumability)
    id: str
    text: str
    audio_path: Path


@dataclass(frozen=True)
class RowProblem:
    index: int
    id: str | None
    reason: str

    def __str__(self) -> str:
        where = f"row {self.index}" + (f" (id {self.id!r})" if self.id is not None else "")
        return f"{where}: {self.reason}"


class AudioError(ValueError):
    """The audio of a row cannot be used (unreadable, unsupported, empty)."""


def read_records(data_path: Path) -> list[Any]:
    """The raw rows of a JSON list or a JSONL file (format by content, not by the suffix).

    A JSONL line that is not valid JSON becomes a `None` row, so it is reported like any other
    bad row instead of aborting the run.
    """
    text = data_path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        records = json.loads(stripped)
        if not isinstance(records, list):
            raise ValueError(f"{data_path}: expected a JSON list of rows")
        return records
    if not stripped:
        return []
    if stripped.startswith("{") and data_path.suffix.lower() == ".json":
        # A single object is not a dataset; JSONL must be named .jsonl to avoid this ambiguity.
        try:
            json.loads(stripped)
        except json.JSONDecodeError:
            pass  # several objects: JSONL content in a .json file, accept it below
        else:
            raise ValueError(f"{data_path}: expected a JSON list of rows, found one object")
    records: list[Any] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            records.append(None)
    return records


def validate_rows(
    records: Iterable[Any], speech_data_folder: Path | None = None
) -> tuple[list[DatasetRow], list[RowProblem]]:
    """Checks that need no decoding: row shape, id, text, duplicates, audio file present.

    Unreadable audio is found later, when the audio is read (`load_audio_24k`).
    """
    rows: list[DatasetRow] = []
    problems: list[RowProblem] = []
    seen: set[str] = set()
    for index, rec in enumerate(records):
        row_or_reason = _check_row(index, rec, speech_data_folder)
        if isinstance(row_or_reason, RowProblem):
            problems.append(row_or_reason)
            continue
        row = row_or_reason
        if row.id in seen:
            problems.append(RowProblem(index, row.id, "duplicate id"))
            continue
        seen.add(row.id)
        rows.append(row)
    return rows, problems


def _check_row(index: int, rec: Any, folder_override: Path | None) -> DatasetRow | RowProblem:
    if not isinstance(rec, dict):
        return RowProblem(index, None, f"bad row shape: expected an object, got {_kind(rec)}")
    raw_id = rec.get("id")
    # Upstream ids are strings or integers; anything else cannot name a file or a shard item.
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or str(raw_id).strip() == "":
        return RowProblem(index, None, "bad row shape: missing or invalid 'id'")
    row_id = str(raw_id)
    text = rec.get("answer_text")
    if not isinstance(text, str):
        return RowProblem(index, row_id, "bad row shape: 'answer_text' missing or not a string")
    if not text.strip():
        return RowProblem(index, row_id, "empty text")
    speech_file = rec.get("speech_file")
    if speech_file is not None and (not isinstance(speech_file, str) or not speech_file):
        return RowProblem(index, row_id, "bad row shape: 'speech_file' is not a file name")
    folder: Path | None = folder_override
    if folder is None:
        raw_folder = rec.get("speech_folder")
        if raw_folder is not None and not isinstance(raw_folder, str):
            return RowProblem(index, row_id, "bad row shape: 'speech_folder' is not a path")
        folder = Path(raw_folder) if raw_folder else None
    name = speech_file if speech_file is not None else f"{row_id}.wav"
    if Path(name).is_absolute():
        audio = Path(name)
    elif folder is None:
        return RowProblem(index, row_id, "no audio folder (no 'speech_folder' nor override)")
    else:
        audio = folder / name
    if not audio.is_file():
        return RowProblem(index, row_id, f"missing audio file {audio}")
    return DatasetRow(index=index, id=row_id, text=text, audio_path=audio)


def _kind(value: Any) -> str:
    return "null (unparsable line?)" if value is None else type(value).__name__


def load_dataset(
    data_path: Path, speech_data_folder: Path | None = None
) -> tuple[list[DatasetRow], list[RowProblem], int]:
    """Valid rows, problems, and the number of raw rows (shards are cut over the raw rows)."""
    records = read_records(data_path)
    rows, problems = validate_rows(records, speech_data_folder)
    return rows, problems, len(records)


# ------------------------------------------------------------------------------------ audio


def read_audio(path: Path) -> tuple[torch.Tensor, int]:
    """(C, T) float32 in [-1, 1] and the sample rate.

    Training sets come in any format libsndfile reads (WAV of every width, FLAC, Ogg), and keep
    their channels until `load_audio_24k` mixes them; serving paths read WAV through
    `llmvox_common.audio` instead, which accepts only what a client may send.
    """
    import soundfile  # ships with llmvox-common; imported here to keep model-side imports light

    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(f"unreadable audio: {err}") from None
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(rate)


def load_audio_24k(path: Path) -> torch.Tensor:
    """(T,) mono float32 at 24 kHz: channels averaged, then resampled (docs/wavtokenizer.md)."""
    wav, rate = read_audio(path)
    if wav.shape[-1] == 0:
        raise AudioError("empty audio (no samples)")
    if rate <= 0:
        raise AudioError(f"invalid sample rate {rate}")
    return convert_audio(wav, rate, SAMPLE_RATE, 1)[0]
