"""What the gateway's two WebSocket sessions (`/v1/ws`, ws_session.py; `/v1/realtime`,
realtime_session.py) share: the loops around the protocol and the session's hold on its slot.

A session is a TaskGroup of named loops: `send` (one bounded outbox → the socket), `receive` (the
session's own: client events → actions) and `watchdog` (idle timeout, slow client). A client that
falls `send_queue_frames` behind is closed (1008): audio is never buffered without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from . import metrics
from .errors import WS_NORMAL, WS_POLICY
from .outbox import CloseFrame, Outbox
from .runtime import GatewayRuntime


class SessionClosed(Exception):
    """Ends the session's TaskGroup: the client left, or the server closed the socket."""


async def run_session_loops(
    ws: WebSocket,
    outbox: Outbox,
    *,
    receive: Callable[[], Coroutine[Any, Any, None]],
    idle: Callable[[], bool],
    log: logging.Logger,
    label: str,
) -> None:
    """Runs the `send`, `receive` and `watchdog` loops until the socket closes; `idle` says
    whether the session has idled out, and the watchdog's log line names `label` and the id."""
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(_send_loop(ws, outbox), name="send")
            tasks.create_task(receive(), name="receive")
            tasks.create_task(_watchdog(ws, outbox, idle, log, label), name="watchdog")
    except* (SessionClosed, WebSocketDisconnect):
        pass


async def receive_message(ws: WebSocket) -> dict[str, Any]:
    """The client's next message; `SessionClosed` when the client left."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise SessionClosed
    return message


def idled_out(last_activity: float, idle_timeout_s: float) -> bool:
    return time.monotonic() - last_activity > idle_timeout_s


async def _send_loop(ws: WebSocket, outbox: Outbox) -> None:
    while True:
        frame = await outbox.get()
        if isinstance(frame, CloseFrame):
            await ws.close(frame.code, frame.reason)
            raise SessionClosed
        if isinstance(frame, bytes):
            await ws.send_bytes(frame)
        else:
            await ws.send_text(frame)


async def _watchdog(
    ws: WebSocket, outbox: Outbox, idle: Callable[[], bool], log: logging.Logger, label: str
) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await outbox.overflowed.wait()
        if outbox.overflowed.is_set():
            metrics.SLOW_CLIENTS_DROPPED.inc()
            log.warning("%s: client too slow, closing", label)
            await ws.close(WS_POLICY, "client too slow: send queue full")
            raise SessionClosed
        if idle():
            outbox.put(CloseFrame(WS_NORMAL, "idle timeout"))
            return


async def run_admitted_session(
    websocket: WebSocket, runtime: GatewayRuntime, run: Callable[[], Awaitable[None]]
) -> None:
    """Runs an admitted session (its slot of `runtime.limiter` already taken), then gives the slot
    back and closes the socket if the session left it open."""
    try:
        await run()
    finally:
        runtime.limiter.release()
        if websocket.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(Exception):
                await websocket.close(WS_NORMAL)
