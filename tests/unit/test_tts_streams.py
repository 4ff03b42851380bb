"""The Redis Streams contract's entries (tts_streams.py): round trips as redis returns them, and
every reason a job is refused."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from llmvox_common.tts_streams import (
    AudioPart,
    Heartbeat,
    JobFormatError,
    TextPiece,
    TTSJob,
    audio_stream_key,
    cancel_key,
    cancels_seq,
    text_stream_key,
)

pytestmark = pytest.mark.unit

REPLY_TO = "llmvox:audio:s1"


def _as_redis_returns(fields: Mapping[str, str | bytes]) -> dict[bytes, bytes]:
    """What XREAD gives back with decode_responses=False: bytes names and values."""
    return {
        name.encode(): value if isinstance(value, bytes) else value.encode()
        for name, value in fields.items()
    }


def _job_fields(**overrides: str | None) -> dict[bytes, bytes]:
    fields: dict[str, str | None] = {
        "session": "s1",
        "seq": "4",
        "first_chunk": "10",
        "max_chunk": "1280",
        "reply_to": REPLY_TO,
        "deadline_ms": "0",
        "text": "Hello there.",
    }
    fields.update(overrides)
    return _as_redis_returns({k: v for k, v in fields.items() if v is not None})


def _refused(fields: Mapping[bytes, bytes]) -> JobFormatError:
    with pytest.raises(JobFormatError) as caught:
        TTSJob.from_fields(fields)
    return caught.value


def test_keys() -> None:
    assert audio_stream_key("s1") == "llmvox:audio:s1"
    assert text_stream_key("s1", 3) == "llmvox:text:s1:3"
    assert cancel_key("s1") == "llmvox:cancel:s1"


@pytest.mark.parametrize(
    "job",
    [
        TTSJob(session="s1", seq=0, reply_to=REPLY_TO, text="Hi."),
        TTSJob(
            session="sess-ü",
            seq=17,
            reply_to=REPLY_TO,
            first_chunk=160,
            max_chunk=640,
            deadline_ms=1_750_000_000_123,
            text="Grüße, ça va? 你好。",
        ),
        TTSJob(session="s1", seq=2, reply_to=REPLY_TO, text_stream="llmvox:text:s1:2"),
    ],
)
def test_job_round_trip(job: TTSJob) -> None:
    fields = job.to_fields()
    assert TTSJob.from_fields(_as_redis_returns(fields)) == job
    assert TTSJob.from_fields(fields) == job  # a client with decode_responses=True


def test_job_fields_are_the_contract() -> None:
    streamed = TTSJob(session="s", seq=1, reply_to=REPLY_TO, text_stream="k")
    assert streamed.to_fields() == {
        "session": "s",
        "seq": "1",
        "first_chunk": "10",
        "max_chunk": "1280",
        "reply_to": REPLY_TO,
        "deadline_ms": "0",
        "text_stream": "k",
    }


def test_job_defaults_for_optional_fields() -> None:
    fields = _as_redis_returns({"session": "s", "seq": "0", "reply_to": REPLY_TO, "text": "x"})
    assert TTSJob.from_fields(fields) == TTSJob(session="s", seq=0, reply_to=REPLY_TO, text="x")


def test_audio_part_round_trip() -> None:
    samples = np.linspace(-1, 1, 480, dtype=np.float32)
    part = AudioPart(
        seq=3, part=1, last=True, pcm=samples.astype("<f4").tobytes(), tokens=30, worker="replica-1"
    )
    back = AudioPart.from_fields(_as_redis_returns(part.to_fields()))
    assert back == part
    np.testing.assert_array_equal(back.samples, samples)


def test_audio_part_pcm_bytes_are_not_decoded() -> None:
    pcm = bytes(range(256))  # not valid UTF-8
    part = AudioPart(seq=0, part=0, last=False, pcm=pcm, tokens=1, worker="w")
    assert AudioPart.from_fields(_as_redis_returns(part.to_fields())).pcm == pcm


def test_error_part_round_trip() -> None:
    part = AudioPart(
        seq=2, part=0, last=True, pcm=b"", tokens=0, worker="w", error="boom", error_kind="oom"
    )
    fields = part.to_fields()
    assert fields["error"] == "boom"
    assert AudioPart.from_fields(_as_redis_returns(fields)) == part


def test_error_part_without_kind_gets_the_generic_kind() -> None:
    part = AudioPart(seq=2, part=0, last=True, pcm=b"", tokens=0, worker="w", error="boom")
    back = AudioPart.from_fields(_as_redis_returns(part.to_fields()))
    assert back.error == "boom"
    assert back.error_kind == "error"


def test_audio_part_without_seq_is_refused() -> None:
    with pytest.raises(JobFormatError, match="'seq'"):
        AudioPart.from_fields({b"part": b"0", b"pcm": b""})
    with pytest.raises(JobFormatError, match="'part'"):
        AudioPart.from_fields({b"seq": b"0", b"part": b"x"})


@pytest.mark.parametrize(
    "piece", [TextPiece("Hello", False), TextPiece("", True), TextPiece("naïve ", True)]
)
def test_text_piece_round_trip(piece: TextPiece) -> None:
    assert TextPiece.from_fields(_as_redis_returns(piece.to_fields())) == piece


def test_text_piece_fields_default() -> None:
    assert TextPiece.from_fields({b"done": b"1"}) == TextPiece("", True)
    assert TextPiece.from_fields({b"piece": b"word"}) == TextPiece("word", False)


def test_missing_session() -> None:
    error = _refused(_job_fields(session=None))
    assert "session" in error.reason
    assert (error.reply_to, error.seq) == (REPLY_TO, 4)


def test_empty_session() -> None:
    error = _refused(_job_fields(session=""))
    assert "session" in error.reason
    assert (error.reply_to, error.seq) == (REPLY_TO, 4)


@pytest.mark.parametrize("reply_to", [None, ""])
def test_missing_reply_to_leaves_no_reply_address(reply_to: str | None) -> None:
    error = _refused(_job_fields(reply_to=reply_to))
    assert "reply_to" in error.reason
    assert not error.reply_to  # nowhere to send an error part
    assert error.seq == 4


def test_missing_reply_to_is_none_on_the_error() -> None:
    assert _refused(_job_fields(reply_to=None)).reply_to is None


def test_both_text_and_text_stream() -> None:
    error = _refused(_job_fields(text_stream="llmvox:text:s1:4"))
    assert "exactly one" in error.reason
    assert (error.reply_to, error.seq) == (REPLY_TO, 4)


def test_neither_text_nor_text_stream() -> None:
    error = _refused(_job_fields(text=None))
    assert "exactly one" in error.reason
    assert (error.reply_to, error.seq) == (REPLY_TO, 4)


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text(text: str) -> None:
    error = _refused(_job_fields(text=text))
    assert error.reason == "empty text"
    assert (error.reply_to, error.seq) == (REPLY_TO, 4)


def test_empty_text_stream_key() -> None:
    error = _refused(_job_fields(text=None, text_stream=" "))
    assert "text_stream" in error.reason
    assert (error.reply_to, error.seq) == (REPLY_TO, 4)


@pytest.mark.parametrize("seq", ["four", "1.5", "", "0x4"])
def test_non_integer_seq(seq: str) -> None:
    error = _refused(_job_fields(seq=seq))
    assert "seq" in error.reason
    assert error.reply_to == REPLY_TO
    assert error.seq is None  # unknown: no error part can be placed


def test_missing_seq() -> None:
    error = _refused(_job_fields(seq=None))
    assert error.reason == "missing field 'seq'"
    assert (error.reply_to, error.seq) == (REPLY_TO, None)


def test_negative_seq() -> None:
    error = _refused(_job_fields(seq="-1"))
    assert "'seq' must be >= 0" in error.reason
    assert error.reply_to == REPLY_TO
    assert error.seq is None


def test_empty_reply_to_is_none() -> None:
    error = _refused(_job_fields(reply_to=""))
    assert error.reply_to is None


@pytest.mark.parametrize(
    ("flag", "seq", "expected"),
    [(None, 0, False), (b"all", 7, True), (b"1", 1, True), (b"1", 2, False), ("3", 0, True)],
)
def test_cancel_flag_scope(flag, seq: int, expected: bool) -> None:
    assert cancels_seq(flag, seq) is expected


@pytest.mark.parametrize(
    ("name", "value"),
    [("first_chunk", "0"), ("first_chunk", "-10"), ("max_chunk", "0"), ("max_chunk", "-1")],
)
def test_chunk_sizes_below_one(name: str, value: str) -> None:
    error = _refused(_job_fields(**{name: value}))
    assert "first_chunk" in error.reason
    assert (error.reply_to, error.seq) == (REPLY_TO, 4)


@pytest.mark.parametrize("name", ["first_chunk", "max_chunk", "deadline_ms"])
def test_non_integer_optional_fields(name: str) -> None:
    error = _refused(_job_fields(**{name: "ten"}))
    assert name in error.reason
    assert (error.reply_to, error.seq) == (REPLY_TO, 4)


def test_job_format_error_is_a_value_error() -> None:
    assert isinstance(_refused(_job_fields(text=None)), ValueError)


def test_heartbeat_round_trip() -> None:
    beat = Heartbeat(at_ms=1_750_000_000_123, profile="tiny", untrained=True)
    assert Heartbeat.decode(beat.encode()) == beat
    assert Heartbeat.decode(beat.encode().encode()) == beat  # as redis returns it


def test_heartbeat_carries_the_numerics_in_effect() -> None:
    beat = Heartbeat(at_ms=1.0, profile="published", precision="int8", vocoder_precision="bf16")
    assert Heartbeat.decode(beat.encode()) == beat
    # A replica from before these fields reads as unknown numerics.
    assert Heartbeat.decode(b'{"at_ms": 1, "profile": "tiny"}').precision is None


@pytest.mark.parametrize(
    "value", [b"1750000000123", b"not json", b'["at_ms"]', b'{"at_ms": true}', b"\xff"]
)
def test_heartbeat_that_is_not_the_json_object_reads_as_unknown(value: bytes) -> None:
    assert Heartbeat.decode(value) == Heartbeat()


CONTRACT_DOC = Path(__file__).resolve().parents[2] / "docs" / "redis-contract.md"


def _documented_job_fields() -> dict[str, str]:
    """Field name → its "required" cell, from the job table of docs/redis-contract.md."""
    text = CONTRACT_DOC.read_text()
    start, end = text.index("<!-- job-fields"), text.index("<!-- /job-fields -->")
    fields: dict[str, str] = {}
    for line in text[start:end].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 2:
            fields[cells[0].strip("`")] = cells[1]
    return fields


def test_documented_job_fields_are_the_fields_a_job_writes() -> None:
    written = set(TTSJob(session="s", seq=0, reply_to=REPLY_TO, text="x").to_fields())
    written |= set(TTSJob(session="s", seq=0, reply_to=REPLY_TO, text_stream="k").to_fields())
    documented = _documented_job_fields()
    assert set(documented) == written
    # The documented defaults are the ones a job gets when the field is absent.
    defaults = TTSJob(session="s", seq=0, reply_to=REPLY_TO, text="x")
    for name in ("first_chunk", "max_chunk", "deadline_ms"):
        assert documented[name].startswith(f"no ({getattr(defaults, name)}"), name
