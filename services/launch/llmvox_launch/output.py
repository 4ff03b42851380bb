"""Children's output → whole lines with the child's name in front (pure).

Output arrives in arbitrary chunks: a line may be split between reads, a multi-byte character
too, and progress bars redraw one line with carriage returns. `LinePrefixer` turns chunks into
finished lines, keeping the last few for the message shown when a child dies.
"""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import Iterable

MAX_LINE_CHARS = 16_000  # a longer run without a newline is cut into several lines


def label_width(names: Iterable[str]) -> int:
    return max((len(name) for name in names), default=0)


def prefix_for(name: str, width: int) -> str:
    """`[asr]   ` padded so that the lines of every child start in the same column."""
    return f"[{name}]".ljust(width + 2) + " "


class LinePrefixer:
    """Feed raw bytes, get prefixed lines; `last_lines` keeps the newest ones unprefixed."""

    def __init__(self, name: str, width: int = 0, keep: int = 30) -> None:
        self.prefix = prefix_for(name, max(width, len(name)))
        self.last_lines: deque[str] = deque(maxlen=keep)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    def feed(self, data: bytes) -> list[str]:
        text = self._partial + self._decoder.decode(data)
        *complete, self._partial = text.split("\n")
        while len(self._partial) > MAX_LINE_CHARS:
            complete.append(self._partial[:MAX_LINE_CHARS])
            self._partial = self._partial[MAX_LINE_CHARS:]
        return self._emit(complete)

    def flush(self) -> list[str]:
        """The unterminated rest, at end of output."""
        rest = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        return self._emit([rest]) if rest.strip() else []

    def _emit(self, raw_lines: list[str]) -> list[str]:
        lines = []
        for raw in raw_lines:
            # A progress bar redraws with \r: only its last state is worth a line.
            line = raw.rstrip("\r")
            if "\r" in line:
                line = next((part for part in reversed(line.split("\r")) if part), "")
            self.last_lines.append(line)
            lines.append(self.prefix + line)
        return lines
