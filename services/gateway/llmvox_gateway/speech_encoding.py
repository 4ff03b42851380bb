"""The encodings of `/v1/audio/speech`: every `response_format` OpenAI has (mp3, opus in Ogg, aac
in ADTS, flac, wav, pcm), encoded while the turn's audio arrives, and `speed` as a time-stretch.

The replicas write float32 mono 24 kHz parts. A `SpeechStream` takes them one by one and returns
the bytes of the response that each part completes, so the first bytes leave before the text has
been spoken to the end. The compressed formats are PyAV (FFmpeg) encoders and muxers writing into
an in-memory sink that is emptied after every part; the muxers are ones that never seek back
(MP3, Ogg, ADTS, FLAC without its seek-back STREAMINFO update), so what has been sent stays valid.
`speed` other than 1 runs the audio through FFmpeg's `atempo` filter (pitch kept), chained because
one `atempo` takes 0.5..2.0.

Encoding a part takes about 1 ms per 200 ms of audio (more for the first, which sets the codec up),
so the PyAV work runs on a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from fractions import Fraction
from typing import Final, Literal

import av
import av.filter
import numpy as np

from llmvox_common.audio import float_to_pcm16
from llmvox_common.constants import SAMPLE_RATE

from .audio_format import streaming_wav_header

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
SPEECH_FORMATS: Final[tuple[SpeechFormat, ...]] = ("mp3", "opus", "aac", "flac", "wav", "pcm")

# pcm keeps the content type it had before the other formats existed.
CONTENT_TYPES: Final[dict[str, str]] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}

MIN_SPEED: Final = 0.25
MAX_SPEED: Final = 4.0


class _Codec:
    """How one compressed format is written: muxer, encoder, its sample rate and options."""

    def __init__(
        self,
        muxer: str,
        encoder: str,
        rate: int,
        *,
        bit_rate: int = 0,
        muxer_options: dict[str, str] | None = None,
    ) -> None:
        self.muxer = muxer
        self.encoder = encoder
        self.rate = rate
        self.bit_rate = bit_rate
        # flush_packets: every muxed packet goes to the sink at once instead of waiting in
        # FFmpeg's 32 KiB I/O buffer, which would hold back seconds of compressed speech.
        self.muxer_options = {"flush_packets": "1", **(muxer_options or {})}


_CODECS: Final[dict[str, _Codec]] = {
    "mp3": _Codec("mp3", "libmp3lame", SAMPLE_RATE, bit_rate=64_000),
    # Opus runs at 48 kHz only; the encoder's own resampler converts the 24 kHz parts. The Ogg
    # muxer closes a page once per second by default; 20 ms pages (one Opus packet each) send
    # the audio as it is encoded, for about 27 bytes of page header per packet.
    "opus": _Codec("ogg", "libopus", 48_000, muxer_options={"page_duration": "20000"}),
    "aac": _Codec("adts", "aac", SAMPLE_RATE, bit_rate=64_000),
    "flac": _Codec("flac", "flac", SAMPLE_RATE),
}


def check_speed(speed: float) -> str | None:
    """Why `speed` cannot be honoured, or None."""
    if not MIN_SPEED <= speed <= MAX_SPEED:
        return f"speed: {speed:g} is outside {MIN_SPEED:g}..{MAX_SPEED:g}"
    return None


def tempo_stages(speed: float) -> list[float]:
    """`atempo` factors whose product is `speed`, each within the filter's 0.5..2.0."""
    stages: list[float] = []
    while speed > 2.0:
        stages.append(2.0)
        speed /= 2.0
    while speed < 0.5:
        stages.append(0.5)
        speed /= 0.5
    stages.append(speed)
    return stages


def _mono_frame(samples: np.ndarray, rate: int, pts: int | None = None) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(samples, dtype=np.float32)[None, :], format="flt", layout="mono"
    )
    frame.sample_rate = rate
    if pts is not None:
        frame.pts = pts
        frame.time_base = Fraction(1, rate)
    return frame


def _mono_samples(frame: av.AudioFrame) -> np.ndarray:
    return np.asarray(frame.to_ndarray(), dtype=np.float32).reshape(-1)


