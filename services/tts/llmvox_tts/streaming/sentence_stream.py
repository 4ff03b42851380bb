"""Control state of one sentence being spoken: which text id each decoder step reads, when an
audio chunk is ready, and when to stop (pure logic, no model).

It follows the upstream replica loop (docs/streaming.md) for one sentence: each text piece is
tokenised on its own (`</s>` after it), `EOS` follows the last piece, then `[PAD]` is fed until
the model emits end-of-audio. Chunks follow the upstream dump schedule. Two things differ on
purpose, because a serving pool must bound every job:
- `max_audio_length` caps the sentence's total tokens (upstream compared it with the unsent
  tokens, which can never exceed the chunk size, so it never fired);
- a runaway guard stops a sentence after `max_tokens_per_text_id` speech tokens per text id fed
  (English speech runs at about 5 per byte; a decoder that never emits EOA would otherwise run to
  `block_size`). On both stops the pending tokens are still decoded, so no audio is dropped
  silently, and the stop reason is reported.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from ..constants import (
    DEFAULT_MAX_AUDIO_LENGTH,
    EOA_TOKEN_ID,
    TEXT_EOS_ID,
    TEXT_PAD_ID,
    TOKENS_PER_SECOND,
)
from .chunk_schedule import ChunkSchedule


class StopReason(StrEnum):
    END_OF_AUDIO = "end_of_audio"
    MAX_AUDIO_LENGTH = "max_audio_length"
    RUNAWAY = "runaway"
    BLOCK_SIZE = "block_size"  # the decoder has no positions left for this segment


@dataclass(frozen=True)
class SynthesisLimits:
    max_audio_length: int = DEFAULT_MAX_AUDIO_LENGTH
    max_tokens_per_text_id: float = 12.0
    min_token_budget: int = TOKENS_PER_SECOND  # one second: very short texts are not cut early
    max_segment_steps: int | None = None  # the decoder's block_size

    def token_budget(self, text_ids: int) -> int:
        budget = max(self.min_token_budget, int(self.max_tokens_per_text_id * text_ids))
        return min(budget, self.max_audio_length)


class TextStarvedError(RuntimeError):
    """The next step needs text that has not arrived yet (check `needs_text` first)."""


class SentenceStream:
    def __init__(
        self,
        tokenize: Callable[[str], list[int]],
        schedule: ChunkSchedule,
        limits: SynthesisLimits | None = None,
        *,
        eoa_token_id: int = EOA_TOKEN_ID,
        pad_token_id: int = TEXT_PAD_ID,
        text_eos_id: int = TEXT_EOS_ID,
    ) -> None:
        self._tokenize = tokenize
        self.schedule = schedule
        self.limits = limits or SynthesisLimits()
        self.eoa, self.pad, self.text_eos = eoa_token_id, pad_token_id, text_eos_id
        self._queue: deque[int] = deque()
        self._pending: list[int] = []
        self.text_closed = False
        self.text_ids_pushed = 0
        self.tokens_generated = 0
        self.segments = 0
        self._segment_steps = 0
        self.stop_reason: StopReason | None = None
        self._segment_open = False

    # -- text side ---------------------------------------------------------------------------
    def push_text(self, piece: str) -> None:
        if self.text_closed:
            raise ValueError("text already closed for this sentence")
        ids = self._tokenize(piece.strip())
        self._queue.extend(ids)
        self.text_ids_pushed += len(ids)

    def close_text(self) -> None:
        """No more text: `EOS` follows what was pushed, then `[PAD]` until end of audio."""
        if not self.text_closed:
            self._queue.append(self.text_eos)
            self.text_ids_pushed += 1
            self.text_closed = True

    @property
    def done(self) -> bool:
        return self.stop_reason is not None

    @property
    def needs_text(self) -> bool:
        """True while the model has read all text so far and more is still to come."""
        return not self.done and not self._queue and not self.text_closed

    @property
    def starts_segment(self) -> bool:
        """The next step begins a segment: fresh decoder state, position 0, zero speech frame."""
        return not self._segment_open

    def next_text_id(self) -> int:
        if self.done:
            raise RuntimeError("sentence already finished")
        if self._queue:
            text_id = self._queue.popleft()
        elif self.text_closed:
            text_id = self.pad
        else:
            raise TextStarvedError("no text for the next step yet")
        if not self._segment_open:
            self._segment_open = True
            self.segments += 1
            self._segment_steps = 0
        self._segment_steps += 1
        return text_id

    # -- speech side -------------------------------------------------------------------------
    def record(self, token: int) -> list[list[int]]:
        """Account for the token the model produced at the last step; return chunks to decode."""
        if self.done:
            raise RuntimeError("sentence already finished")
        self.tokens_generated += 1
        self._pending.append(token)
        chunks: list[list[int]] = []
        end_of_audio = token == self.eoa
        chunk = self.schedule.take(self._pending, saw_eoa=end_of_audio)
        if chunk is not None:
            chunks.append(chunk)
        if end_of_audio:
            self._segment_open = False
            self.schedule.grow()
            if self.text_closed and not self._queue:
                self.stop_reason = StopReason.END_OF_AUDIO
            # Otherwise text is left: it starts a new segment, as upstream does.
            return chunks
        max_steps = self.limits.max_segment_steps
        if self.tokens_generated >= self.limits.max_audio_length:
            self.stop_reason = StopReason.MAX_AUDIO_LENGTH
        elif max_steps is not None and self._segment_steps >= max_steps:
            self.stop_reason = StopReason.BLOCK_SIZE
        elif self.text_closed and self.tokens_generated >= self.limits.token_budget(
            self.text_ids_pushed
        ):
            self.stop_reason = StopReason.RUNAWAY
        if self.done and self._pending:
            chunks.append(self._pending[:])
            self._pending.clear()
        return chunks
