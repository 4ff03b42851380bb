"""The launcher's log prefixer: chunks of a child's output → whole lines with its name."""

from __future__ import annotations

import pytest

from llmvox_launch.output import MAX_LINE_CHARS, LinePrefixer, label_width, prefix_for

pytestmark = pytest.mark.unit


def test_lines_split_across_chunks_come_out_whole() -> None:
    out = LinePrefixer("llm")
    assert out.feed(b"loading wei") == []
    assert out.feed(b"ghts\nwarm-up done\nSERV") == ["[llm] loading weights", "[llm] warm-up done"]
    assert out.feed(b"ING\n") == ["[llm] SERVING"]
    assert out.flush() == []


def test_names_are_padded_to_one_column() -> None:
    width = label_width(["asr", "gateway", "tts1"])
    assert prefix_for("asr", width) == "[asr]     "
    assert prefix_for("gateway", width) == "[gateway] "
    assert LinePrefixer("tts1", width).feed(b"x\n") == ["[tts1]    x"]


def test_crlf_progress_bars_and_the_unterminated_rest() -> None:
    out = LinePrefixer("asr")
    assert out.feed(b"windows line\r\n") == ["[asr] windows line"]
    assert out.feed(b"  10%\r  50%\r 100%\r\n") == ["[asr]  100%"]
    assert out.feed(b"no newline at exit") == []
    assert out.flush() == ["[asr] no newline at exit"]
    assert out.flush() == []


def test_a_character_split_between_chunks_and_invalid_bytes() -> None:
    out = LinePrefixer("tts1")
    data = "voilà\n".encode()
    assert out.feed(data[:5]) == []  # "voil" + the first byte of "à"
    assert out.feed(data[5:]) == ["[tts1] voilà"]
    assert out.feed(b"bad \xff byte\n") == ["[tts1] bad \ufffd byte"]


def test_endless_lines_are_cut() -> None:
    out = LinePrefixer("llm")
    lines = out.feed(b"x" * (2 * MAX_LINE_CHARS + 10))
    assert [len(line) for line in lines] == [len("[llm] ") + MAX_LINE_CHARS] * 2
    assert out.flush() == ["[llm] " + "x" * 10]


def test_the_last_lines_are_kept_without_prefix() -> None:
    out = LinePrefixer("llm", keep=3)
    out.feed(b"".join(f"line {i}\n".encode() for i in range(10)))
    assert list(out.last_lines) == ["line 7", "line 8", "line 9"]
