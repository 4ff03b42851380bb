"""A faithful, pure model of one upstream replica consumer loop and of the client-side merger
(MODEL_SPEC 8.2 and 8.3).

It exists to reproduce the upstream server's control flow exactly (golden `streaming_schedule`
with a scripted model, `e2e_streaming` with the real tiny models), quirks included: unsent tokens
are dropped at a segment end, the dump size never resets, a segment can end inside a piece's ids.
The model and the tokenizer are injected, and audio decoding is left to the caller, so nothing
here needs torch.

Instead of blocking on an empty queue like the upstream thread, the replica consumes pieces from
an iterable and stops when it needs a piece and none is left; while the sentence's text is used
up (`end_of_speech`) it keeps stepping on PAD ids without reading a piece.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from ..constants import (
    DEFAULT_EOS_TOKEN,
    DEFAULT_MAX_AUDIO_LENGTH,
    DEFAULT_MAX_DUMP_SIZE,
    EOA_TOKEN_ID,
    TEXT_EOS_ID,
    TEXT_PAD_ID,
)
from .chunk_schedule import ChunkSchedule
from .text_cleaning import rstrip_eos

_SENTENCE_END = "."


class SegmentModel(Protocol):
    def reset(self) -> None:
        """Start a fresh segment: empty KV cache, position 0, zero previous speech frame."""
        ...

    def step(self, text_id: int) -> int:
        """Run one decoder step on `text_id` (and the previous token) and return its greedy
        speech token."""
        ...


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Speech tokens to decode as one chunk (the EOA id included when it ends the segment)."""

    kind: ClassVar[str] = "audio"
    tokens: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Switch:
    """The segment ended without the end of the answer: the client reads replica `to` next."""

    kind: ClassVar[str] = "switch"
    to: int


@dataclass(frozen=True, slots=True)
class End:
    """The segment holding the answer's eos ended: the response is over."""

    kind: ClassVar[str] = "end"


Event = AudioChunk | Switch | End


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One decoder step: the replica's segment number, the text id fed, the token produced."""

    segment: int
    text_id: int
    token: int


class StepLimitExceeded(RuntimeError):
    """The replica ran more decoder steps than its `max_steps` guard allows."""


