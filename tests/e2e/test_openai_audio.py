"""OpenAI's audio endpoints on the real stack (tests/e2e/stack.py), called by the official `openai`
client: `/v1/audio/speech` in every `response_format` (the text is spoken verbatim, so no LLM is
involved; the tiny TTS profile's audio is noise, so what is checked is the encoding: format, rate,
duration, streaming), and `/v1/audio/transcriptions` / `/translations` of espeak-ng speech through
the real ASR (Whisper tiny.en).
"""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import av
import jiwer
import openai
import pytest

from .stack import Stack

pytestmark = pytest.mark.integration

TEXT = "Good morning. The weather is fine today. See you soon."
RATE = 24_000
# Lossy codecs add their encoder delay and pad the last frame (MP3 at 24 kHz: 576-sample frames;
# AAC: 1024 samples of priming plus the last frame's padding). Ogg Opus and FLAC record the
# exact length.
PADDING_S = {"mp3": 3 * 576 / RATE, "aac": 2 * 1024 / RATE}
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
SPOKEN = "I would like to book a table for two people. The meeting has been moved to next week."
# As tests/integration/test_asr_service.py: measured near 0 with espeak-ng and tiny.en.
MAX_WORD_ERROR_RATE = 0.25


def client_of(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0)


def decoded(data: bytes) -> tuple[str, int, float]:
    """(codec, sample rate, seconds) of a file, as a player decodes it."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return stream.codec_context.name, stream.rate, samples / stream.rate


def speak(client: openai.OpenAI, fmt: str, **extra: object) -> tuple[list[bytes], str]:
    """The response's chunks as they arrived, and its content type."""
    with client.audio.speech.with_streaming_response.create(
        model="llmvox",
        voice="default",
        input=TEXT,
        response_format=fmt,  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    ) as response:
        return list(response.iter_bytes()), response.headers["content-type"]


@pytest.fixture(scope="module")
def reference_seconds(stack: Stack) -> float:
    """How long the text is as raw PCM16 (greedy decoding: the same audio every time)."""
    chunks, _ = speak(client_of(stack), "pcm")
    pcm = b"".join(chunks)
    assert len(pcm) % 2 == 0
    assert len(pcm) > RATE // 10, "expected some audio"
    return len(pcm) / 2 / RATE


# -- speech ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "codec", "rate"),
    [
        ("mp3", "mp3float", RATE),
        ("opus", "opus", 48_000),
        ("aac", "aac", RATE),
        ("flac", "flac", RATE),
        ("wav", "pcm_s16le", RATE),
    ],
)
def test_every_format_streams_and_decodes_to_the_spoken_length(
    stack: Stack, reference_seconds: float, fmt: str, codec: str, rate: int
) -> None:
    chunks, content_type = speak(client_of(stack), fmt)
    assert content_type == CONTENT_TYPES[fmt]
    # Streamed as encoded: the body came in pieces, the first long before the last.
    assert len([c for c in chunks if c]) > 1
    got_codec, got_rate, seconds = decoded(b"".join(chunks))
    assert (got_codec, got_rate) == (codec, rate)
    assert seconds == pytest.approx(reference_seconds, abs=0.005 + PADDING_S.get(fmt, 0.0))


def test_speed_stretches_the_audio(stack: Stack, reference_seconds: float) -> None:
    client = client_of(stack)
    chunks, _ = speak(client, "flac", speed=2.0)
    _, _, fast = decoded(b"".join(chunks))
    assert fast == pytest.approx(reference_seconds / 2, rel=0.03)
    chunks, _ = speak(client, "wav", speed=0.5)
    _, _, slow = decoded(b"".join(chunks))
    assert slow == pytest.approx(reference_seconds * 2, rel=0.03)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"speed": 4.5}, "speed"),
        ({"speed": 0.1}, "speed"),
        ({"response_format": "m4a"}, "response_format"),
    ],
)
def test_invalid_speed_or_format_is_a_422(
    stack: Stack, extra: dict[str, object], needle: str
) -> None:
    arguments: dict[str, object] = {"model": "llmvox", "voice": "default", "input": "Hi."}
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client_of(stack).audio.speech.create(**{**arguments, **extra})  # type: ignore[arg-type]
    assert needle in str(caught.value)


# -- transcription ---------------------------------------------------------------------------------


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def word_error_rate(hypothesis: str) -> float:
    return float(jiwer.wer(normalize(SPOKEN), normalize(hypothesis)))


