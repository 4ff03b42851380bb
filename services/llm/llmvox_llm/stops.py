"""Turning generated token ids into safe text deltas: incremental detokenisation, stop strings
that may straddle deltas, and the finish reason. Pure: the tokenizer enters as a function."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from llmvox_common._proto.llmvox.llm.v1 import llm_pb2

Decode = Callable[[Sequence[int]], str]


class IncrementalDecoder:
    """Yields the text each new token adds. Decoding a token alone loses context (SentencePiece
    drops a leading space at the start of a sequence, byte-level BPE splits a character over
    several tokens), so it decodes a short window that starts a few tokens back and returns only
    what extends the previous window's text; a trailing U+FFFD means an unfinished UTF-8
    character, whose text is held until the next token completes it (the TGI/vLLM approach)."""

    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return delta
        return ""


@dataclass(frozen=True)
class StopMatch:
    stop: str
    emitted: str  # the text before the stop string that had not been released yet


class StopStringFilter:
    """Releases text only when it can no longer be the start of a stop string: a stop string
    split over two deltas ("Hel" + "lo" for "Hello") must not leak its first half to the client.
    After a match, nothing more is released (the stop string itself never is)."""

    def __init__(self, stops: Collection[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.match: StopMatch | None = None

    def feed(self, text: str) -> str:
        """The part of `held + text` that is safe to send now."""
        if self.match is not None:
            return ""
        buffer = self._held + text
        found = self._earliest_stop(buffer)
        if found is not None:
            index, stop = found
            self._held = ""
            self.match = StopMatch(stop=stop, emitted=buffer[:index])
            return buffer[:index]
        keep = self._longest_stop_prefix_suffix(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """At the end of generation the held text was not a stop string after all."""
        held, self._held = self._held, ""
        return "" if self.match is not None else held

    def _earliest_stop(self, buffer: str) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for stop in self._stops:
            index = buffer.find(stop)
            if index >= 0 and (best is None or index < best[0]):
                best = (index, stop)
        return best

    def _longest_stop_prefix_suffix(self, buffer: str) -> int:
        """Length of the longest suffix of `buffer` that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:length]):
                    longest = length
                    break
        return longest


def finish_reason(
    *,
    stop_match: StopMatch | None,
    eos_strings: Collection[str],
    last_token: int | None,
    eos_ids: Collection[int],
) -> llm_pb2.FinishReason.ValueType:
    """Why generation ended. A configured eos token that is not one token in this vocabulary is
    matched as a string, and still reports EOS."""
    if stop_match is not None:
        if stop_match.stop in eos_strings:
            return llm_pb2.FINISH_REASON_EOS
        return llm_pb2.FINISH_REASON_STOP_STRING
    if last_token is not None and last_token in eos_ids:
        return llm_pb2.FINISH_REASON_EOS
    # max_tokens reached, or generate() hit the model's context length: out of room either way.
    return llm_pb2.FINISH_REASON_LENGTH