class TempoStretch:
    """`speed` as FFmpeg's `atempo` (WSOLA: duration divided by `speed`, pitch kept). Blocking."""

    # atempo releases output only once a whole input frame has been stretched, so one big part
    # would be held back entirely; 40 ms slices keep its delay near its own ~40 ms window.
    SLICE: Final = SAMPLE_RATE // 25

    def __init__(self, speed: float, rate: int = SAMPLE_RATE) -> None:
        self._rate = rate
        self._pts = 0
        self._graph = av.filter.Graph()
        source = self._graph.add_abuffer(
            format="flt", sample_rate=rate, layout="mono", time_base=Fraction(1, rate)
        )
        last = source
        for factor in tempo_stages(speed):
            stage = self._graph.add("atempo", f"{factor:.6f}")
            last.link_to(stage)
            last = stage
        sink = self._graph.add("abuffersink")
        last.link_to(sink)
        self._graph.configure()

    def _pull(self) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        while True:
            try:
                frame = self._graph.pull()
            except (av.BlockingIOError, av.EOFError):
                return out
            assert isinstance(frame, av.AudioFrame)
            out.append(_mono_samples(frame))

    def feed(self, samples: np.ndarray) -> np.ndarray:
        out: list[np.ndarray] = []
        for start in range(0, samples.size, self.SLICE):
            piece = samples[start : start + self.SLICE]
            self._graph.push(_mono_frame(piece, self._rate, self._pts))
            self._pts += piece.size
            out.extend(self._pull())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def finish(self) -> np.ndarray:
        self._graph.push(None)
        out = self._pull()
        return np.concatenate(out) if out else np.zeros(0, np.float32)


class _ByteSink:
    """The file PyAV muxes into: bytes are collected until the stream takes them. It says it
    cannot seek, so no muxer goes back to rewrite a header that has already been sent."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def seekable(self) -> bool:
        return False

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class CodecWriter:
    """One compressed stream (PyAV encoder + muxer) into a `_ByteSink`. Blocking."""

    def __init__(self, fmt: str, rate: int = SAMPLE_RATE) -> None:
        codec = _CODECS[fmt]
        self._rate = rate
        self._sink = _ByteSink()
        self._container = av.open(
            self._sink, mode="w", format=codec.muxer, options=codec.muxer_options
        )
        try:
            self._stream = self._container.add_stream(codec.encoder, rate=codec.rate, layout="mono")
            if codec.bit_rate:
                self._stream.codec_context.bit_rate = codec.bit_rate
        except BaseException:
            self._container.close()
            raise
        self._closed = False

    def _mux(self, frame: av.AudioFrame | None) -> bytes:
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()

    def write(self, samples: np.ndarray) -> bytes:
        if samples.size == 0:
            return self._sink.take()  # the header, written by the first call
        return self._mux(_mono_frame(samples, self._rate))

    def finish(self) -> bytes:
        """The encoder's last frames and the muxer's trailer."""
        data = self._mux(None)
        self._closed = True
        self._container.close()
        return data + self._sink.take()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._container.close()


class SpeechStream:
    """The bytes of one `/v1/audio/speech` response, part by part: `header()` first, `feed` each
    float32 part as it arrives, `finish` once the turn has completed, `close` always."""

    def __init__(self, fmt: str, speed: float = 1.0) -> None:
        if fmt not in SPEECH_FORMATS:
            raise ValueError(f"unknown speech format {fmt!r}")
        self.format = fmt
        self.media_type = CONTENT_TYPES[fmt]
        self._speed = speed
        # PyAV work (even setting a codec up takes milliseconds) happens on the worker thread:
        # the filter and the codec are made by the first part's `_feed`.
        self._blocking = speed != 1.0 or fmt in _CODECS
        self._started = False
        self._tempo: TempoStretch | None = None
        self._codec: CodecWriter | None = None
        # A part's encoding can still run on its thread when the client leaves (the awaiting task
        # is cancelled, the thread is not): `close` takes this lock so PyAV's objects are never
        # freed under a running encode.
        self._lock = threading.Lock()

    def header(self) -> bytes:
        return streaming_wav_header() if self.format == "wav" else b""

    def _start(self) -> None:
        """Makes the filter and the codec; on the worker thread, under the lock."""
        if self._started:
            return
        self._started = True
        if self._speed != 1.0:
            self._tempo = TempoStretch(self._speed)
        if self.format in _CODECS:
            self._codec = CodecWriter(self.format)

    def _output(self, samples: np.ndarray) -> bytes:
        if self._codec is not None:
            return self._codec.write(samples)
        return float_to_pcm16(samples).tobytes() if samples.size else b""

    def _feed(self, samples: np.ndarray) -> bytes:
        with self._lock:
            self._start()
            if self._tempo is not None:
                samples = self._tempo.feed(samples)
            return self._output(samples)

    def _finish(self) -> bytes:
        with self._lock:
            self._start()
            tail = b""
            if self._tempo is not None:
                tail = self._output(self._tempo.finish())
            if self._codec is not None:
                tail += self._codec.finish()
            return tail

    async def feed(self, pcm_float32: bytes) -> bytes:
        samples = np.frombuffer(pcm_float32, dtype="<f4")
        if not self._blocking:
            return self._output(samples)  # PCM16 conversion: microseconds, done in place
        return await asyncio.to_thread(self._feed, samples)

    async def finish(self) -> bytes:
        if not self._blocking:
            return b""
        return await asyncio.to_thread(self._finish)

    def close(self) -> None:
        with self._lock:
            if self._codec is not None:
                self._codec.close()
