"""One replica's decoding engine: many sentences ("jobs") advanced together, step by step.

Continuous batching: each `step()` runs one decoder step for every job that has text to read
(jobs join and leave between steps; a job whose streamed text has run dry sits the step out and
is counted as starved), then decodes every chunk that became ready, batching chunks of equal
length into one WavTokenizer call. No I/O and no threads here: the worker drives it from its
model thread.

Chunk joins: WavTokenizer looks at a whole chunk at once (GroupNorm, attention, convolutions
both ways), so chunks decoded alone do not join smoothly. With `context_tokens` > 0, each chunk is
decoded behind the last tokens already sent for its sentence, and the samples of that context are
dropped: that mends the start of each chunk. With `holdback_tokens` > 0, the last tokens of a
chunk are decoded but their audio is not sent; they are decoded again at the front of the next
chunk, once what follows them exists: that mends the end of each chunk, at the cost of that much
latency. 0 and 0 decode each chunk alone, as upstream does.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from ..constants import HOP_LENGTH
from ..loading.bundle import ModelBundle
from ..model.speech_decoder import SpeechTokenDecoder
from ..streaming.chunk_schedule import ChunkSchedule
from ..streaming.sentence_stream import SentenceStream, StopReason, SynthesisLimits


class EngineFullError(RuntimeError):
    """All decoder slots are taken."""


class StepDecoder(Protocol):
    """What the engine needs of the speech-token decoder (model/speech_decoder.py)."""

    def start_segment(self, slot: int) -> None: ...

    def step(self, slots: list[int], text_ids: list[int]) -> list[int]: ...


@dataclass(frozen=True)
class EnginePart:
    job: str
    part: int
    tokens: list[int]
    pcm: torch.Tensor  # float32 CPU samples of this part only (context dropped)
    last: bool
    stop_reason: StopReason | None


@dataclass
class _Job:
    key: str
    slot: int
    stream: SentenceStream
    decoded: list[int] = field(default_factory=list)  # tokens whose audio was sent
    held: list[int] = field(default_factory=list)  # decoded last time, audio not sent yet
    ready: deque[list[int]] = field(default_factory=deque)  # chunks waiting for the vocoder
    next_part: int = 0

    @property
    def finished(self) -> bool:
        return self.stream.done and not self.ready


@dataclass
class _Decode:
    job: _Job
    context: list[int]  # tokens before `tokens`, decoded only to condition the vocoder
    tokens: list[int]
    emit: int  # how many of `tokens` get their audio sent now


@dataclass
class EngineStats:
    steps: int = 0
    tokens: int = 0
    starved_steps: int = 0
    decode_calls: int = 0
    step_seconds: float = 0.0
    vocoder_seconds: float = 0.0
    samples: int = 0


class ReplicaEngine:
    def __init__(
        self,
        models: ModelBundle,
        *,
        max_batch: int,
        context_tokens: int = 0,
        holdback_tokens: int = 0,
        limits: SynthesisLimits | None = None,
        on_step: Callable[[int, float], None] | None = None,
        decoder: StepDecoder | None = None,
    ) -> None:
        """`decoder` replaces the bundle's speech-token decoder: the golden tests replay recorded
        upstream runs through it, so that the serving engine itself is what they check."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if context_tokens < 0 or holdback_tokens < 0:
            raise ValueError("context_tokens and holdback_tokens must be >= 0")
        self.models = models
        self.max_batch = max_batch
        self.context_tokens = context_tokens
        self.holdback_tokens = holdback_tokens
        # A segment may not outgrow the decoder's positions: stop it cleanly instead of failing
        # the whole batch.
        self.limits = replace(
            limits or SynthesisLimits(), max_segment_steps=models.decoder.config.block_size
        )
        self.decoder: StepDecoder = decoder or SpeechTokenDecoder(
            models.decoder, models.text_table, models.wavtokenizer.codebook, num_slots=max_batch
        )
        self.jobs: dict[str, _Job] = {}
        self._free = list(range(max_batch - 1, -1, -1))
        self.stats = EngineStats()
        self._on_step = on_step

    # -- job control ---------------------------------------------------------------------------
    def add(self, key: str, *, first_chunk: int, max_chunk: int) -> None:
        if key in self.jobs:
            raise ValueError(f"job {key} is already running")
        if not self._free:
            raise EngineFullError(f"all {self.max_batch} slots are busy")
        stream = SentenceStream(
            self.models.tokenizer.encode, ChunkSchedule(first_chunk, max_chunk), self.limits
        )
        self.jobs[key] = _Job(key, self._free.pop(), stream)

    def push_text(self, key: str, piece: str) -> None:
        # Tokenised as given, even when blank (a lone `</s>`), as upstream does with a piece that
        # cleaned to whitespace; the worker itself only pushes whole words.
        self.jobs[key].stream.push_text(piece)

    def close_text(self, key: str) -> None:
        self.jobs[key].stream.close_text()

    def remove(self, key: str) -> None:
        """Drop a job (finished, cancelled or failed) and free its slot."""
        job = self.jobs.pop(key, None)
        if job is not None:
            self._free.append(job.slot)

    @property
    def has_work(self) -> bool:
        return any(
            j.ready or (not j.stream.done and not j.stream.needs_text) for j in self.jobs.values()
        )

    # -- one step ------------------------------------------------------------------------------
    def step(self) -> list[EnginePart]:
        """Advance every runnable job by one token; return the audio parts now ready."""
        runnable: list[_Job] = []
        for job in self.jobs.values():
            if job.stream.done:
                continue
            if job.stream.needs_text:
                self.stats.starved_steps += 1
            else:
                runnable.append(job)
        if runnable:
            started = time.perf_counter()
            for job in runnable:
                if job.stream.starts_segment:
                    self.decoder.start_segment(job.slot)
            ids = [job.stream.next_text_id() for job in runnable]
            tokens = self.decoder.step([job.slot for job in runnable], ids)
            for job, token in zip(runnable, tokens, strict=True):
                job.ready.extend(job.stream.record(token))
            elapsed = time.perf_counter() - started
            self.stats.steps += 1
            self.stats.tokens += len(runnable)
            self.stats.step_seconds += elapsed
            if self._on_step is not None:
                self._on_step(len(runnable), elapsed)
        return self._decode_ready()

    def _decode_ready(self) -> list[EnginePart]:
        # One chunk per job per call keeps each job's parts in order.
        work: list[_Decode] = []
        for job in self.jobs.values():
            if job.ready:
                tokens = job.held + job.ready.popleft()
                # Hold the newest tokens back (their audio still lacks what follows) unless
                # the sentence is complete; they are decoded again, with more, next time.
                keep = 0 if job.finished else min(self.holdback_tokens, len(tokens) - 1)
                context = job.decoded[-self.context_tokens :] if self.context_tokens else []
                work.append(_Decode(job, context, tokens, len(tokens) - keep))
        if not work:
            return []
        started = time.perf_counter()
        by_length: dict[int, list[_Decode]] = {}
        for item in work:
            by_length.setdefault(len(item.context) + len(item.tokens), []).append(item)
        parts: list[EnginePart] = []
        device = self.models.device
        for group in by_length.values():
            # Equal lengths only: GroupNorm and attention span the whole chunk, so padding would
            # change the samples.
            codes = torch.tensor(
                [d.context + d.tokens for d in group], dtype=torch.long, device=device
            )
            with torch.inference_mode():
                audio = self.models.wavtokenizer.decode(codes).float().cpu()
            self.stats.decode_calls += 1
            for row, d in enumerate(group):
                start = len(d.context) * HOP_LENGTH
                pcm = audio[row, start : start + d.emit * HOP_LENGTH].clone()
                emitted, d.job.held = d.tokens[: d.emit], d.tokens[d.emit :]
                d.job.decoded.extend(emitted)
                parts.append(
                    EnginePart(
                        job=d.job.key,
                        part=d.job.next_part,
                        tokens=emitted,
                        pcm=pcm,
                        last=d.job.finished,
                        stop_reason=d.job.stream.stop_reason if d.job.finished else None,
                    )
                )
                d.job.next_part += 1
                self.stats.samples += pcm.shape[0]
        self.stats.vocoder_seconds += time.perf_counter() - started
        return parts


def decode_whole(models: ModelBundle, tokens: list[int]) -> torch.Tensor:
    """A sentence's tokens decoded in one call: the reference chunk joins are measured against."""
    codes = torch.tensor([tokens], dtype=torch.long, device=models.device)
    with torch.inference_mode():
        return models.wavtokenizer.decode(codes)[0].float().cpu()
