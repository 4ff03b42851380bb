"""The FastAPI application: routers, error mapping, CORS, the web page, and the runtime's life."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from . import metrics
from .errors import GatewayError
from .http_api import protected, router
from .realtime import router as realtime_router
from .runtime import GatewayRuntime
from .settings import GatewaySettings
from .transcriptions import router as transcriptions_router
from .ws_api import router as ws_router

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"


def _endpoint(request: Request) -> str:
    return request.url.path.strip("/").replace("/", "_") or "root"


def create_app(settings: GatewaySettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Made on the serving loop: gRPC aio channels belong to the loop that creates them.
        runtime = GatewayRuntime(settings)
        app.state.runtime = runtime
        await runtime.start()
        try:
            yield
        finally:
            await runtime.close()

    app = FastAPI(title="LLMVoX gateway", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, error: GatewayError) -> JSONResponse:
        metrics.REQUESTS.labels(_endpoint(request), str(error.status)).inc()
        metrics.ERRORS.labels(_endpoint(request), str(error.status)).inc()
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        # A body that is not JSON at all is a 400; a JSON body with bad fields a 422.
        status = 400 if any(p.get("type") == "json_invalid" for p in problems) else 422
        details = "; ".join(
            f"{'.'.join(str(x) for x in p.get('loc', ()) if x != 'body') or 'body'}: {p.get('msg')}"
            for p in problems[:5]
        )
        gateway = GatewayError(status, "invalid_request_error", details)
        return await gateway_error(request, gateway)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["X-LLMVoX-Session"],
        )

    app.include_router(router)
    app.include_router(protected)
    app.include_router(transcriptions_router)
    app.include_router(ws_router)
    app.include_router(realtime_router)

    if WEB_DIR.is_dir():
        app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        index = WEB_DIR / "index.html"
        if not index.is_file():
            raise GatewayError(404, "not_found", "the web page is not installed")
        return FileResponse(index, headers={"Cache-Control": "no-cache"})

    return app
