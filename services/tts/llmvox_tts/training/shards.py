"""The prepared-data format shared by `llmvox-prepare` (writer) and `llmvox-train` (reader).

A prepared directory holds:
- `meta.json`: format version, how the audio was tokenised (profile or checkpoint), codebook
  size and width, text width, and the list of complete shards with their item counts, hours and
  tokens;
- `tables.pt`: the frozen lookup tables training needs (`text_table` (386, D), `codebook`
  (V, C)), so training never loads WavTokenizer or T5 again;
- `shard-NNNNN.pt`: items as flat int16 arrays with offsets (compact, one `torch.load` each):
  `ids` (list of str), `texts` (list of str, the answer texts), `codes` (int16, all items'
  WavTokenizer codes as the encoder returned them, EOA not yet removed) with `code_offsets`
  (int64, n + 1), and `seconds` (float32, n).
Alignment (EOA removal, words + `</s>`, padding) happens when batches are built
(training/alignment.py), exactly as the golden `training_batch` case specifies.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
META_FILE = "meta.json"
TABLES_FILE = "tables.pt"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.pt"


@dataclass(frozen=True)
class PreparedItem:
    id: str
    text: str
    codes: torch.Tensor  # (L,) int64
    seconds: float


def write_shard(path: Path, items: Sequence[PreparedItem]) -> None:
    """Write atomically: a shard is either whole on disk or absent (resumable preparation)."""
    lengths = [int(it.codes.numel()) for it in items]
    offsets = torch.zeros(len(items) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0) if items else offsets[1:]
    codes = (
        torch.cat([it.codes.reshape(-1) for it in items]).to(torch.int16)
        if items
        else torch.zeros(0, dtype=torch.int16)
    )
    payload = {
        "ids": [it.id for it in items],
        "texts": [it.text for it in items],
        "codes": codes,
        "code_offsets": offsets,
        "seconds": torch.tensor([it.seconds for it in items], dtype=torch.float32),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_shard(path: Path) -> list[PreparedItem]:
    data = torch.load(path, map_location="cpu", weights_only=True)
    offsets = data["code_offsets"].tolist()
    codes = data["codes"].to(torch.int64)
    return [
        PreparedItem(
            id=data["ids"][i],
            text=data["texts"][i],
            codes=codes[offsets[i] : offsets[i + 1]],
            seconds=float(data["seconds"][i]),
        )
        for i in range(len(data["ids"]))
    ]


def write_tables(out_dir: Path, text_table: torch.Tensor, codebook: torch.Tensor) -> None:
    torch.save(
        {
            "text_table": text_table.detach().cpu().float(),
            "codebook": codebook.detach().cpu().float(),
        },
        out_dir / TABLES_FILE,
    )


def read_tables(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    tables = torch.load(data_dir / TABLES_FILE, map_location="cpu", weights_only=True)
    return tables["text_table"], tables["codebook"]


def write_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    tmp = out_dir / (META_FILE + ".tmp")
    tmp.write_text(json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2))
    tmp.replace(out_dir / META_FILE)


def read_meta(data_dir: Path) -> dict[str, Any]:
    path = data_dir / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{data_dir} is not a prepared dataset (no {META_FILE})")
    meta = json.loads(path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {meta.get('format_version')}, expected 1")
    return meta


def iter_items(data_dir: Path) -> Iterator[PreparedItem]:
    for name in read_meta(data_dir)["shards"]:
        yield from read_shard(data_dir / name["file"])
