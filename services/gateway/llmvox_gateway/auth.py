"""Optional API keys: `Authorization: Bearer KEY`, or `?api_key=KEY` where a browser cannot set
headers (WebSocket). Compared in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request
from starlette.requests import HTTPConnection

from .errors import GatewayError


def key_of(connection: HTTPConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return connection.query_params.get("api_key")


def key_accepted(connection: HTTPConnection, keys: list[str]) -> bool:
    if not keys:
        return True
    given = key_of(connection)
    if not given:
        return False
    return any(hmac.compare_digest(given.encode(), key.encode()) for key in keys)


async def require_api_key(request: Request) -> None:
    keys = request.app.state.runtime.settings.api_keys
    if not key_accepted(request, keys):
        raise GatewayError(401, "unauthorized", "missing or invalid API key")
