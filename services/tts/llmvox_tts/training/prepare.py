"""`llmvox-prepare`: tokenise a speech dataset once into the prepared format of training/shards.py.

Rows are cut into shards by their position in the dataset file (shard k holds rows
k·shard_size .. (k+1)·shard_size − 1, valid or not), so a rerun with the same inputs maps every
row to the same shard. A shard counts as done when its file exists and meta.json lists it; the
meta is rewritten after every finished shard, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..constants import SAMPLE_RATE
from ..model.byt5_tokenizer import ByT5Tokenizer
from ..model.wavtokenizer import WavTokenizer
from .dataset import AudioError, DatasetRow, RowProblem, load_audio_24k, load_dataset
from .shards import (
    META_FILE,
    PreparedItem,
    read_meta,
    shard_name,
    write_meta,
    write_shard,
    write_tables,
)

log = logging.getLogger(__name__)

UNTRAINED_NOTE = "untrained tiny profile: RANDOM-WEIGHT WavTokenizer and text table"
MAX_REPORTED_PROBLEMS = 20


@dataclass(frozen=True)
class EncoderSpec:
    """How to build the WavTokenizer; plain data so that worker processes can rebuild it."""

    profile: str | None = None  # "tiny", or None for a checkpoint
    seed: int = 0
    wav_model_path: str | None = None
    wav_config_path: str | None = None
    device: str = "cpu"

    def describe(self) -> str:
        if self.profile == "tiny":
            return f"{UNTRAINED_NOTE} (build_tiny seed {self.seed})"
        return f"WavTokenizer {self.wav_model_path} (config {self.wav_config_path})"

    def build(self) -> WavTokenizer:
        if self.profile == "tiny":
            from ..loading.bundle import build_tiny

            wt = build_tiny(self.seed).wavtokenizer
        else:
            from ..loading.wavtokenizer import load_wavtokenizer

            assert self.wav_model_path is not None
            wt = load_wavtokenizer(self.wav_model_path, self.wav_config_path)
        return wt.to(self.device).eval()


@dataclass
class ShardResult:
    index: int
    entry: dict[str, Any]  # the meta.json shard entry
    problems: list[RowProblem]


@dataclass
class Summary:
    items_ok: int = 0
    items_skipped: int = 0
    seconds: float = 0.0
    speech_tokens: int = 0
    text_ids: int = 0
    shards_total: int = 0
    shards_reused: int = 0
    shards_written: int = 0
    problems: list[str] = field(default_factory=list)
    untrained: bool = False

    @property
    def hours(self) -> float:
        return self.seconds / 3600.0

    def lines(self) -> list[str]:
        out = [
            f"items ok {self.items_ok}, skipped {self.items_skipped}",
            f"audio {self.hours:.4f} h ({self.seconds:.1f} s), speech tokens {self.speech_tokens},"
            f" text ids {self.text_ids}",
            f"shards {self.shards_total} (written now {self.shards_written},"
            f" reused {self.shards_reused})",
        ]
        if self.problems:
            out.append(f"first skip reasons ({len(self.problems)} shown):")
            out.extend(f"  - {p}" for p in self.problems)
        if self.untrained:
            out.append(f"WARNING: {UNTRAINED_NOTE}; the tokens are NOT real speech codes")
        return out


# ------------------------------------------------------------------------------ shard work

_WORKER_ENCODER: WavTokenizer | None = None


def _init_worker(spec: EncoderSpec) -> None:
    global _WORKER_ENCODER
    # One thread per process: N workers on N cores beat N×N oversubscribed threads.
    torch.set_num_threads(1)
    logging.getLogger("llmvox_tts.loading.bundle").setLevel(logging.ERROR)  # said once by main
    _WORKER_ENCODER = spec.build()


def _worker_shard(index: int, rows: list[DatasetRow], out_dir: str, device: str) -> ShardResult:
    assert _WORKER_ENCODER is not None, "worker not initialised"
    return prepare_shard(index, rows, Path(out_dir), _WORKER_ENCODER, device)


def prepare_shard(
    index: int, rows: Sequence[DatasetRow], out_dir: Path, encoder: WavTokenizer, device: str
) -> ShardResult:
    """Encode the rows of one shard and write it; rows whose audio fails are skipped."""
    tokenizer = ByT5Tokenizer()
    items: list[PreparedItem] = []
    problems: list[RowProblem] = []
    text_ids = 0
    for row in rows:
        try:
            wav = load_audio_24k(row.audio_path)
        except (AudioError, OSError, ValueError) as err:
            problems.append(RowProblem(row.index, row.id, f"unreadable audio: {err}"))
            continue
        with torch.inference_mode():
            codes = encoder.encode_24k(wav.to(device)[None])[1][0].cpu()  # (1, F) -> (F,)
        items.append(
            PreparedItem(id=row.id, text=row.text, codes=codes, seconds=wav.shape[-1] / SAMPLE_RATE)
        )
        text_ids += len(tokenizer.encode_words(row.text))
    name = shard_name(index)
    write_shard(out_dir / name, items)
    entry = {
        "file": name,
        "items": len(items),
        "seconds": float(sum(it.seconds for it in items)),
        "tokens": int(sum(int(it.codes.numel()) for it in items)),
        # Beyond the reader's four keys: so a resumed run still reports whole-run totals.
        "skipped": len(problems),
        "text_ids": text_ids,
    }
    return ShardResult(index=index, entry=entry, problems=problems)


# ------------------------------------------------------------------------------------ driver


def _fingerprint(
    data_path: Path, speech_folder: Path | None, shard_size: int, spec: EncoderSpec
) -> dict[str, Any]:
    # What decides the content of every shard; a rerun with other inputs must not mix results.
    return {
        "data_sha256": hashlib.sha256(data_path.read_bytes()).hexdigest(),
        "speech_data_folder": str(speech_folder.resolve()) if speech_folder else None,
        "shard_size": shard_size,
        "encoder": spec.describe(),
    }


def prepare(
    data_path: Path,
    out_dir: Path,
    spec: EncoderSpec,
    text_table: torch.Tensor,
    codebook: torch.Tensor,
    *,
    speech_data_folder: Path | None = None,
    shard_size: int = 256,
    workers: int = 1,
    progress: bool = True,
    max_new_shards: int | None = None,
    encoder: WavTokenizer | None = None,
    echo: Callable[[str], None] = print,
) -> Summary:
    """Prepare (or resume preparing) `out_dir`. `max_new_shards` stops early (tests, batches)."""
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, problems, n_records = load_dataset(data_path, speech_data_folder)
    fingerprint = _fingerprint(data_path, speech_data_folder, shard_size, spec)
    n_shards = math.ceil(n_records / shard_size)
    by_shard: list[list[DatasetRow]] = [[] for _ in range(n_shards)]
    for row in rows:
        by_shard[row.index // shard_size].append(row)
    problems_by_shard: dict[int, list[RowProblem]] = {}
    for p in problems:
        problems_by_shard.setdefault(p.index // shard_size, []).append(p)

    done = _completed_shards(out_dir, fingerprint)
    meta_base = {
        "source": spec.describe(),
        "untrained": spec.profile == "tiny",
        "codebook_size": int(codebook.shape[0]),
        "codebook_dim": int(codebook.shape[1]),
        "text_dim": int(text_table.shape[1]),
        "sample_rate": SAMPLE_RATE,
        "data_path": str(data_path.resolve()),
        "rows": n_records,
        "fingerprint": fingerprint,
    }
    write_tables(out_dir, text_table, codebook)

    def save_meta(complete: bool) -> None:
        shards = [done[i] for i in sorted(done)]
        write_meta(out_dir, {**meta_base, "complete": complete, "shards": shards})

    save_meta(complete=len(done) == n_shards)  # records the fingerprint before any shard
    todo = [i for i in range(n_shards) if i not in done]
    if max_new_shards is not None:
        todo = todo[:max_new_shards]
    reused = len(done)
    new_problems: dict[int, list[RowProblem]] = {}

    bar = _progress(sum(len(by_shard[i]) for i in todo), progress)

    def finish(result: ShardResult) -> None:
        result.entry["skipped"] += len(problems_by_shard.get(result.index, []))
        done[result.index] = result.entry
        new_problems[result.index] = result.problems
        save_meta(complete=len(done) == n_shards)
        bar(len(by_shard[result.index]))

    if workers <= 1 or len(todo) <= 1:
        enc = encoder if encoder is not None else spec.build()
        for i in todo:
            finish(prepare_shard(i, by_shard[i], out_dir, enc, spec.device))
    else:
        # spawn, not fork: forking a process that already ran torch ops can hang in OpenMP.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(spec,)
        ) as pool:
            pending: set[Future[ShardResult]] = {
                pool.submit(_worker_shard, i, by_shard[i], str(out_dir), spec.device) for i in todo
            }
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    finish(fut.result())
    bar(None)

    summary = Summary(shards_total=n_shards, shards_reused=reused, untrained=spec.profile == "tiny")
    summary.shards_written = len(done) - reused
    for entry in done.values():
        summary.items_ok += int(entry["items"])
        summary.items_skipped += int(entry.get("skipped", 0))
        summary.seconds += float(entry["seconds"])
        summary.speech_tokens += int(entry["tokens"])
        summary.text_ids += int(entry.get("text_ids", 0))
    # Reasons of this run only (earlier runs logged theirs); validation ones are always known.
    reasons = sorted(
        [p for i in done for p in problems_by_shard.get(i, [])]
        + [p for ps in new_problems.values() for p in ps],
        key=lambda p: p.index,
    )
    summary.problems = [str(p) for p in reasons[:MAX_REPORTED_PROBLEMS]]
    if len(done) < n_shards:
        echo(f"stopped early: {len(done)} of {n_shards} shards done; rerun to resume")
    return summary


def _completed_shards(out_dir: Path, fingerprint: dict[str, Any]) -> dict[int, dict[str, Any]]:
    if not (out_dir / META_FILE).is_file():
        stray = sorted(out_dir.glob("shard-*.pt"))
        if stray:
            raise ValueError(f"{out_dir} holds shards but no {META_FILE}; use an empty directory")
        return {}
    meta = read_meta(out_dir)
    if meta.get("fingerprint") != fingerprint:
        raise ValueError(
            f"{out_dir} was prepared from other inputs (dataset, audio folder, shard size or "
            "encoder differ); use a fresh --out_dir"
        )
    done: dict[int, dict[str, Any]] = {}
    for entry in meta.get("shards", []):
        # A listed shard whose file is gone is redone; an unlisted file is overwritten.
        if (out_dir / entry["file"]).is_file():
            done[int(entry["file"][len("shard-") : -len(".pt")])] = entry
    return done


def _progress(total: int, enabled: bool) -> Callable[[int | None], None]:
    """`update(n)` adds n items; `update(None)` closes. tqdm when available, else prints."""
    if not enabled or total == 0:
        return lambda n: None
    try:
        from tqdm import tqdm
    except ImportError:
        state = {"done": 0, "t0": time.monotonic()}

        def plain(n: int | None) -> None:
            if n is None:
                return
            state["done"] += n
            rate = state["done"] / max(time.monotonic() - state["t0"], 1e-9)
            print(f"prepared {state['done']}/{total} items ({rate:.1f}/s)", file=sys.stderr)

        return plain
    bar = tqdm(total=total, unit="item", desc="tokenising", file=sys.stderr)

    def update(n: int | None) -> None:
        if n is None:
            bar.close()
        else:
            bar.update(n)

    return update


# --------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="llmvox-prepare",
        description="Tokenise a speech dataset (upstream JSON list or JSONL) into training shards.",
    )
    p.add_argument("--data_path", type=Path, required=True, help="dataset .json list or .jsonl")
    p.add_argument(
        "--speech_data_folder", type=Path, default=None, help="overrides each row's speech_folder"
    )
    p.add_argument("--out_dir", type=Path, required=True, help="prepared dataset directory")
    p.add_argument("--wav_model_path", default=None, help="WavTokenizer checkpoint (.ckpt)")
    p.add_argument("--wav_config_path", default=None, help="WavTokenizer yaml (optional)")
    p.add_argument(
        "--text_model",
        "--encoder_model_path",
        dest="text_model",
        default=None,
        help="ByT5 G2P model (file, directory or hub id) whose embedding gives the text table",
    )
    p.add_argument(
        "--profile", choices=["tiny"], default=None, help="untrained random models (tests/demos)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the tiny profile")
    p.add_argument("--shard_size", type=int, default=256)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.profile == "tiny":
        if args.wav_model_path or args.text_model:
            print("error: --profile tiny excludes --wav_model_path/--text_model", file=sys.stderr)
            return 2
        from ..loading.bundle import build_tiny

        print(f"WARNING: {UNTRAINED_NOTE}; tokens are for pipeline tests only", file=sys.stderr)
        bundle = build_tiny(args.seed)
        spec = EncoderSpec(profile="tiny", seed=args.seed, device=args.device)
        wt, text_table = bundle.wavtokenizer, bundle.text_table
    else:
        if not args.wav_model_path or not args.text_model:
            print(
                "error: give --wav_model_path and --text_model, or --profile tiny", file=sys.stderr
            )
            return 2
        from ..loading.text_embedding import load_text_table

        spec = EncoderSpec(
            wav_model_path=args.wav_model_path,
            wav_config_path=args.wav_config_path,
            device=args.device,
        )
        wt = spec.build()
        text_table = load_text_table(args.text_model)
    try:
        summary = prepare(
            args.data_path,
            args.out_dir,
            spec,
            text_table,
            wt.codebook,
            speech_data_folder=args.speech_data_folder,
            shard_size=args.shard_size,
            workers=args.workers,
            progress=not args.no_progress,
            encoder=wt.to(args.device),
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"prepared {args.out_dir}")
    for line in summary.lines():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
