"""The Redis Streams contract between the gateway and the TTS replica pool: entry fields and their
encoding, once, for both sides. docs/redis-contract.md describes every key, who writes and reads
it, and how long it lives; the key names themselves are in constants.py.

Jobs (`llmvox:tts:jobs`, consumer group `tts`): one per sentence, with `session`, `seq`,
`first_chunk`, `max_chunk`, `reply_to`, `deadline_ms` and either `text` or `text_stream`.
Streamed text (`llmvox:text:<session>:<seq>`): entries with `piece` (whole words) and/or
`done` = 1. Audio (`reply_to`, normally `llmvox:audio:<session>`): parts with `seq`, `part`,
`last`, `pcm` (float32 little-endian mono 24 kHz), `tokens`, `worker`; a failed or dropped job
ends with a part that carries `error` and `error_kind` (and `last` = 1, no samples).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .constants import (
    AUDIO_KEY_PREFIX,
    CANCEL_KEY_PREFIX,
    CONSUMER_GROUP,
    DEAD_LETTER_STREAM,
    DEFAULT_FIRST_CHUNK,
    DEFAULT_MAX_CHUNK,
    JOBS_STREAM,
    TEXT_KEY_PREFIX,
    WORKERS_KEY_PREFIX,
)

__all__ = [
    "CANCEL_ALL",
    "CONSUMER_GROUP",
    "DEAD_LETTER_STREAM",
    "JOBS_STREAM",
    "WORKERS_KEY_PREFIX",
    "AudioPart",
    "Heartbeat",
    "JobFormatError",
    "TTSJob",
    "TextPiece",
    "audio_stream_key",
    "cancel_key",
    "cancels_seq",
    "text_stream_key",
]


@dataclass(frozen=True)
class Heartbeat:
    """The value of a replica's heartbeat key: when it was written and what the replica runs,
    as JSON `{"at_ms", "profile", "untrained", "precision", "vocoder_precision"}` (the last two:
    the numerics in effect, e.g. int8 / bf16, or fp32 / fp32 for the exact mode). A value that is
    not such an object reads as all unknown: the key's existence still says the replica lives."""

    at_ms: float | None = None
    profile: str | None = None
    untrained: bool = False
    precision: str | None = None
    vocoder_precision: str | None = None

    def encode(self) -> str:
        return json.dumps(
            {
                "at_ms": self.at_ms,
                "profile": self.profile,
                "untrained": self.untrained,
                "precision": self.precision,
                "vocoder_precision": self.vocoder_precision,
            }
        )

    @classmethod
    def decode(cls, value: bytes | str) -> Heartbeat:
        try:
            beat = json.loads(value)
        except (ValueError, UnicodeDecodeError):
            return cls()
        if not isinstance(beat, dict):
            return cls()
        at_ms = beat.get("at_ms")
        profile = beat.get("profile")
        precision = beat.get("precision")
        vocoder_precision = beat.get("vocoder_precision")
        return cls(
            at_ms=at_ms if isinstance(at_ms, int | float) and not isinstance(at_ms, bool) else None,
            profile=profile if isinstance(profile, str) else None,
            untrained=beat.get("untrained") is True,
            precision=precision if isinstance(precision, str) else None,
            vocoder_precision=vocoder_precision if isinstance(vocoder_precision, str) else None,
        )


def audio_stream_key(session: str) -> str:
    return f"{AUDIO_KEY_PREFIX}{session}"


def text_stream_key(session: str, seq: int) -> str:
    return f"{TEXT_KEY_PREFIX}{session}:{seq}"


def cancel_key(session: str) -> str:
    return f"{CANCEL_KEY_PREFIX}{session}"


CANCEL_ALL = "all"


def cancels_seq(flag: bytes | str | None, seq: int) -> bool:
    """Whether a cancel key's value covers job `seq`: "all" (or anything not a number) covers
    every job of the session; a number N covers the jobs with seq <= N."""
    if flag is None:
        return False
    raw = flag if isinstance(flag, bytes) else flag.encode("utf-8", "surrogateescape")
    if _INT.fullmatch(raw.strip()) is None:
        return True
    return seq <= int(raw)


