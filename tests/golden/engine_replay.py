"""Drives the serving engine (worker/engine.py) the way the worker does, for the golden streaming
cases: one job per sentence, its text streamed in piece by piece, parts taken as they come.

The original server had two replica threads; each kept one chunk schedule for all its sentences
(the dump size never went back), and ended every sentence with a new decoder segment. Here each
original replica is one engine, and each of its sentences one job whose first chunk is the dump
size that replica had reached: the engine's own rule (context and hold-back 0) must then give the
original's tokens, chunks and samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmvox_tts.loading.bundle import ModelBundle
from llmvox_tts.model.speech_decoder import SpeechTokenDecoder
from llmvox_tts.streaming.chunk_schedule import ChunkSchedule
from llmvox_tts.streaming.sentence_stream import StopReason, SynthesisLimits
from llmvox_tts.worker.engine import EnginePart, ReplicaEngine, StepDecoder

from .upstream_oracle import Sentence


@dataclass(frozen=True, slots=True)
class Step:
    """One decoder step of a job: the text id fed and the token produced."""

    text_id: int
    token: int


class RecordingDecoder:
    """Passes steps to `inner` and logs them per job; the engine runs one job at a time here
    (max_batch 1), so the current job is whichever was started last."""

    def __init__(self, inner: StepDecoder) -> None:
        self.inner = inner
        self.steps: list[Step] = []
        self.segment_starts = 0

    def start_segment(self, slot: int) -> None:
        self.segment_starts += 1
        self.inner.start_segment(slot)

    def step(self, slots: list[int], text_ids: list[int]) -> list[int]:
        tokens = self.inner.step(slots, text_ids)
        self.steps.extend(Step(t, k) for t, k in zip(text_ids, tokens, strict=True))
        return tokens


@dataclass
class JobRun:
    """What the engine did for one sentence."""

    sentence: Sentence
    first_chunk: int
    steps: list[Step] = field(default_factory=list)
    parts: list[EnginePart] = field(default_factory=list)
    segments: int = 0
    # Decoder steps and part releases in the order they happened: ("step", i) or ("part", i).
    order: list[tuple[str, int]] = field(default_factory=list)

    @property
    def stop_reason(self) -> StopReason | None:
        return self.parts[-1].stop_reason if self.parts else None


def upstream_limits(max_audio_length: int) -> SynthesisLimits:
    """The engine's bounds set as loose as the original's: no runaway guard short of the cap."""
    return SynthesisLimits(
        max_audio_length=max_audio_length,
        max_tokens_per_text_id=float(max_audio_length),
        min_token_budget=max_audio_length,
    )


def replay_replica(
    models: ModelBundle,
    decoder: StepDecoder | None,
    sentences: list[Sentence],
    *,
    initial_dump: int,
    max_dump: int,
    max_audio_length: int,
) -> list[JobRun]:
    """Run `sentences` one after the other on one engine, as one original replica did; `decoder`
    None runs the bundle's decoder, built as the engine builds it."""
    if decoder is None:
        decoder = SpeechTokenDecoder(
            models.decoder, models.text_table, models.wavtokenizer.codebook, num_slots=1
        )
    recorder = RecordingDecoder(decoder)
    engine = ReplicaEngine(
        models,
        max_batch=1,
        context_tokens=0,
        holdback_tokens=0,
        limits=upstream_limits(max_audio_length),
        decoder=recorder,
    )
    # The replica's dump size carries over from one sentence to the next: it grew once per
    # chunk and once per segment end.
    schedule = ChunkSchedule(initial_dump, max_dump)
    runs: list[JobRun] = []
    for index, sentence in enumerate(sentences):
        key = f"sentence {index}"
        run = JobRun(sentence, first_chunk=schedule.size)
        engine.add(key, first_chunk=schedule.size, max_chunk=max_dump)
        starts_before = recorder.segment_starts
        pieces = list(sentence.pieces)
        while key in engine.jobs:
            if engine.has_work:
                seen = len(recorder.steps)
                parts = engine.step()
                for step in recorder.steps[seen:]:
                    run.order.append(("step", len(run.steps)))
                    run.steps.append(step)
                for part in parts:
                    run.order.append(("part", len(run.parts)))
                    run.parts.append(part)
                    if part.last:
                        engine.remove(key)
            elif pieces:
                # Text streams in: the next piece arrives once the engine has used up the last
                # one, and the sentence is closed with its final piece, as the original did.
                engine.push_text(key, pieces.pop(0))
                if not pieces:
                    engine.close_text(key)
            else:
                raise AssertionError(f"{key}: the engine stalled with all its text")
        run.segments = recorder.segment_starts - starts_before
        for _ in range(len(run.parts) + 1):
            schedule.grow()
        runs.append(run)
    return runs
