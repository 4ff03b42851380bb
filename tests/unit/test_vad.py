"""Server-side turn detection (vad.py) and the Realtime audio formats (realtime_audio.py).

The segmentation is a pure core (`TurnDetector`) tested over recorded probability sequences;
the Silero model is tested streaming over espeak-ng speech with silence around it, where the
speech is known to be.
"""

from __future__ import annotations

import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import soxr

from llmvox_common.audio import read_wav
from llmvox_gateway.realtime_audio import (
    InputDecoder,
    OutputEncoder,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)
from llmvox_gateway.vad import (
    WINDOW,
    WINDOW_MS,
    SileroVad,
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
    VadSettings,
    WindowBuffer,
)
from tests.integration.conftest import ensure_espeak

pytestmark = pytest.mark.unit


def segment(probabilities: list[float], settings: VadSettings | None = None) -> list[object]:
    detector = TurnDetector(settings or VadSettings())
    return [event for p in probabilities if (event := detector.push(p)) is not None]


# -- the pure core ----------------------------------------------------------------------------


def test_speech_starts_with_its_prefix_padding_and_stops_after_the_silence() -> None:
    # 20 windows of silence, 30 of speech, 20 of silence (32 ms each).
    probabilities = [0.02] * 20 + [0.9] * 30 + [0.05] * 20
    events = segment(probabilities)
    assert events == [
        SpeechStarted(audio_start_ms=20 * WINDOW_MS - 300, window=20),
        # 500 ms of silence = 16 windows (rounded up): windows 50..65, the last one included.
        SpeechStopped(audio_end_ms=66 * WINDOW_MS, window=65),
    ]


def test_a_pause_shorter_than_the_silence_duration_does_not_split_the_speech() -> None:
    probabilities = [0.9] * 10 + [0.05] * 15 + [0.9] * 10 + [0.05] * 16
    events = segment(probabilities)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    assert events[0] == SpeechStarted(audio_start_ms=0, window=0)  # the padding stops at 0


def test_between_the_two_levels_is_neither_speech_nor_silence() -> None:
    # Hysteresis: 0.4 is under the threshold (0.5) but above the release level (0.35), so it
    # neither starts speech nor counts as silence once speech runs.
    assert segment([0.4] * 50) == []
    probabilities = [0.9] * 5 + [0.4] * 40 + [0.1] * 16
    events = segment(probabilities)
    assert events[-1] == SpeechStopped(audio_end_ms=61 * WINDOW_MS, window=60)


def test_settings_change_the_decisions() -> None:
    settings = VadSettings(threshold=0.8, prefix_padding_ms=0, silence_duration_ms=200)
    probabilities = [0.7] * 5 + [0.85] * 5 + [0.1] * 7
    events = segment(probabilities, settings)
    assert events == [
        SpeechStarted(audio_start_ms=5 * WINDOW_MS, window=5),
        SpeechStopped(audio_end_ms=17 * WINDOW_MS, window=16),  # 200 ms = 7 windows
    ]


def test_stop_ends_the_speech_where_it_is() -> None:
    detector = TurnDetector(VadSettings(), first_window=100)
    assert detector.stop() is None
    for _ in range(3):
        detector.push(0.9)
    assert detector.stop() == SpeechStopped(audio_end_ms=103 * WINDOW_MS, window=102)
    assert not detector.speaking


def test_the_window_buffer_carries_the_remainder() -> None:
    buffer = WindowBuffer()
    assert buffer.push(np.ones(WINDOW - 1, dtype=np.float32)).shape == (0, WINDOW)
    windows = buffer.push(np.full(WINDOW + 2, 2.0, dtype=np.float32))
    assert windows.shape == (2, WINDOW)
    assert windows[0, -2] == 1.0
    assert windows[0, -1] == 2.0
    assert buffer.push(np.zeros(WINDOW - 1, dtype=np.float32)).shape == (1, WINDOW)


# -- Silero over real speech ------------------------------------------------------------------


def speak(text: str, path: Path) -> np.ndarray:
    espeak = ensure_espeak()
    subprocess.run([espeak, "-w", str(path), text], check=True, capture_output=True)
    samples, rate = read_wav(path)
    return soxr.resample(samples, rate, 16_000).astype(np.float32)


