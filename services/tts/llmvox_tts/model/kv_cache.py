"""Key/value cache for batched incremental decoding of independent sequences.

Each batch row ("slot") is its own sequence with its own length, so sessions can join and leave
between steps (continuous batching). A slot's next position is its length, which is the
position upstream assigns as well (docs/model.md). Memory grows on demand up to `block_size`
positions, because preallocating 8192 positions for every slot would cost ~200 MB per slot at the
published size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepIndex:
    """Where one decoding step reads and writes, computed once for all layers."""

    slots: list[int]  # cache slot of each input row (host copy)
    rows: torch.Tensor  # (N,) the same on the device
    positions: torch.Tensor  # (N,) position of each new row (= the slot's length)
    span: int  # key positions attended over: the longest length + 1
    visible: torch.Tensor | None  # (N, 1, 1, span) True where a row may attend; None: all
    contiguous: bool  # rows are slots 0..N-1, so the cache can be sliced instead of gathered
    shared_position: int | None  # every row's position, when they are all equal


class KVCache:
    def __init__(
        self,
        *,
        n_layer: int,
        n_head: int,
        head_dim: int,
        num_slots: int,
        max_positions: int,
        initial_capacity: int = 256,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.n_layer, self.n_head, self.head_dim = n_layer, n_head, head_dim
        self.num_slots = num_slots
        self.max_positions = max_positions
        self.dtype, self.device = dtype, torch.device(device)
        capacity = max(1, min(initial_capacity, max_positions))
        # (layer, slot, head, position, head_dim): the layout SDPA reads without a transpose.
        shape = (n_layer, num_slots, n_head, capacity, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=self.device)
        self.values = torch.zeros(shape, dtype=dtype, device=self.device)
        # Host copy of the lengths so scheduling never waits on the device.
        self.lengths: list[int] = [0] * num_slots
        self._positions = torch.zeros(num_slots, dtype=torch.long, device=self.device)
        self._all_rows = torch.arange(num_slots, device=self.device)
        self._key_index = torch.arange(max_positions, device=self.device)

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def reset(self, slot: int | None = None) -> None:
        """Empty one slot (a new segment starts at position 0), or all of them."""
        slots = range(self.num_slots) if slot is None else (slot,)
        for s in slots:
            self.lengths[s] = 0
        if slot is None:
            self._positions.zero_()
        else:
            self._positions[slot] = 0

    def prepare(self, slots: list[int] | None, n_rows: int) -> StepIndex:
        """Index one step over `slots` (None: slots 0..n_rows-1); grow the buffers if needed."""
        if slots is None:
            slots = list(range(n_rows))
        elif len(slots) != n_rows:
            raise ValueError(f"{n_rows} input rows for {len(slots)} slots")
        longest = max(self.lengths[s] for s in slots)
        if longest >= self.max_positions:
            raise ValueError(
                f"sequence would exceed block_size={self.max_positions} positions; "
                "a segment can have at most block_size steps"
            )
        if longest >= self.capacity:
            self._grow(min(max(2 * self.capacity, longest + 1), self.max_positions))
        contiguous = slots == list(range(n_rows))
        if contiguous:
            rows = self._all_rows[:n_rows]
            positions = self._positions[:n_rows]
        else:
            rows = torch.as_tensor(slots, device=self.device)
            positions = self._positions[rows]
        span = longest + 1
        if all(self.lengths[s] == longest for s in slots):
            # Same length everywhere (always so for one sequence): nothing to mask, and the
            # new keys go to one position, written by slicing rather than scattering.
            return StepIndex(slots, rows, positions, span, None, contiguous, longest)
        visible = self._key_index[:span][None, :] <= positions[:, None]  # (N, span)
        return StepIndex(slots, rows, positions, span, visible[:, None, None, :], contiguous, None)

    def advance(self, step: StepIndex) -> None:
        for s in step.slots:
            self.lengths[s] += 1
        if step.contiguous:
            self._positions[: step.rows.shape[0]] += 1
        else:
            self._positions[step.rows] += 1

    def _grow(self, capacity: int) -> None:
        def grown(old: torch.Tensor) -> torch.Tensor:
            new = old.new_zeros((*old.shape[:3], capacity, old.shape[4]))
            new[:, :, :, : old.shape[3]] = old
            return new

        self.keys = grown(self.keys)
        self.values = grown(self.values)
