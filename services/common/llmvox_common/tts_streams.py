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
    as JSON `{"at_ms", "profile", "untrained"}`. A value that is not such an object reads as
    all unknown: the key's existence still says the replica lives."""

    at_ms: float | None = None
    profile: str | None = None
    untrained: bool = False

    def encode(self) -> str:
        return json.dumps(
            {"at_ms": self.at_ms, "profile": self.profile, "untrained": self.untrained}
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
        return cls(
            at_ms=at_ms if isinstance(at_ms, int | float) and not isinstance(at_ms, bool) else None,
            profile=profile if isinstance(profile, str) else None,
            untrained=beat.get("untrained") is True,
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
    text = flag.decode() if isinstance(flag, bytes) else flag
    try:
        return seq <= int(text)
    except ValueError:
        return True


class JobFormatError(ValueError):
    """A job entry that cannot be served; an error part can be sent when both `reply_to` and
    `seq` are known."""

    def __init__(self, reason: str, reply_to: str | None = None, seq: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply_to = reply_to
        self.seq = seq


def _text(fields: Mapping[bytes | str, bytes | str], name: str) -> str | None:
    for key in (name, name.encode()):
        if key in fields:
            value = fields[key]  # type: ignore[index]
            return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return None


def _int(fields: Mapping[bytes | str, bytes | str], name: str, default: int | None = None) -> int:
    raw = _text(fields, name)
    if raw is None or raw == "":
        if default is None:
            raise JobFormatError(f"missing field {name!r}")
        return default
    try:
        return int(raw)
    except ValueError as error:
        raise JobFormatError(f"field {name!r} is not an integer: {raw!r}") from error


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
        """Parse and check a job entry; raises JobFormatError with the reason."""
        reply_to = _text(fields, "reply_to") or None
        seq_raw = _text(fields, "seq")
        # An error part can only be placed when the job's seq is known and valid.
        seq = int(seq_raw) if seq_raw is not None and seq_raw.isdigit() else None
        try:
            session = _text(fields, "session")
            if not session:
                raise JobFormatError("missing field 'session'")
            if not reply_to:
                raise JobFormatError("missing field 'reply_to'")
            text = _text(fields, "text")
            stream = _text(fields, "text_stream")
            if (text is None) == (stream is None):
                raise JobFormatError("a job needs exactly one of 'text' and 'text_stream'")
            job = cls(
                session=session,
                seq=_int(fields, "seq"),
                reply_to=reply_to,
                first_chunk=_int(fields, "first_chunk", DEFAULT_FIRST_CHUNK),
                max_chunk=_int(fields, "max_chunk", DEFAULT_MAX_CHUNK),
                deadline_ms=_int(fields, "deadline_ms", 0),
                text=text,
                text_stream=stream or None,
            )
        except JobFormatError as error:
            raise JobFormatError(error.reason, reply_to, seq) from None
        if job.seq < 0:
            raise JobFormatError("'seq' must be >= 0", reply_to, None)
        if job.first_chunk < 1 or job.max_chunk < 1:
            raise JobFormatError("'first_chunk' and 'max_chunk' must be >= 1", reply_to, job.seq)
        if text is not None and not text.strip():
            raise JobFormatError("empty text", reply_to, job.seq)
        if stream is not None and not stream.strip():
            raise JobFormatError("empty 'text_stream' key", reply_to, job.seq)
        return job


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
        return cls(
            seq=_int(fields, "seq"),
            part=_int(fields, "part"),
            last=_int(fields, "last", 0) == 1,
            pcm=pcm if isinstance(pcm, bytes) else str(pcm).encode("latin-1"),
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
