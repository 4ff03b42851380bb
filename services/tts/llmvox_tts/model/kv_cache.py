"""Key/value cache for batched incremental decoding of independent sequences.

Each batch row ("slot") is its own sequence with its own length, so sessions can join and leave
between steps (continuous batching). A slot's next position is its length, which is the
position upstream assigns as well (MODEL_SPEC 3.4). Memory grows on demand up to `block_size`
positions, because preallocating 8192 positions for every slot would cost ~200 MB per slot at the
published size.
"""

from __future__ import annotations

import torch


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
        capacity = min(initial_capacity, max_positions)
        # (layer, slot, head, position, head_dim): the layout SDPA reads without a transpose.
        shape = (n_layer, num_slots, n_head, capacity, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=self.device)
        self.values = torch.zeros(shape, dtype=dtype, device=self.device)
        # Host copy of the lengths so scheduling never waits on the device.
        self.lengths: list[int] = [0] * num_slots
        self._positions = torch.zeros(num_slots, dtype=torch.long, device=self.device)

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def reset(self, slot: int | None = None) -> None:
        """Empty one slot (a new segment starts at position 0), or all of them."""
        slots = range(self.num_slots) if slot is None else (slot,)
        for s in slots:
            self.lengths[s] = 0
            self._positions[s] = 0

    def positions(self, slots: list[int] | None) -> torch.Tensor:
        """Device tensor of the next position of each slot (= its current length)."""
        if slots is None:
            return self._positions
        return self._positions[slots]

    def reserve(self, slots: list[int] | None) -> int:
        """Check room for one more position in `slots`; grow the buffers if needed.

        Returns the number of key positions the next step attends over (max length + 1).
        """
        chosen = range(self.num_slots) if slots is None else slots
        longest = max((self.lengths[s] for s in chosen), default=0)
        if longest >= self.max_positions:
            raise ValueError(
                f"sequence would exceed block_size={self.max_positions} positions; "
                "a segment can have at most block_size steps"
            )
        if longest >= self.capacity:
            self._grow(min(max(2 * self.capacity, longest + 1), self.max_positions))
        return longest + 1

    def advance(self, slots: list[int] | None) -> None:
        chosen = range(self.num_slots) if slots is None else slots
        for s in chosen:
            self.lengths[s] += 1
        if slots is None:
            self._positions += 1
        else:
            self._positions[slots] += 1

    def _grow(self, capacity: int) -> None:
        def grown(old: torch.Tensor) -> torch.Tensor:
            new = old.new_zeros((*old.shape[:3], capacity, old.shape[4]))
            new[:, :, :, : old.shape[3]] = old
            return new

        self.keys = grown(self.keys)
        self.values = grown(self.values)
