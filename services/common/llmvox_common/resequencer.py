"""Puts the audio parts of one turn back in `(seq, part)` order (docs/tts-pool.md, contract).

Sentences of a turn are synthesised by different replicas at once, and a job whose replica died
is regenerated from the start by another one, so parts reach the gateway out of order and some
twice. Greedy decoding is deterministic, so a part is identified by its position alone.

Release order: seq `first_seq` part 0, part 1, ... up to that seq's terminal part (the first with
`last` set or with `error` set), then the next seq from part 0, until the terminal part of the
turn's final seq, after which the turn is `finished`. Parts never carry the job's `last` flag, so
the final seq comes from the caller: the constructor's `last_seq`, or `done_after(seq)` once the
gateway has enqueued its final sentence.

Error parts truncate: a replica that gives up on a job (deadline passed, failure) sends an error
part numbered from its own restart, which may lie on positions another replica already filled.
Without truncation such a seq would never end and the turn would stall, so an error part ends its
seq at its own position or at the first position not yet released, whichever is later; it is
renumbered to that position so released parts stay contiguous, and parts of that seq after it
are dropped as `late`.

Pure and synchronous: no clock, no I/O; `TTSClient.parts` feeds it from Redis.
"""

from __future__ import annotations

import dataclasses

from llmvox_common.tts_streams import AudioPart

DEFAULT_MAX_BUFFERED = 1024


class ResequencerOverflow(RuntimeError):
    """More parts wait for an earlier one than the buffer bound allows."""


def _terminal(part: AudioPart) -> bool:
    return part.last or part.error is not None