@pytest.fixture(scope="module")
def spoken_wav(espeak_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("speech") / "spoken.wav"
    subprocess.run([espeak_bin, "-w", str(path), SPOKEN], check=True, capture_output=True)
    return path


def as_mp3(wav: Path) -> bytes:
    """The same speech as an MP3 file (PyAV), to send a compressed upload."""
    out = io.BytesIO()
    with av.open(str(wav)) as source, av.open(out, mode="w", format="mp3") as target:
        stream = target.add_stream("libmp3lame", rate=22_050, layout="mono")
        for frame in source.decode(audio=0):
            frame.pts = None
            for packet in stream.encode(frame):
                target.mux(packet)
        for packet in stream.encode(None):
            target.mux(packet)
    return out.getvalue()


def wav_seconds(path: Path) -> float:
    _, rate, seconds = decoded(path.read_bytes())
    assert rate == 22_050  # espeak-ng's own rate: the gateway resamples it
    return seconds


SRT_CUE = re.compile(r"^\d+\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n.+$")
VTT_CUE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}\n.+$")


def test_transcriptions_in_every_response_format(stack: Stack, spoken_wav: Path) -> None:
    client = client_of(stack)
    wav = ("spoken.wav", spoken_wav.read_bytes(), "audio/wav")

    plain = client.audio.transcriptions.create(model="whisper-1", file=wav)
    assert word_error_rate(plain.text) <= MAX_WORD_ERROR_RATE, plain.text

    # Any format FFmpeg decodes: the same speech as MP3.
    mp3 = ("spoken.mp3", as_mp3(spoken_wav), "audio/mpeg")
    text = client.audio.transcriptions.create(model="whisper-1", file=mp3, response_format="text")
    assert isinstance(text, str)
    assert word_error_rate(text) <= MAX_WORD_ERROR_RATE, text

    verbose = client.audio.transcriptions.create(
        model="whisper-1",
        file=wav,
        language="en",
        response_format="verbose_json",
        timestamp_granularities=["segment", "word"],
    )
    assert word_error_rate(verbose.text) <= MAX_WORD_ERROR_RATE, verbose.text
    assert verbose.language == "en"
    assert verbose.duration == pytest.approx(wav_seconds(spoken_wav), abs=0.01)
    assert verbose.segments, verbose
    assert [s.id for s in verbose.segments] == list(range(len(verbose.segments)))
    assert all(0 <= s.start < s.end <= verbose.duration + 0.5 for s in verbose.segments)
    assert all(s.tokens for s in verbose.segments)
    assert verbose.words
    assert normalize(" ".join(w.word for w in verbose.words)) == normalize(verbose.text)
    starts = [w.start for w in verbose.words]
    assert starts == sorted(starts)

    srt = client.audio.transcriptions.create(model="whisper-1", file=wav, response_format="srt")
    cues = srt.strip().split("\n\n")
    assert all(SRT_CUE.match(cue) for cue in cues), srt
    srt_text = " ".join(cue.split("\n", 2)[2] for cue in cues)
    assert word_error_rate(srt_text) <= MAX_WORD_ERROR_RATE, srt

    vtt = client.audio.transcriptions.create(model="whisper-1", file=wav, response_format="vtt")
    header, _, body = vtt.partition("\n\n")
    assert header == "WEBVTT"
    vtt_cues = body.strip().split("\n\n")
    assert all(VTT_CUE.match(cue) for cue in vtt_cues), vtt
    vtt_text = " ".join(cue.split("\n", 1)[1] for cue in vtt_cues)
    assert word_error_rate(vtt_text) <= MAX_WORD_ERROR_RATE, vtt


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK's translations resource
def test_translation_reaches_the_asr(stack: Stack, spoken_wav: Path) -> None:
    """The stack's Whisper tiny.en is English-only: the ASR refuses to translate, and the client
    gets that as a clear 422 (a multilingual model translates; see the unit tests)."""
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client_of(stack).audio.translations.create(
            model="whisper-1", file=("spoken.wav", spoken_wav.read_bytes(), "audio/wav")
        )
    assert "English-only" in str(caught.value)
    assert "cannot translate" in str(caught.value)


def test_a_file_that_is_not_audio_is_a_400(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client_of(stack).audio.transcriptions.create(
            model="whisper-1", file=("notes.txt", b"certainly not audio", "text/plain")
        )
    assert "file" in str(caught.value)
    with pytest.raises(openai.BadRequestError):
        client_of(stack).audio.transcriptions.create(
            model="whisper-1", file=("empty.wav", b"", "audio/wav")
        )
