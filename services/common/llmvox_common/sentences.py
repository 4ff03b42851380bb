"""Streamed text → whole words grouped into sentences: the platform's one sentence splitter.

The gateway opens one TTS job per sentence it gives out; `llmvox-tts synth` speaks the same
sentences, so a demo splits text exactly as the service does.

LLM deltas split words anywhere ("Hel", "lo wor", "ld."), but the decoder was trained on whole
space-split words, so text is held back until a word is complete (whitespace after it, or the
end of the answer). Each word then goes through the upstream cleaning rule (which may drop it, as
`**`, or split it, as `well-known`).

A sentence ends after a word ending in `.`, `?` or `!` (closing quotes and brackets aside), at a
newline, after a clause (`,`, `;`, `:`) once it has `clause_words` words, and in any case at
`max_sentence_words`: short jobs start audio early and let replicas work in parallel, and a
bound keeps one job from running for minutes.

Pure and synchronous (no I/O, no heavy imports): callers turn the batches into TTS work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmvox_common.text_cleaning import clean_llm_piece

_SENTENCE_END = frozenset(".?!")
_CLAUSE_END = frozenset(",;:")
_CLOSERS = "\"')]}»”’"
_TOKEN = re.compile(r"\S+|\s+")


@dataclass(frozen=True, slots=True)
class WordBatch:
    """Words for the current sentence; `ends_sentence` closes it after them."""

    words: tuple[str, ...]
    ends_sentence: bool


def _ending(word: str) -> str:
    stripped = word.rstrip(_CLOSERS)
    return stripped[-1] if stripped else ""


class SentenceSplitter:
    """Feed deltas with `push`, then `finish` once; each returns the batches now complete."""

    def __init__(self, *, clause_words: int = 12, max_sentence_words: int = 40) -> None:
        if clause_words < 1 or max_sentence_words < 1:
            raise ValueError("clause_words and max_sentence_words must be >= 1")
        self.clause_words = clause_words
        self.max_sentence_words = max_sentence_words
        self._partial = ""  # the unfinished last word of the text so far
        self._sentence_words = 0  # words already given out for the open sentence
        self._finished = False

    @property
    def sentence_open(self) -> bool:
        """Whether words were given out for a sentence that has not ended yet."""
        return self._sentence_words > 0

    def push(self, delta: str) -> list[WordBatch]:
        if self._finished:
            raise RuntimeError("push after finish")
        text = self._partial + delta
        tokens = _TOKEN.findall(text)
        # The last token is an unfinished word unless whitespace follows it.
        if tokens and not tokens[-1].isspace():
            self._partial = tokens.pop()
        else:
            self._partial = ""
        return self._split(tokens)

    def finish(self) -> list[WordBatch]:
        """The rest of the text; the last batch always ends the open sentence, if any."""
        if self._finished:
            return []
        self._finished = True
        tokens = [self._partial] if self._partial else []
        self._partial = ""
        batches = self._split(tokens)
        if self._sentence_words:
            if batches and not batches[-1].ends_sentence:
                batches[-1] = WordBatch(batches[-1].words, True)
            else:
                batches.append(WordBatch((), True))
            self._sentence_words = 0
        return batches

    def _split(self, tokens: list[str]) -> list[WordBatch]:
        batches: list[WordBatch] = []
        words: list[str] = []

        def close() -> None:
            batches.append(WordBatch(tuple(words), True))
            words.clear()
            self._sentence_words = 0

        for token in tokens:
            if token.isspace():
                if "\n" in token and (words or self._sentence_words):
                    close()
                continue
            for word in clean_llm_piece(token).split():
                words.append(word)
                self._sentence_words += 1
                end = _ending(word)
                if (
                    end in _SENTENCE_END
                    or (end in _CLAUSE_END and self._sentence_words >= self.clause_words)
                    or self._sentence_words >= self.max_sentence_words
                ):
                    close()
        if words:
            batches.append(WordBatch(tuple(words), False))
        return batches