class Resequencer:
    """Buffers the out-of-order parts of one turn and releases them in `(seq, part)` order."""

    def __init__(
        self,
        *,
        first_seq: int = 0,
        last_seq: int | None = None,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
    ) -> None:
        if first_seq < 0:
            raise ValueError(f"first_seq must be >= 0, got {first_seq}")
        if max_buffered < 1:
            raise ValueError(f"max_buffered must be >= 1, got {max_buffered}")
        self._first_seq = first_seq
        self._last_seq: int | None = None
        self._max_buffered = max_buffered
        self._next_seq = first_seq
        self._next_part = 0
        self._finished = False
        self._buffer: dict[tuple[int, int], AudioPart] = {}
        # Position of the terminal part of every seq whose end is known: released seqs (to tell a
        # duplicate from a late part) and buffered ones (to drop parts past the end early).
        self._ends: dict[int, int] = {}
        self._duplicates_dropped = 0
        self._late_dropped = 0
        self._out_of_range_dropped = 0
        if last_seq is not None:
            self.done_after(last_seq)

    # -- state -------------------------------------------------------------------------------

    @property
    def next_seq(self) -> int:
        """The seq of the next part to release."""
        return self._next_seq

    @property
    def next_part(self) -> int:
        """The part number of the next part to release."""
        return self._next_part

    @property
    def last_seq(self) -> int | None:
        """The turn's final seq, once known."""
        return self._last_seq

    @property
    def finished(self) -> bool:
        """True once the terminal part of `last_seq` has been released."""
        return self._finished

    @property
    def buffered(self) -> int:
        """Parts held back, waiting for an earlier one."""
        return len(self._buffer)

    @property
    def duplicates_dropped(self) -> int:
        """Parts whose position was already released or buffered."""
        return self._duplicates_dropped

    @property
    def late_dropped(self) -> int:
        """Parts past their seq's end (after an error part truncated it), including any that
        were buffered before the truncation."""
        return self._late_dropped

    @property
    def out_of_range_dropped(self) -> int:
        """Parts of seqs outside `[first_seq, last_seq]` (another turn's audio)."""
        return self._out_of_range_dropped

    # -- input -------------------------------------------------------------------------------

    def done_after(self, seq: int) -> None:
        """Declare `seq` the turn's final seq (again with the same value is a no-op).

        Buffered parts of later seqs are dropped as out of range; the turn is finished at once
        when the terminal part of `seq` was already released.
        """
        if self._last_seq is not None:
            if seq != self._last_seq:
                raise ValueError(f"last_seq already set to {self._last_seq}, got {seq}")
            return
        if seq < self._first_seq or seq < self._next_seq - 1:
            raise ValueError(
                f"last_seq {seq} is before parts already released (next seq {self._next_seq}, "
                f"first seq {self._first_seq})"
            )
        self._last_seq = seq
        for key in [key for key in self._buffer if key[0] > seq]:
            del self._buffer[key]
            self._out_of_range_dropped += 1
        if self._next_seq > seq:
            self._finished = True

    def push(self, part: AudioPart) -> list[AudioPart]:
        """Take one part; returns the parts that are now releasable, in order (maybe none)."""
        seq, position = part.seq, part.part
        if seq < self._first_seq or (self._last_seq is not None and seq > self._last_seq):
            self._out_of_range_dropped += 1
            return []
        if seq < self._next_seq:
            self._drop_closed(seq, position)
            return []
        end = self._ends.get(seq)
        if part.error is not None:
            return self._push_error(part, end)
        if end is not None and position > end:
            self._late_dropped += 1
            return []
        if (seq, position) in self._buffer or (
            seq == self._next_seq and position < self._next_part
        ):
            self._duplicates_dropped += 1
            return []
        if (seq, position) != (self._next_seq, self._next_part):
            self._hold(part)
            if part.last:
                self._truncate(seq, position)
            return []
        return self._release_from(part)

    # -- internals ---------------------------------------------------------------------------

    def _drop_closed(self, seq: int, position: int) -> None:
        if position <= self._ends[seq]:
            self._duplicates_dropped += 1
        else:
            self._late_dropped += 1

    def _push_error(self, part: AudioPart, end: int | None) -> list[AudioPart]:
        seq = part.seq
        floor = self._next_part if seq == self._next_seq else 0
        position = max(part.part, floor)
        if end is not None and position > end:
            self._late_dropped += 1
            return []
        held = self._buffer.get((seq, position))
        if held is not None and held.error is not None:
            self._duplicates_dropped += 1
            return []
        if position != part.part:
            part = dataclasses.replace(part, part=position)
        self._truncate(seq, position)
        if held is not None:
            # The error supersedes a normal part on the same position; that part is not audio we
            # will play, so it counts with the truncated ones.
            del self._buffer[(seq, position)]
            self._late_dropped += 1
        if (seq, position) != (self._next_seq, self._next_part):
            self._hold(part)
            return []
        return self._release_from(part)

    def _truncate(self, seq: int, end: int) -> None:
        """Record that `seq` ends at `end` and drop buffered parts of it beyond."""
        self._ends[seq] = end
        for key in [key for key in self._buffer if key[0] == seq and key[1] > end]:
            del self._buffer[key]
            self._late_dropped += 1

    def _hold(self, part: AudioPart) -> None:
        if len(self._buffer) >= self._max_buffered:
            raise ResequencerOverflow(
                f"{len(self._buffer)} parts already wait for seq {self._next_seq} part "
                f"{self._next_part}; refusing seq {part.seq} part {part.part} "
                f"(max_buffered={self._max_buffered})"
            )
        self._buffer[(part.seq, part.part)] = part

    def _release_from(self, part: AudioPart) -> list[AudioPart]:
        """Release `part` (at the next position) and the buffered parts that follow it; parts of
        seqs after `last_seq` were never buffered, so this stops at the turn's end by itself."""
        released: list[AudioPart] = []
        current: AudioPart | None = part
        while current is not None:
            released.append(current)
            if _terminal(current):
                self._ends[current.seq] = current.part
                self._finished = current.seq == self._last_seq
                self._next_seq, self._next_part = current.seq + 1, 0
            else:
                self._next_part = current.part + 1
            current = self._buffer.pop((self._next_seq, self._next_part), None)
        return released
