"""Streaming synthesis for one caller: LLM text pieces in, audio chunks out, sentence by sentence.

It glues the pure parts (text cleaning, sentence control, chunk schedule) to the models (batched
speech-token decoder, WavTokenizer). One sentence is one decoder segment, started fresh, as
upstream does. The replica pool (worker/) runs the same parts for many sentences at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import torch

from ..constants import (
    DEFAULT_EOS_TOKEN,
    DEFAULT_INITIAL_DUMP_SIZE_1,
    DEFAULT_MAX_DUMP_SIZE,
    HOP_LENGTH,
    SAMPLE_RATE,
)
from ..loading.bundle import ModelBundle
from ..model.speech_decoder import SpeechTokenDecoder
from .chunk_schedule import ChunkSchedule
from .sentence_stream import SentenceStream, StopReason, SynthesisLimits
from .text_cleaning import clean_llm_piece


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


def split_sentences(pieces: Iterable[str], eos_token: str = DEFAULT_EOS_TOKEN) -> Iterator[str]:
    """Upstream sentence boundaries: a cleaned piece ending with `.`, or the eos string.

    Yields each sentence's text (cleaned pieces joined with spaces, eos string removed).
    """
    words: list[str] = []
    for raw in pieces:
        if raw in ("", "-"):
            continue
        piece = raw.strip()
        ends_generation = eos_token in piece
        piece = piece.replace(eos_token, "")
        cleaned = clean_llm_piece(piece).strip()
        if cleaned:
            words.append(cleaned)
        if (cleaned.endswith(".") or ends_generation) and words:
            yield " ".join(words)
            words = []
        if ends_generation:
            return
    if words:
        yield " ".join(words)


class StreamingSynthesizer:
    def __init__(
        self,
        models: ModelBundle,
        *,
        initial_dump_size: int = DEFAULT_INITIAL_DUMP_SIZE_1,
        max_dump_size: int = DEFAULT_MAX_DUMP_SIZE,
        limits: SynthesisLimits | None = None,
        eos_token: str = DEFAULT_EOS_TOKEN,
    ) -> None:
        self.models = models
        self.initial_dump_size = initial_dump_size
        self.max_dump_size = max_dump_size
        self.limits = replace(
            limits or SynthesisLimits(), max_segment_steps=models.decoder.config.block_size
        )
        self.eos_token = eos_token
        self.decoder = SpeechTokenDecoder(
            models.decoder, models.text_table, models.wavtokenizer.codebook, num_slots=1
        )
        self.stats = SynthesisStats()

    @torch.inference_mode()
    def decode_audio(self, tokens: list[int]) -> torch.Tensor:
        codes = torch.tensor([tokens], dtype=torch.long, device=self.models.device)
        return self.models.wavtokenizer.decode(codes)[0].float().cpu()

    def speak(self, pieces: Iterable[str]) -> Iterator[AudioChunk]:
        """Speak an LLM stream: sentences in order, one chunk schedule for the whole request
        (upstream keeps a replica's dump size growing across sentences)."""
        self.stats = SynthesisStats()
        schedule = ChunkSchedule(self.initial_dump_size, self.max_dump_size)
        for index, sentence in enumerate(split_sentences(pieces, self.eos_token)):
            yield from self.speak_sentence(sentence.split(" "), sentence=index, schedule=schedule)
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


def chunk_seconds(chunk: AudioChunk) -> float:
    return len(chunk.tokens) * HOP_LENGTH / SAMPLE_RATE