class JobFormatError(ValueError):
    """A job (or part) entry that cannot be served, with the reason; for a job, an error part can
    be sent when both `reply_to` and `seq` are known. The parsers raise nothing else, whatever the
    entry holds (a replica must never die of a job's content)."""

    def __init__(self, reason: str, reply_to: str | None = None, seq: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply_to = reply_to
        self.seq = seq


# Integers are plain ASCII decimals of at most 18 digits: int() alone would also take " 7", "+7",
# "1_000" and other scripts' digits, and fail on thousands of digits with a different error.
_INT = re.compile(rb"-?[0-9]{1,18}")
_MAX_CHUNK_TOKENS = 1 << 20  # far above any real part size; bounds what a job can ask for


def _raw(fields: Mapping[bytes | str, bytes | str], name: str) -> bytes | None:
    """A field's value as bytes, whether the client decodes responses or not. The same name as
    both str and bytes with different values (only a hand-built mapping can do that) is
    refused rather than guessed."""
    values = []
    for key in (name, name.encode()):
        if key in fields:
            value = fields[key]  # type: ignore[index]
            if isinstance(value, bytes):
                values.append(value)
            elif isinstance(value, str):
                values.append(value.encode("utf-8", "surrogateescape"))
            else:
                values.append(str(value).encode())
    if len(values) == 2 and values[0] != values[1]:
        raise JobFormatError(f"field {name!r} given twice with different values")
    return values[0] if values else None


def _text(fields: Mapping[bytes | str, bytes | str], name: str) -> str | None:
    raw = _raw(fields, name)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise JobFormatError(f"field {name!r} is not valid UTF-8") from None


def _int(fields: Mapping[bytes | str, bytes | str], name: str, default: int | None = None) -> int:
    raw = _raw(fields, name)
    if raw is None or raw == b"":
        if default is None:
            raise JobFormatError(f"missing field {name!r}")
        return default
    if _INT.fullmatch(raw) is None:
        shown = raw[:40].decode("utf-8", "replace")
        raise JobFormatError(f"field {name!r} is not an integer: {shown!r}")
    return int(raw)


def _seq_or_none(fields: Mapping[bytes | str, bytes | str]) -> int | None:
    """The job's seq when it is a valid one, else None (no error part can be placed)."""
    try:
        seq = _int(fields, "seq")
    except JobFormatError:
        return None
    return seq if seq >= 0 else None


def _reply_to_or_none(fields: Mapping[bytes | str, bytes | str]) -> str | None:
    """`reply_to` when parts may be written to it: an audio stream key. Anything else (the jobs
    stream itself, a heartbeat key, bytes that are not UTF-8) is no place to write."""
    try:
        reply_to = _text(fields, "reply_to")
    except JobFormatError:
        return None
    if not reply_to or not reply_to.startswith(AUDIO_KEY_PREFIX) or len(reply_to) > 1024:
        return None
    return reply_to


@dataclass(frozen=True)
class TTSJob:
    """One sentence to speak. Every field is set by the producer and read by the replica; the
    end of a turn is not a job field: the gateway knows its final seq itself."""

    session: str
    seq: int
    reply_to: str
    first_chunk: int = DEFAULT_FIRST_CHUNK
    max_chunk: int = DEFAULT_MAX_CHUNK
    deadline_ms: int = 0  # Unix time in ms after which the job is dropped; 0 = none
    text: str | None = None
    text_stream: str | None = None

    def to_fields(self) -> dict[str, str]:
        fields = {
            "session": self.session,
            "seq": str(self.seq),
            "first_chunk": str(self.first_chunk),
            "max_chunk": str(self.max_chunk),
            "reply_to": self.reply_to,
            "deadline_ms": str(self.deadline_ms),
        }
        if self.text is not None:
            fields["text"] = self.text
        if self.text_stream is not None:
            fields["text_stream"] = self.text_stream
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[bytes | str, bytes | str]) -> TTSJob:
        """Parse and check a job entry; raises JobFormatError with the reason, and nothing else
        whatever the entry holds."""
        reply_to = _reply_to_or_none(fields)
        seq = _seq_or_none(fields)  # an error part can only be placed with a valid seq
        try:
            job = cls._parse(fields)
        except JobFormatError as error:
            raise JobFormatError(error.reason, reply_to, seq) from None
        return job

    @classmethod
    def _parse(cls, fields: Mapping[bytes | str, bytes | str]) -> TTSJob:
        session = _text(fields, "session")
        if not session:
            raise JobFormatError("missing field 'session'")
        reply_to = _text(fields, "reply_to")
        if not reply_to:
            raise JobFormatError("missing field 'reply_to'")
        if _reply_to_or_none(fields) is None:
            raise JobFormatError(f"'reply_to' must be an audio stream key ({AUDIO_KEY_PREFIX}...)")
        text = _text(fields, "text")
        stream = _text(fields, "text_stream")
        if (text is None) == (stream is None):
            raise JobFormatError("a job needs exactly one of 'text' and 'text_stream'")
        seq = _int(fields, "seq")
        first_chunk = _int(fields, "first_chunk", DEFAULT_FIRST_CHUNK)
        max_chunk = _int(fields, "max_chunk", DEFAULT_MAX_CHUNK)
        deadline_ms = _int(fields, "deadline_ms", 0)
        if seq < 0:
            raise JobFormatError("'seq' must be >= 0")
        if first_chunk < 1 or max_chunk < 1:
            raise JobFormatError("'first_chunk' and 'max_chunk' must be >= 1")
        if first_chunk > _MAX_CHUNK_TOKENS or max_chunk > _MAX_CHUNK_TOKENS:
            raise JobFormatError(f"'first_chunk' and 'max_chunk' must be <= {_MAX_CHUNK_TOKENS}")
        if deadline_ms < 0:
            raise JobFormatError("'deadline_ms' must be >= 0 (0 = none)")
        if text is not None and not text.strip():
            raise JobFormatError("empty text")
        if stream is not None and not stream.strip():
            raise JobFormatError("empty 'text_stream' key")
        return cls(
            session=session,
            seq=seq,
            reply_to=reply_to,
            first_chunk=first_chunk,
            max_chunk=max_chunk,
            deadline_ms=deadline_ms,
            text=text,
            text_stream=stream or None,
        )


