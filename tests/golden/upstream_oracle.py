"""What the original server did with LLM text before its replicas saw it, reproduced for the golden
streaming tests only (docs/streaming.md describes the rules).

The serving path does not route text this way: the gateway splits sentences itself and knows the
end of an answer out of band, so it never sees an eos marker in the text. The golden cases record
the original's routing, though, and the tests need it to turn the recorded LLM pieces into the
sentences that each become one engine job.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from llmvox_common.text_cleaning import clean_llm_piece
from llmvox_tts.constants import DEFAULT_EOS_TOKEN

# Pieces the producer dropped before any stripping, so " -" is *not* among them.
_SKIPPED_RAW_PIECES = frozenset({"", "-"})
_SENTENCE_END = "."


def rstrip_eos(text: str, eos: str = DEFAULT_EOS_TOKEN) -> str:
    """The original's `str.rstrip(eos)`: it strips a *set of characters*, not the suffix, so
    `"good<|eot_id|>"` becomes `"g"`; the decoder was fed exactly that."""
    return text.rstrip(eos)


@dataclass(frozen=True, slots=True)
class RoutedPiece:
    """What the producer did with one LLM piece: `text`/`queue` are None when it was dropped."""

    text: str | None
    queue: int | None


class PieceRouter:
    """The original text producer: cleans each LLM piece and puts it on the active queue; the
    active queue moves on (round robin) after a routed piece that ends with `.`."""

    def __init__(self, eos_token: str = DEFAULT_EOS_TOKEN, n_queues: int = 2) -> None:
        if n_queues < 1:
            raise ValueError(f"n_queues must be at least 1, got {n_queues}")
        self.eos_token = eos_token
        self.n_queues = n_queues
        self._active = 0

    @property
    def active(self) -> int:
        return self._active

    def route(self, piece: str) -> RoutedPiece:
        if piece in _SKIPPED_RAW_PIECES:
            return RoutedPiece(None, None)
        text = piece.strip()
        # The eos marker reached the replica intact: it was how the replica learnt that the
        # answer was over.
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


@dataclass(frozen=True, slots=True)
class Sentence:
    """One sentence of a replica's queue: the pieces the replica tokenised, one call each (the eos
    marker already stripped, as the replica did), and whether it ended the answer."""

    pieces: tuple[str, ...]
    ends_answer: bool


def split_sentences(queue: Iterable[str], eos_token: str = DEFAULT_EOS_TOKEN) -> list[Sentence]:
    """A replica's queue cut where the original replica ended a sentence: after a piece that ends
    with `.` or holds the eos marker. Pieces after the last such piece (the replica would wait for
    more) are not a sentence."""
    sentences: list[Sentence] = []
    pieces: list[str] = []
    for piece in queue:
        has_eos = eos_token in piece
        if has_eos or piece.endswith(_SENTENCE_END):
            pieces.append(rstrip_eos(piece, eos_token))
            sentences.append(Sentence(tuple(pieces), ends_answer=has_eos))
            pieces = []
        else:
            pieces.append(piece)
    return sentences
