"""Property: whatever a job entry holds, the parser returns a job or a JobFormatError with a
reason, never another exception (a replica must not die of a job's content)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmvox_common.tts_streams import AudioPart, JobFormatError, TextPiece, TTSJob

pytestmark = pytest.mark.unit

NAMES = ["session", "seq", "reply_to", "first_chunk", "max_chunk", "deadline_ms", "text"]
NAMES += ["text_stream", "piece", "done", "part", "last", "pcm", "tokens"]

# Values near the valid ones find more paths than random bytes alone: digits, signs, huge
# numbers, non-ASCII digits, invalid UTF-8, blank and very long text.
values = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    st.integers(min_value=-(10**30), max_value=10**30).map(lambda n: str(n).encode()),
    st.sampled_from(
        [b"", b" 7", b"+7", b"1_000", "\u0661\u0662".encode(), "\u00b2".encode(), b"\xff\xfe"]
    ),
    st.sampled_from([b"llmvox:audio:s", b"llmvox:text:s:0", b"llmvox:tts:jobs", b"9" * 5000]),
    st.integers(min_value=0, max_value=200_000).map(lambda n: b"x " * n),
)
keys = st.one_of(st.sampled_from(NAMES), st.text(max_size=12))
# Both the bytes and the str spelling of a name: the only way a mapping holds a field twice.
field_maps = st.dictionaries(st.one_of(keys.map(str.encode), keys), values, max_size=12).map(
    lambda d: {
        k: (v if isinstance(k, bytes) else v.decode("utf-8", "replace")) for k, v in d.items()
    }
)


def _parse(parse: Callable[[dict], object], fields: dict) -> object:
    """The parser's result, or the JobFormatError it raised (returned, to be checked)."""
    try:
        return parse(fields)
    except JobFormatError as error:
        return error


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field_maps)
def test_any_field_map_parses_to_a_job_or_a_reasoned_rejection(fields: dict) -> None:
    job = _parse(TTSJob.from_fields, fields)  # any other exception fails the test
    if isinstance(job, JobFormatError):
        assert job.reason
        assert job.seq is None or job.seq >= 0
        assert job.reply_to is None or job.reply_to.startswith("llmvox:audio:")
        return
    assert isinstance(job, TTSJob)
    assert job.seq >= 0
    assert job.first_chunk >= 1
    assert job.max_chunk >= 1
    assert job.reply_to.startswith("llmvox:audio:")
    assert (job.text is None) != (job.text_stream is None)
    assert TTSJob.from_fields(job.to_fields()) == job


@settings(max_examples=200, deadline=None)
@given(field_maps)
def test_text_pieces_and_audio_parts_parse_or_are_refused(fields: dict) -> None:
    for parse in (TextPiece.from_fields, AudioPart.from_fields):
        result = _parse(parse, fields)
        assert not isinstance(result, JobFormatError) or result.reason


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("text", b"\xff\xfe", "not valid UTF-8"),
        ("session", b"\xc3", "not valid UTF-8"),
        ("seq", "\u00b2".encode(), "not an integer"),
        ("seq", b"9" * 5000, "not an integer"),
        ("max_chunk", b"99999999", "<="),
        ("deadline_ms", b"-5", ">= 0"),
        ("reply_to", b"llmvox:tts:jobs", "audio stream key"),
    ],
)
def test_named_rejections(name: str, value: bytes, reason: str) -> None:
    fields = {
        b"session": b"s",
        b"seq": b"1",
        b"reply_to": b"llmvox:audio:s",
        b"text": b"hello.",
        name.encode(): value,
    }
    with pytest.raises(JobFormatError, match=reason):
        TTSJob.from_fields(fields)


def test_seq_of_a_rejected_job_is_kept_only_when_valid() -> None:
    base = {b"session": b"s", b"reply_to": b"llmvox:audio:s", b"text": b"\xff"}
    with pytest.raises(JobFormatError) as caught:
        TTSJob.from_fields({**base, b"seq": b"3"})
    assert (caught.value.reply_to, caught.value.seq) == ("llmvox:audio:s", 3)
    with pytest.raises(JobFormatError) as caught:
        TTSJob.from_fields({**base, b"seq": "\u00b2".encode()})
    assert caught.value.seq is None


def test_the_same_field_twice_with_different_values_is_refused() -> None:
    fields = {b"session": b"s", b"seq": b"1", b"reply_to": b"llmvox:audio:s", b"text": b"a."}
    with pytest.raises(JobFormatError, match="twice"):
        TTSJob.from_fields({**fields, "seq": "2"})
    assert TTSJob.from_fields({**fields, "seq": "1"}).seq == 1
