"""The ASR gRPC server: health NOT_SERVING until the model is loaded and warmed up, then SERVING;
SIGTERM drains (all of it in `llmvox_common.grpc_service.run_grpc_service`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from llmvox_common._proto.llmvox.asr.v1 import asr_pb2_grpc
from llmvox_common.grpc_service import run_grpc_service

from .servicer import SERVICE_NAME, AsrServicer
from .settings import AsrSettings
from .transcriber import Transcriber


def load_transcriber(settings: AsrSettings) -> Transcriber:
    return Transcriber.load(
        settings.model,
        device=settings.device,
        compute_type=settings.compute_type,
        cpu_threads=settings.cpu_threads,
        num_workers=settings.num_workers,
        beam_size=settings.beam_size,
    )


async def serve(
    settings: AsrSettings,
    *,
    servicer: AsrServicer | None = None,
    load: Callable[[], Transcriber] | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT or `stop`. `load` (default: the model named in `settings`)
    runs on a thread; passing an already loaded transcriber lets several servers in one process
    (tests) share one model."""
    servicer = servicer or AsrServicer(settings)

    def load_and_warm_up() -> None:
        transcriber = load() if load is not None else load_transcriber(settings)
        transcriber.warm_up()
        servicer.attach(transcriber)

    def register(server: grpc.aio.Server) -> None:
        asr_pb2_grpc.add_AsrServiceServicer_to_server(servicer, server)

    await run_grpc_service(
        register=register,
        service_names=[SERVICE_NAME],
        port=settings.port,
        host=settings.host,
        load=load_and_warm_up,
        metrics_port=settings.metrics_port,
        drain_seconds=settings.drain_seconds,
        ready=ready,
        stop=stop,
    )