@dataclass(frozen=True)
class AudioPart:
    seq: int
    part: int
    last: bool
    pcm: bytes  # float32 little-endian mono 24 kHz
    tokens: int
    worker: str
    error: str | None = None
    error_kind: str | None = None

    @property
    def samples(self) -> np.ndarray:
        return np.frombuffer(self.pcm, dtype="<f4")

    def to_fields(self) -> dict[str, str | bytes]:
        fields: dict[str, str | bytes] = {
            "seq": str(self.seq),
            "part": str(self.part),
            "last": "1" if self.last else "0",
            "pcm": self.pcm,
            "tokens": str(self.tokens),
            "worker": self.worker,
        }
        if self.error is not None:
            fields["error"] = self.error
            fields["error_kind"] = self.error_kind or "error"
        return fields

    @classmethod
    def from_fields(cls, fields: Mapping[bytes | str, bytes | str]) -> AudioPart:
        pcm = fields.get(b"pcm", fields.get("pcm", b""))  # type: ignore[call-overload]
        if not isinstance(pcm, bytes):  # a client that decodes responses: latin-1 round-trips
            pcm = str(pcm).encode("latin-1", "replace")
        return cls(
            seq=_int(fields, "seq"),
            part=_int(fields, "part"),
            last=_int(fields, "last", 0) == 1,
            pcm=pcm,
            tokens=_int(fields, "tokens", 0),
            worker=_text(fields, "worker") or "",
            error=_text(fields, "error"),
            error_kind=_text(fields, "error_kind"),
        )


@dataclass(frozen=True)
class TextPiece:
    piece: str
    done: bool

    def to_fields(self) -> dict[str, str]:
        return {"piece": self.piece, "done": "1" if self.done else "0"}

    @classmethod
    def from_fields(cls, fields: Mapping[bytes | str, bytes | str]) -> TextPiece:
        return cls(piece=_text(fields, "piece") or "", done=(_text(fields, "done") or "0") == "1")
