"""The frames waiting for one WebSocket client, bounded, with the overflow policy stated: a
client that falls `limit` frames behind is dropped (the session closes it with 1008). Producers
never wait on a slow client and memory never grows with one."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class CloseFrame:
    code: int
    reason: str


Frame = str | bytes | CloseFrame


class Outbox:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self._queue: asyncio.Queue[Frame] = asyncio.Queue(limit)
        self.overflowed = asyncio.Event()

    def put(self, frame: Frame) -> bool:
        """Queue a frame; False (and `overflowed` set) when the client is too far behind."""
        if self.overflowed.is_set():
            return False
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.overflowed.set()
            return False
        return True

    async def get(self) -> Frame:
        return await self._queue.get()

    def __len__(self) -> int:
        return self._queue.qsize()
