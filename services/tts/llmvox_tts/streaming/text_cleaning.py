"""Cleaning and routing of LLM text pieces, as the upstream text producer does it (MODEL_SPEC 8.1).

The rules are reproduced exactly, quirks included (`1,2,3` → `12,3`, no final strip, only `.` ends
a sentence), because the decoder was trained on text that went through them and the golden
`streaming_schedule` case records their output.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from llmvox_common.text_cleaning import clean_llm_piece

from ..constants import DEFAULT_EOS_TOKEN

__all__ = ["PieceRouter", "RoutedPiece", "clean_llm_piece", "route_pieces", "rstrip_eos"]

# Pieces the producer drops before any stripping, so " -" is *not* among them.
_SKIPPED_RAW_PIECES = frozenset({"", "-"})
_SENTENCE_END = "."


def rstrip_eos(text: str, eos: str = DEFAULT_EOS_TOKEN) -> str:
    """Upstream `str.rstrip(eos)`: strips a *set of characters*, not the suffix.

    `"good<|eot_id|>"` → `"g"` because `o` and `d` are in the set; kept as is since the decoder
    consumes exactly these ids upstream.
    """
    return text.rstrip(eos)


@dataclass(frozen=True, slots=True)
class RoutedPiece:
    """What the producer did with one LLM piece: `text`/`queue` are None when it was dropped."""

    text: str | None
    queue: int | None


class PieceRouter:
    """The text producer: cleans each LLM piece and puts it on the active one of `n_queues`.

    The active queue moves on (round robin; 0 ↔ 1 with the default two replicas) after a routed
    piece that ends with `.`, so consecutive sentences go to alternate replicas.
    """

    def __init__(self, eos_token: str = DEFAULT_EOS_TOKEN, n_queues: int = 2) -> None:
        if n_queues < 1:
            raise ValueError(f"n_queues must be at least 1, got {n_queues}")
        self.eos_token = eos_token
        self.n_queues = n_queues
        self._active = 0

    @property
    def active(self) -> int:
        """Index of the queue the next non-empty piece goes to."""
        return self._active

    def route(self, piece: str) -> RoutedPiece:
        if piece in _SKIPPED_RAW_PIECES:
            return RoutedPiece(None, None)
        text = piece.strip()
        # The eos marker must reach the replica intact: it is how the replica learns the answer
        # is over (cleaning could alter a custom eos string).
        if text != self.eos_token:
            text = clean_llm_piece(text)
        if not text:
            return RoutedPiece(None, None)
        queue = self._active
        if text.endswith(_SENTENCE_END):
            self._active = (self._active + 1) % self.n_queues
        return RoutedPiece(text, queue)


def route_pieces(
    pieces: Iterable[str], eos_token: str = DEFAULT_EOS_TOKEN, n_queues: int = 2
) -> list[list[str]]:
    """Contents of every queue after routing `pieces` with a fresh router."""
    router = PieceRouter(eos_token, n_queues)
    queues: list[list[str]] = [[] for _ in range(n_queues)]
    for piece in pieces:
        routed = router.route(piece)
        if routed.text is not None and routed.queue is not None:
            queues[routed.queue].append(routed.text)
    return queues
