"""`GET /v1/ws`: admission (API key, session limit) and the session's life; the session itself
is ws_session.py."""

from __future__ import annotations

import contextlib
import json

from fastapi import APIRouter, WebSocket

from . import metrics
from .auth import key_accepted
from .errors import WS_POLICY, WS_TRY_AGAIN_LATER, GatewayError
from .runtime import GatewayRuntime
from .socket_session import run_admitted_session
from .ws_session import WsSession

router = APIRouter()


@router.websocket("/v1/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    runtime: GatewayRuntime = websocket.app.state.runtime
    await websocket.accept()
    if not key_accepted(websocket, runtime.settings.api_keys):
        metrics.REQUESTS.labels("ws", "401").inc()
        await _refuse(
            websocket, GatewayError(401, "unauthorized", "missing or invalid API key"), WS_POLICY
        )
        return
    if not runtime.limiter.try_acquire():
        metrics.REQUESTS.labels("ws", "429").inc()
        await _refuse(
            websocket,
            GatewayError(
                429, "busy", f"too many sessions (max_sessions={runtime.settings.max_sessions})"
            ),
            WS_TRY_AGAIN_LATER,
        )
        return
    metrics.REQUESTS.labels("ws", "101").inc()
    await run_admitted_session(websocket, runtime, lambda: WsSession(websocket, runtime).run())


async def _refuse(websocket: WebSocket, error: GatewayError, code: int) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_text(json.dumps({"type": "error", "error": error.body()["error"]}))
        await websocket.close(code, error.message[:120])
