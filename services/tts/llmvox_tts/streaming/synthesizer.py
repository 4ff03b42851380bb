"""Streaming synthesis for one caller: LLM text pieces in, audio chunks out, sentence by sentence.

It glues the pure parts (the platform's sentence splitter, sentence control, chunk schedule) to
the models (batched speech-token decoder, WavTokenizer). Text is cut into sentences by
`llmvox_common.sentences.SentenceSplitter`, the gateway's splitter, so `llmvox-tts synth` speaks
the sentences the service would. One sentence is one decoder segment, started fresh, as upstream
does. The replica pool (worker/) runs the same parts for many sentences at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import torch

from llmvox_common.sentences import SentenceSplitter

from ..constants import (
    DEFAULT_INITIAL_DUMP_SIZE_1,
    DEFAULT_MAX_DUMP_SIZE,
    SAMPLE_RATE,
)
from ..loading.bundle import ModelBundle
from ..model.speech_decoder import SpeechTokenDecoder
from .chunk_schedule import ChunkSchedule
from .sentence_stream import SentenceStream, StopReason, SynthesisLimits


@dataclass(frozen=True)
class AudioChunk:
    sentence: int
    part: int
    tokens: list[int]
    pcm: torch.Tensor  # (HOP_LENGTH * len(tokens),) float32 on the CPU, 24 kHz mono
    last: bool  # the last chunk of its sentence


@dataclass
class SentenceReport:
    text: str
    tokens: int = 0
    stop_reason: StopReason | None = None
    segments: int = 0


@dataclass
class SynthesisStats:
    started: float = field(default_factory=time.perf_counter)
    first_audio: float | None = None
    finished: float | None = None
    tokens: int = 0
    samples: int = 0
    sentences: list[SentenceReport] = field(default_factory=list)

    @property
    def time_to_first_audio(self) -> float | None:
        return None if self.first_audio is None else self.first_audio - self.started

    @property
    def elapsed(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def real_time_factor(self) -> float:
        """Compute seconds per second of audio (below 1 is faster than real time)."""
        audio = self.samples / SAMPLE_RATE
        return self.elapsed / audio if audio > 0 else float("inf")


def split_sentences(pieces: Iterable[str], splitter: SentenceSplitter) -> Iterator[list[str]]:
    """The words of each sentence `splitter` finds in the text `pieces` (streamed or whole)."""
    words: list[str] = []
    for piece in pieces:
        for batch in splitter.push(piece):
            words.extend(batch.words)
            if batch.ends_sentence:
                yield words
                words = []
    for batch in splitter.finish():
        words.extend(batch.words)
        if batch.ends_sentence:
            yield words
            words = []


class StreamingSynthesizer:
    def __init__(
        self,
        models: ModelBundle,
        *,
        initial_dump_size: int = DEFAULT_INITIAL_DUMP_SIZE_1,
        max_dump_size: int = DEFAULT_MAX_DUMP_SIZE,
        limits: SynthesisLimits | None = None,
    ) -> None:
        self.models = models
        self.initial_dump_size = initial_dump_size
        self.max_dump_size = max_dump_size
        self.limits = replace(
            limits or SynthesisLimits(), max_segment_steps=models.decoder.config.block_size
        )
        self.decoder = SpeechTokenDecoder(
            models.decoder, models.text_table, models.wavtokenizer.codebook, num_slots=1
        )
        self.stats = SynthesisStats()

    @torch.inference_mode()
    def decode_audio(self, tokens: list[int]) -> torch.Tensor:
        codes = torch.tensor([tokens], dtype=torch.long, device=self.models.device)
        return self.models.wavtokenizer.decode(codes)[0].float().cpu()

    def speak(
        self, pieces: Iterable[str], splitter: SentenceSplitter | None = None
    ) -> Iterator[AudioChunk]:
        """Speak text (whole, or streamed as an LLM's pieces): sentences in order, one chunk
        schedule for the whole request (upstream keeps a replica's dump size growing across
        sentences). `splitter` defaults to the gateway's default splitting."""
        self.stats = SynthesisStats()
        schedule = ChunkSchedule(self.initial_dump_size, self.max_dump_size)
        sentences = split_sentences(pieces, splitter or SentenceSplitter())
        for index, words in enumerate(sentences):
            yield from self.speak_sentence(words, sentence=index, schedule=schedule)
        self.stats.finished = time.perf_counter()

    def speak_sentence(
        self,
        words: Iterable[str],
        *,
        sentence: int = 0,
        schedule: ChunkSchedule | None = None,
    ) -> Iterator[AudioChunk]:
        """Speak one sentence given as whole words (each fed as its own piece, then EOS)."""
        stream = SentenceStream(
            self.models.tokenizer.encode,
            schedule or ChunkSchedule(self.initial_dump_size, self.max_dump_size),
            self.limits,
        )
        text = []
        for word in words:
            if word.strip():
                stream.push_text(word)
                text.append(word.strip())
        stream.close_text()
        report = SentenceReport(text=" ".join(text))
        self.stats.sentences.append(report)
        part = 0
        while not stream.done:
            if stream.starts_segment:
                self.decoder.start_segment(0)
            text_id = stream.next_text_id()
            (token,) = self.decoder.step([0], [text_id])
            self.stats.tokens += 1
            # A stop always comes with at least one chunk (the one holding the last token),
            # so the final chunk of the final step is the sentence's last.
            chunks = stream.record(token)
            for i, tokens in enumerate(chunks):
                pcm = self.decode_audio(tokens)
                if self.stats.first_audio is None:
                    self.stats.first_audio = time.perf_counter()
                self.stats.samples += pcm.shape[0]
                last = stream.done and i == len(chunks) - 1
                yield AudioChunk(sentence, part, tokens, pcm, last=last)
                part += 1
        report.tokens = stream.tokens_generated
        report.stop_reason = stream.stop_reason
        report.segments = stream.segments