def test_silero_streaming_finds_each_sentence_between_silences(tmp_path: Path) -> None:
    first = speak("What is the capital of France?", tmp_path / "a.wav")
    second = speak("And how many people live there?", tmp_path / "b.wav")
    silence = np.zeros(16_000, dtype=np.float32)  # 1 s: twice the default silence duration
    audio = np.concatenate([silence, first, silence, second, silence])
    # Where the voice is: espeak pads its output with a little silence of its own.
    voiced = np.nonzero(np.abs(audio) > 0.02)[0]
    gap = np.nonzero(np.diff(voiced) > 8000)[0]
    assert len(gap) == 1
    spans_ms = [
        (voiced[0] / 16, voiced[gap[0]] / 16),
        (voiced[gap[0] + 1] / 16, voiced[-1] / 16),
    ]

    model = SileroVad()
    buffer = WindowBuffer()
    detector = TurnDetector(VadSettings())
    events: list[object] = []
    # Streamed in 20 ms chunks, as a client appends: the model keeps its state across calls.
    for start in range(0, len(audio), 320):
        windows = buffer.push(audio[start : start + 320])
        for p in model.probabilities(windows):
            if (event := detector.push(float(p))) is not None:
                events.append(event)

    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped] * 2
    for (started, stopped), (voice_start, voice_end) in zip(
        zip(events[::2], events[1::2], strict=True), spans_ms, strict=True
    ):
        assert isinstance(started, SpeechStarted)
        assert isinstance(stopped, SpeechStopped)
        # Detected within a few windows of the voice, padding included.
        assert voice_start - 300 - 4 * WINDOW_MS <= started.audio_start_ms <= voice_start
        assert voice_end + 500 - 2 * WINDOW_MS <= stopped.audio_end_ms
        assert stopped.audio_end_ms <= voice_end + 500 + 8 * WINDOW_MS


def test_silero_hears_no_speech_in_silence_and_a_tone() -> None:
    model = SileroVad()
    t = np.arange(16_000 * 2) / 16_000
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    audio = np.concatenate([np.zeros(16_000, dtype=np.float32), tone])
    probabilities = model.probabilities(audio[: len(audio) // WINDOW * WINDOW])
    assert float(probabilities.max()) < 0.5


# -- G.711 and resampling ---------------------------------------------------------------------

ALL_PCM16 = np.arange(-32768, 32768, dtype=np.int32).astype("<i2")


@pytest.mark.parametrize(
    ("encode", "decode", "silence"),
    [(ulaw_encode, ulaw_decode, 0xFF), (alaw_encode, alaw_decode, 0xD5)],
)
def test_g711_round_trip_stays_within_half_a_step(encode, decode, silence) -> None:  # type: ignore[no-untyped-def]
    codes = np.frombuffer(encode(ALL_PCM16), dtype=np.uint8)
    assert codes[32768] == silence  # the code of 0, as G.711 defines it
    back = decode(codes.tobytes()).astype(np.int32)
    error = np.abs(back - ALL_PCM16.astype(np.int32))
    # The step doubles with each segment: 1/16 of a segment's base, at most 1024 at the top.
    assert error.max() <= 1024
    small = np.abs(ALL_PCM16.astype(np.int32)) < 256
    assert error[small].max() <= 16
    # Every code's value encodes to a code of the same value (μ-law has a +0 and a -0).
    table = decode(bytes(range(256)))
    assert np.array_equal(decode(encode(table)), table)


def test_g711_matches_the_reference_codec_bit_for_bit() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # removed in 3.13; the codec above stays
    data = ALL_PCM16.tobytes()
    assert ulaw_encode(ALL_PCM16) == audioop.lin2ulaw(data, 2)
    assert alaw_encode(ALL_PCM16) == audioop.lin2alaw(data, 2)
    codes = bytes(range(256))
    assert ulaw_decode(codes).tobytes() == audioop.ulaw2lin(codes, 2)
    assert alaw_decode(codes).tobytes() == audioop.alaw2lin(codes, 2)


def test_input_is_resampled_to_16_khz_without_losing_the_tail() -> None:
    decoder = InputDecoder("audio/pcm")
    pcm = (np.sin(np.arange(24_000) / 10) * 8000).astype("<i2").tobytes()  # 1 s at 24 kHz
    out = [decoder.decode(pcm[i : i + 960]) for i in range(0, len(pcm), 960)]
    total = sum(len(chunk) for chunk in out) + len(decoder.flush())
    assert total == 16_000
    telephone = InputDecoder("audio/pcmu")
    assert len(telephone.decode(ulaw_encode(np.zeros(800, "<i2")))) + len(telephone.flush()) == 1600


def test_output_is_resampled_to_the_client_rate() -> None:
    pcm = np.zeros(24_000, dtype="<f4").tobytes()
    assert len(OutputEncoder("audio/pcm").encode(pcm)) == 48_000
    encoder = OutputEncoder("audio/pcmu")
    body = b"".join(encoder.encode(pcm[i : i + 4800]) for i in range(0, len(pcm), 4800))
    assert len(body + encoder.flush()) == 8000
    assert encoder.samples_out == 8000
