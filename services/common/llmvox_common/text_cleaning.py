"""The upstream text cleaning rule for LLM output (docs/streaming.md), shared by the TTS replica's
upstream-compatible producer and the gateway's sentence splitter.

Reproduced exactly, quirks included (`1,2,3` → `12,3`, no final strip), because the decoder was
trained on text that went through it.
"""

from __future__ import annotations

import re

# A `.` after a digit and before whitespace or the end is a list marker or a number's end
# ("Item 5.", "3. Third"), not a sentence end; a decimal point ("5.5") is kept.
_DIGIT_DOT = re.compile(r"(?<=\d)\.(?=\s|$)")
_WHITESPACE_RUN = re.compile(r"\s+")
_ELLIPSIS = re.compile(r"\.{3,}")
# Consuming both digits (no look-around) makes matches non-overlapping: "1,2,3" → "12,3".
_DIGIT_COMMA_DIGIT = re.compile(r"(\d),(\d)")
_SLASHES = re.compile(r"/+")
_BACKSLASHES = re.compile(r"\\+")


def clean_llm_piece(text: str) -> str:
    """Apply the upstream cleaning rules to one piece (no strip at the end, on purpose)."""
    text = text.strip()
    text = text.replace("**", "")
    text = text.replace("-", " ")
    text = _DIGIT_DOT.sub("", text)
    text = text.replace("*", "")
    text = text.replace("#", " number ").replace("&", " and ").replace("@", " at ")
    text = _WHITESPACE_RUN.sub(" ", text)
    # Runs after the whitespace collapse, so its own spaces survive ("Wait..." → "Wait pause ").
    text = _ELLIPSIS.sub(" pause ", text)
    text = _DIGIT_COMMA_DIGIT.sub(r"\1\2", text)
    text = _SLASHES.sub(" slash ", text)
    text = _BACKSLASHES.sub(" backslash ", text)
    return text