class UpstreamReplica:
    """State machine of one replica: pieces in, audio-chunk / switch / end events out.

    `tokenize(text)` must return the ids of one tokenizer call, `</s>` included (ByT5: bytes + 3,
    then 1). Traces for comparison with the golden files: `steps` (one `StepRecord` per decoder
    step) and `text_ids_fed` (one list per embedding call: a piece's ids, or `[pad]` per PAD
    step).
    """

    def __init__(
        self,
        model: SegmentModel,
        tokenize: Callable[[str], list[int]],
        *,
        replica_index: int,
        initial_dump_size: int,
        max_dump_size: int = DEFAULT_MAX_DUMP_SIZE,
        max_audio_length: int = DEFAULT_MAX_AUDIO_LENGTH,
        eos_token: str = DEFAULT_EOS_TOKEN,
        pad_token_id: int = TEXT_PAD_ID,
        eoa_token_id: int = EOA_TOKEN_ID,
        text_eos_id: int = TEXT_EOS_ID,
        max_steps: int | None = None,
    ) -> None:
        if replica_index not in (0, 1):
            raise ValueError(f"the upstream server has replicas 0 and 1, got {replica_index}")
        self.model = model
        self.tokenize = tokenize
        self.replica_index = replica_index
        self.max_audio_length = max_audio_length
        self.eos_token = eos_token
        self.pad_token_id = pad_token_id
        self.eoa_token_id = eoa_token_id
        self.text_eos_id = text_eos_id
        self.max_steps = max_steps
        # Never reset between segments: later sentences get ever larger chunks.
        self.schedule = ChunkSchedule(initial_dump_size, max_dump_size)

        self.steps: list[StepRecord] = []
        self.text_ids_fed: list[list[int]] = []
        self.segment = 0
        self.ended = False  # an End event was emitted (upstream keeps looping regardless)
        self._pending: list[int] = []
        self._end_of_speech = False
        self._end_generation = False
        self.model.reset()

    @property
    def end_of_speech(self) -> bool:
        """The current sentence's text is used up: steps feed PAD until the segment ends."""
        return self._end_of_speech

    @property
    def needs_piece(self) -> bool:
        """True whenever control is back with the caller: the next step must read a piece."""
        return not self._end_of_speech

    @property
    def pending(self) -> tuple[int, ...]:
        return tuple(self._pending)

    def run(self, pieces: Iterable[str]) -> Iterator[Event]:
        """Consume pieces until none is left, yielding each event as soon as it happens."""
        for piece in pieces:
            yield from self.feed(piece)

    def feed(self, piece: str) -> Iterator[Event]:
        """Process one queued piece, then the PAD steps that follow it while `end_of_speech`.

        A generator, so that the caller can decode each chunk before the next decoder step (the
        upstream order of work); use `list(replica.feed(piece))` to drain it.
        """
        if self._end_of_speech:
            raise RuntimeError("a piece was fed while the replica was stepping on PAD ids")
        ids = self._piece_ids(piece)
        self.text_ids_fed.append(ids)
        yield from self._run_ids(ids)
        while self._end_of_speech:
            pad_ids = [self.pad_token_id]
            self.text_ids_fed.append(pad_ids)
            yield from self._run_ids(pad_ids)

    def _piece_ids(self, piece: str) -> list[int]:
        has_eos = self.eos_token in piece
        if has_eos or piece.endswith(_SENTENCE_END):
            self._end_of_speech = True
            if has_eos:
                self._end_generation = True
            # Only here does upstream rstrip; the character-set strip can eat word endings.
            piece = rstrip_eos(piece, self.eos_token)
        ids = list(self.tokenize(piece.strip()))
        if self._end_of_speech:
            ids.append(self.text_eos_id)
        return ids

    def _run_ids(self, ids: list[int]) -> Iterator[Event]:
        for text_id in ids:
            if self.max_steps is not None and len(self.steps) >= self.max_steps:
                raise StepLimitExceeded(
                    f"replica {self.replica_index} reached max_steps={self.max_steps}"
                )
            token = self.model.step(text_id)
            self.steps.append(StepRecord(self.segment, text_id, token))
            self._pending.append(token)
            chunk = self.schedule.take(self._pending, self.eoa_token_id in self._pending)
            if chunk is not None:
                yield AudioChunk(tuple(chunk))
            if token == self.eoa_token_id or len(self._pending) > self.max_audio_length:
                # Upstream keeps iterating the same id list: remaining ids start the new segment.
                yield self._end_segment()

    def _end_segment(self) -> Event:
        event: Event
        if self._end_generation:
            event = End()
            self.ended = True
        else:
            event = Switch(1 - self.replica_index)
        self._pending.clear()  # unsent tokens are dropped, as upstream does
        self._end_of_speech = False
        self._end_generation = False
        self.model.reset()
        self.schedule.grow()
        self.segment += 1
        return event


def merge_replica_streams(
    events_per_replica: Sequence[Iterable[Event]], start: int = 0
) -> list[tuple[int, Event]]:
    """The client's view: `(replica, event)` in the order the upstream merger passes them on.

    It reads replica `start` (0 upstream) until a `Switch`, then the replica it names; audio of
    the other replica waits its turn. It stops after an `End`, or where the replica being read
    has nothing more (upstream would block there for ever).
    """
    streams = [iter(events) for events in events_per_replica]
    merged: list[tuple[int, Event]] = []
    current = start
    while True:
        event = next(streams[current], None)
        if event is None:
            return merged
        merged.append((current, event))
        if isinstance(event, End):
            return merged
        if isinstance(event, Switch):
            if not 0 <= event.to < len(streams):
                raise ValueError(f"switch to unknown replica {event.to}")
            current = event.to
