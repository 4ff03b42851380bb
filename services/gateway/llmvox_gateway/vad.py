"""Server-side turn detection for `/v1/realtime` (`turn_detection: {"type": "server_vad"}`).

Two parts, so the decisions can be tested without a model:

- `TurnDetector`, pure: speech probabilities of consecutive 32 ms windows in, `SpeechStarted` /
  `SpeechStopped` out, with the session's threshold, prefix padding and silence duration.
- `SileroVad`: the Silero VAD ONNX model that faster-whisper ships, run through onnxruntime one
  512-sample window of 16 kHz audio at a time, keeping its LSTM state and the 64 samples of
  context the model expects before each window.

Why in the gateway and not the ASR service: the decisions act on the gateway's own state (commit
the utterance, start the response, cancel the playing one), so a detector there adds no network
hop to a barge-in; the ASR service then only sees the utterances (not a constant stream of
silence); and the model is small: see docs/gateway.md for its measured CPU cost.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

WINDOW = 512  # samples at 16 kHz: 32 ms, the window the model was trained on
RATE = 16_000
WINDOW_MS = WINDOW * 1000 // RATE
_CONTEXT = 64  # samples of the previous window the model sees before each one
_STATE = (1, 1, 128)
_RELEASE = 0.15  # speech ends below threshold - this (hysteresis, as Silero's own segmenter)


@dataclass(frozen=True)
class VadSettings:
    """The protocol's `server_vad` fields, with its documented defaults."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int  # includes the prefix padding
    window: int  # the window whose probability crossed the threshold


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int  # where the silence that ended it had lasted `silence_duration_ms`
    window: int


VadEvent = SpeechStarted | SpeechStopped


class TurnDetector:
    """Speech segmentation over a stream of window probabilities, window `i` covering
    [i*32 ms, (i+1)*32 ms) of the session's input audio (at `first_window` on)."""

    def __init__(self, settings: VadSettings, first_window: int = 0) -> None:
        self.settings = settings
        self.window = first_window
        self.speaking = False
        self._quiet_windows = 0  # consecutive windows below the release level while speaking
        self._silence_windows = max(1, -(-settings.silence_duration_ms // WINDOW_MS))

    def push(self, probability: float) -> VadEvent | None:
        index = self.window
        self.window += 1
        threshold = self.settings.threshold
        if not self.speaking:
            if probability >= threshold:
                self.speaking = True
                self._quiet_windows = 0
                start = max(0, index * WINDOW_MS - self.settings.prefix_padding_ms)
                return SpeechStarted(start, index)
            return None
        if probability < max(threshold - _RELEASE, 0.01):
            self._quiet_windows += 1
            if self._quiet_windows >= self._silence_windows:
                self.speaking = False
                self._quiet_windows = 0
                return SpeechStopped((index + 1) * WINDOW_MS, index)
        elif probability >= threshold:
            self._quiet_windows = 0
        # Between the two levels: neither speech that resets the silence nor silence that counts.
        return None

    def stop(self) -> SpeechStopped | None:
        """End the speech now (the utterance reached its length limit, or was committed)."""
        if not self.speaking:
            return None
        self.speaking = False
        self._quiet_windows = 0
        return SpeechStopped(self.window * WINDOW_MS, self.window - 1)


class SpeechModel(Protocol):
    """Speech probabilities of whole 512-sample windows of 16 kHz float32 audio, in order; the
    model keeps its state between calls (one per session)."""

    def probabilities(self, windows: np.ndarray) -> np.ndarray: ...


def silero_model_path() -> Path:
    """The Silero VAD model shipped in faster-whisper's package (found without importing it:
    importing faster_whisper loads CTranslate2, which the gateway does not need)."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "server_vad needs the Silero VAD model that faster-whisper ships: "
            "pip install 'llmvox-gateway[vad]'"
        )
    assets = Path(next(iter(spec.submodule_search_locations))) / "assets"
    models = sorted(assets.glob("silero_vad*.onnx"))
    if not models:
        raise FileNotFoundError(f"no silero_vad*.onnx under {assets}")
    return models[-1]


_session_lock = threading.Lock()
_session: object | None = None


def _inference_session() -> object:
    """One onnxruntime session for the process: `run` is thread-safe, and the per-stream state
    (h, c, context) is passed in by each `SileroVad`."""
    global _session
    with _session_lock:
        if _session is None:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            # One thread per call: the model is tiny, and sessions run side by side.
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            _session = onnxruntime.InferenceSession(
                str(silero_model_path()), sess_options=options, providers=["CPUExecutionProvider"]
            )
        return _session


class SileroVad:
    """The streaming Silero VAD of one session."""

    def __init__(self) -> None:
        self._session = _inference_session()
        self._h = np.zeros(_STATE, dtype=np.float32)
        self._c = np.zeros(_STATE, dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        frames = np.asarray(windows, dtype=np.float32).reshape(-1, WINDOW)
        out = np.empty(len(frames), dtype=np.float32)
        for i, frame in enumerate(frames):
            batch = np.concatenate([self._context, frame])[None, :]
            probability, self._h, self._c = self._session.run(  # type: ignore[attr-defined]
                None, {"input": batch, "h": self._h, "c": self._c}
            )
            out[i] = float(np.asarray(probability).reshape(-1)[0])
            self._context = frame[-_CONTEXT:]
        return out


class WindowBuffer:
    """Cuts a stream of 16 kHz samples into whole windows, carrying the remainder."""

    def __init__(self) -> None:
        self._rest = np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        data = np.concatenate([self._rest, samples.astype(np.float32, copy=False)])
        whole = len(data) // WINDOW * WINDOW
        self._rest = data[whole:]
        return data[:whole].reshape(-1, WINDOW)

    def clear(self) -> None:
        self._rest = np.zeros(0, dtype=np.float32)
