"""The dump-size rule of the upstream replica (docs/streaming.md): how many speech tokens go into
each decoded audio chunk.

Small first chunks give low latency; growing sizes (×3 up to a cap) give the vocoder more context
per call later on. The size never shrinks during a request.
"""

from __future__ import annotations

from ..constants import DEFAULT_MAX_DUMP_SIZE

GROWTH_FACTOR = 3


class ChunkSchedule:
    """Current dump size of one replica and the decision when to flush pending tokens."""

    def __init__(
        self,
        initial: int,
        max_size: int = DEFAULT_MAX_DUMP_SIZE,
        growth: int = GROWTH_FACTOR,
    ) -> None:
        if initial < 1 or max_size < 1 or growth < 1:
            raise ValueError(
                f"sizes and growth must be positive: initial={initial}, max_size={max_size}, "
                f"growth={growth}"
            )
        self.max_size = max_size
        self.growth = growth
        self._size = initial

    @property
    def size(self) -> int:
        return self._size

    def grow(self) -> None:
        # Upstream only grows below the cap, so an initial size above the cap is kept, not cut.
        if self._size < self.max_size:
            self._size = min(self.growth * self._size, self.max_size)

    def take(self, pending: list[int], saw_eoa: bool) -> list[int] | None:
        """Remove and return the chunk to decode now from `pending` (in place), or None.

        A full chunk takes exactly `size` tokens. Otherwise, once the end of audio was seen
        (`saw_eoa`, upstream: the EOA id is in `pending`), everything pending is flushed, the
        EOA token included. Each flush grows the size.
        """
        if len(pending) >= self._size:
            chunk = pending[: self._size]
            del pending[: self._size]
        elif saw_eoa and pending:
            chunk = pending[:]
            pending.clear()
        else:
            return None
        self.grow()
        return chunk
