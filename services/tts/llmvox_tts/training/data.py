"""Batches for `llmvox-train`: a prepared directory in memory, split, bucketed and sharded.

Every micro-batch is a pure function of (seed, micro-batch number), so a resumed run draws the
same data as an uninterrupted one, and every DDP rank knows which part of a global batch is its
own without talking to the others.

Layout of one optimizer step (nanoGPT's convention: `gradient_accumulation_steps` is the total
over all ranks, each rank runs `gradient_accumulation_steps // world_size` micro-steps):
the step draws `accum_total` micro-batches of `batch_size` items; rank r's k-th micro-step takes
micro-batch `k * world_size + r`. A single process (world 1) therefore sees exactly the
micro-batches a DDP run of the same global batch splits between its ranks.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..constants import EOA_TOKEN_ID
from ..model.byt5_tokenizer import ByT5Tokenizer
from .alignment import align_item, collate, decoder_inputs
from .shards import PreparedItem, iter_items, read_meta, read_tables

log = logging.getLogger(__name__)


def held_out(item_id: str, val_fraction: float) -> bool:
    """Stable across runs, machines and dataset growth: depends on the id alone."""
    return _id_fraction(item_id) < val_fraction


def _id_fraction(item_id: str) -> float:
    digest = hashlib.sha256(item_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def decoder_steps(item: PreparedItem) -> int:
    """Rows the decoder sees for this item: its codes without EOA, plus the final EOA."""
    return int((item.codes != EOA_TOKEN_ID).sum()) + 1


@dataclass(frozen=True)
class Split:
    items: list[PreparedItem]
    lengths: list[int]  # decoder steps of each item


@dataclass(frozen=True)
class Batch:
    x: torch.Tensor  # (B, S, D + C) decoder input rows
    targets: torch.Tensor  # (B, S), LOSS_IGNORE_INDEX where padded

    @property
    def speech_tokens(self) -> int:
        return int((self.targets >= 0).sum())


class PreparedData:
    """All items of a prepared directory in memory, plus the frozen tables
    (docs/training-data.md)."""

    def __init__(self, data_dir: str | Path, *, val_fraction: float, block_size: int) -> None:
        self.data_dir = Path(data_dir)
        self.meta = read_meta(self.data_dir)
        self.text_table, self.codebook = read_tables(self.data_dir)
        self.tokenizer = ByT5Tokenizer()
        self.block_size = block_size
        items = list(iter_items(self.data_dir))
        if not items:
            raise ValueError(f"{self.data_dir} holds no items")
        fitting = [it for it in items if decoder_steps(it) <= block_size]
        if len(fitting) < len(items):
            # Upstream draws one unchecked replacement batch, which can still crash the step;
            # dropping the items that can never fit is the deterministic equivalent.
            log.warning(
                "dropping %d of %d items longer than block_size=%d decoder steps",
                len(items) - len(fitting),
                len(items),
                block_size,
            )
        if not fitting:
            raise ValueError(f"no item of {self.data_dir} fits block_size={block_size}")
        val = [it for it in fitting if held_out(it.id, val_fraction)]
        if val_fraction > 0 and not val and len(fitting) > 1:
            # A small dataset may hash no id below the fraction: hold out the lowest one.
            val = [min(fitting, key=lambda it: _id_fraction(it.id))]
        val_ids = {it.id for it in val}
        train = [it for it in fitting if it.id not in val_ids]
        if not train:
            raise ValueError(f"val_fraction={val_fraction} leaves no training items")
        self.train = Split(train, [decoder_steps(it) for it in train])
        self.val = Split(val, [decoder_steps(it) for it in val])

    @property
    def text_dim(self) -> int:
        return int(self.text_table.shape[1])

    @property
    def codebook_dim(self) -> int:
        return int(self.codebook.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.codebook.shape[0])

    def batch(self, items: Sequence[PreparedItem]) -> Batch:
        aligned = [
            align_item(it.codes.tolist(), it.text, self.codebook, self.tokenizer) for it in items
        ]
        collated = collate(aligned, self.codebook)
        steps = collated.targets.shape[1]
        if steps > self.block_size:
            raise ValueError(
                f"batch of {steps} decoder steps exceeds block_size={self.block_size} "
                f"(items {[it.id for it in items]})"
            )
        return Batch(x=decoder_inputs(collated, self.text_table), targets=collated.targets)


class BucketedSampler:
    """Micro-batches of `batch_size` items in a fixed order derived from `seed` alone.

    Each epoch: a seeded permutation is cut into buckets of `bucket_batches` micro-batches,
    each bucket is sorted by length (little padding per micro-batch), and the epoch's
    micro-batches are shuffled with the same generator (no long-to-short drift in time).
    Micro-batch m is epoch m // per_epoch; the epoch's order is cached.
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, seed: int, bucket_batches: int = 64
    ) -> None:
        if not lengths:
            raise ValueError("no items to sample from")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.bucket_batches = bucket_batches
        # A set smaller than one batch repeats items so that every micro-batch is full.
        self.per_epoch = max(1, len(self.lengths) // batch_size)
        self._epoch = -1
        self._order: list[list[int]] = []

    def _build(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self.lengths)
        perm = torch.randperm(n, generator=generator).tolist()
        while len(perm) < self.batch_size:
            perm += perm[: self.batch_size - len(perm)]
        perm = perm[: self.per_epoch * self.batch_size]
        bucket = self.bucket_batches * self.batch_size
        batches: list[list[int]] = []
        for start in range(0, len(perm), bucket):
            chunk = sorted(perm[start : start + bucket], key=lambda i: (self.lengths[i], i))
            batches += [
                chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
            ]
        shuffle = torch.randperm(len(batches), generator=generator).tolist()
        return [batches[i] for i in shuffle]

    def micro_batch(self, index: int) -> list[int]:
        epoch, position = divmod(index, self.per_epoch)
        if epoch != self._epoch:
            self._order, self._epoch = self._build(epoch), epoch
        return self._order[position]


def rank_micro_batches(step: int, accum_total: int, rank: int, world_size: int) -> list[int]:
    """Micro-batch numbers rank `rank` runs, in order, for optimizer step `step`."""
    if accum_total % world_size:
        raise ValueError(
            f"gradient_accumulation_steps={accum_total} is not divisible by world_size={world_size}"
        )
    return [step * accum_total + k * world_size + rank for k in range(accum_total // world_size)]
