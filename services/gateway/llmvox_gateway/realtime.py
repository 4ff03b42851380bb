"""`GET /v1/realtime`: the OpenAI Realtime protocol's WebSocket; admission (API key, session
limit) here, the session in realtime_session.py.

Keys come as OpenAI clients send them: `Authorization: Bearer KEY` (the SDKs), `?api_key=KEY`
(as `/v1/ws`), or, from a browser, which cannot set headers on a WebSocket, the subprotocols
`realtime, openai-insecure-api-key.KEY` (as OpenAI's own browser clients do).
"""

from __future__ import annotations

import contextlib
import hmac
import json

from fastapi import APIRouter, WebSocket

from . import metrics
from .auth import key_accepted
from .errors import WS_POLICY, WS_TRY_AGAIN_LATER, GatewayError
from .realtime_protocol import error_body, new_id
from .realtime_session import ENDPOINT, RealtimeSession
from .runtime import GatewayRuntime
from .socket_session import run_admitted_session

router = APIRouter()

_KEY_SUBPROTOCOL = "openai-insecure-api-key."


def _subprotocol_key(websocket: WebSocket) -> str | None:
    for protocol in websocket.scope.get("subprotocols", []):
        if protocol.startswith(_KEY_SUBPROTOCOL):
            return protocol[len(_KEY_SUBPROTOCOL) :]
    return None


def realtime_key_accepted(websocket: WebSocket, keys: list[str]) -> bool:
    if key_accepted(websocket, keys):
        return True
    given = _subprotocol_key(websocket)
    if not given:
        return False
    return any(hmac.compare_digest(given.encode(), key.encode()) for key in keys)


@router.websocket("/v1/realtime")
async def realtime_endpoint(websocket: WebSocket) -> None:
    runtime: GatewayRuntime = websocket.app.state.runtime
    # A browser that offered `realtime` must get it back, or it drops the connection.
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
    if not realtime_key_accepted(websocket, runtime.settings.api_keys):
        metrics.REQUESTS.labels(ENDPOINT, "401").inc()
        await _refuse(
            websocket,
            GatewayError(
                401, "invalid_request_error", "missing or invalid API key", "invalid_api_key"
            ),
            WS_POLICY,
        )
        return
    if not runtime.limiter.try_acquire():
        metrics.REQUESTS.labels(ENDPOINT, "429").inc()
        await _refuse(
            websocket,
            GatewayError(
                429,
                "busy",
                f"too many sessions (max_sessions={runtime.settings.max_sessions})",
                "session_limit_reached",
            ),
            WS_TRY_AGAIN_LATER,
        )
        return
    metrics.REQUESTS.labels(ENDPOINT, "101").inc()
    model = websocket.query_params.get("model") or "llmvox"
    await run_admitted_session(
        websocket, runtime, lambda: RealtimeSession(websocket, runtime, model=model).run()
    )


async def _refuse(websocket: WebSocket, error: GatewayError, code: int) -> None:
    with contextlib.suppress(Exception):
        event = {"type": "error", "event_id": new_id("event"), "error": error_body(error)}
        await websocket.send_text(json.dumps(event))
        await websocket.close(code, error.message[:120])
