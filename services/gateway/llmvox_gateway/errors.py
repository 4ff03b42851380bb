"""The gateway's error type, mapped once per boundary: to an HTTP status and JSON body by the
app's exception handler, to an `error` event (and maybe a close code) by the WebSocket loop."""

from __future__ import annotations

from typing import Any

import grpc

# WebSocket close codes (RFC 6455 and the IANA registry).
WS_NORMAL = 1000
WS_POLICY = 1008
WS_TRY_AGAIN_LATER = 1013


class GatewayError(Exception):
    """A failure the client should see, with its HTTP status and a short machine-readable type."""

    def __init__(self, status: int, kind: str, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.code = code or kind
        self.message = message

    def body(self) -> dict[str, Any]:
        """`type` the family, `code` the precise case (both strings, as OpenAI's errors),
        `status` the HTTP status that goes with it."""
        return {
            "error": {
                "type": self.kind,
                "code": self.code,
                "status": self.status,
                "message": self.message,
            }
        }


def invalid_field(message: str) -> GatewayError:
    return GatewayError(422, "invalid_request_error", message)


def too_large(message: str) -> GatewayError:
    return GatewayError(413, "too_large", message)


def unavailable(message: str) -> GatewayError:
    return GatewayError(503, "unavailable", message)


# gRPC status → (HTTP status, type): a caller's mistake stays a 4xx, a backend's trouble a 5xx.
_GRPC_TO_HTTP: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (422, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (422, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (422, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "busy"),
    grpc.StatusCode.UNAVAILABLE: (503, "unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "unsupported"),
}


def from_grpc(service: str, error: grpc.aio.AioRpcError) -> GatewayError:
    status, kind = _GRPC_TO_HTTP.get(error.code(), (502, "backend_error"))
    return GatewayError(status, kind, f"{service}: {error.code().name}: {error.details()}")
