"""Runs the app under uvicorn: one process, graceful shutdown within `drain_seconds`."""

from __future__ import annotations

import logging
from types import FrameType

import uvicorn

from .app import create_app
from .http_api import HideStreamAborted
from .settings import GatewaySettings

# Audio from a browser arrives in frames of ~100 ms; anything much larger is a mistake, and the
# WebSocket layer closes the connection with 1009 instead of buffering it.
WS_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def serve(settings: GatewaySettings) -> int:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        ws_max_size=WS_MAX_MESSAGE_BYTES,
        # grpc.aio supports the standard event loop (not uvloop).
        loop="asyncio",
        timeout_graceful_shutdown=int(settings.drain_seconds) or None,
        access_log=False,
    )
    # After uvicorn's own logging setup (in Config), which would drop an earlier filter.
    logging.getLogger("uvicorn.error").addFilter(HideStreamAborted())
    server = _DrainingServer(config)
    server.run()
    return 0


class _DrainingServer(uvicorn.Server):
    """Marks the gateway not ready (`/readyz` 503) as soon as SIGTERM arrives, so a load balancer
    stops sending new sessions while the running ones finish."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        runtime = getattr(self.config.app.state, "runtime", None)
        if runtime is not None:
            runtime.draining = True
        super().handle_exit(sig, frame)
