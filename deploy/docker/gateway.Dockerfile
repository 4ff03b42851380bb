# syntax=docker/dockerfile:1
# LLMVoX gateway: HTTP + WebSocket + web page + /metrics on one port (5003, as the original
# server). No GPU, no torch: a slim Python image.
#
#   docker build -f deploy/docker/gateway.Dockerfile -t llmvox/gateway:0.1.0 .   (from the repo root)
#
# The build context is cut down by gateway.Dockerfile.dockerignore to what this image needs.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# gRPC code generation with the repository's own recipe (make proto, pinned grpcio-tools), in a
# throw-away virtual environment.
FROM base AS proto
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile requirements-proto.txt ./
COPY proto ./proto
COPY services/common ./services/common
RUN make proto VENV=/opt/protoc PYTHON=python3

FROM base AS builder
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY --from=proto /src/services/common /src/services/common
COPY services/gateway /src/services/gateway
# [vad]: the Silero model of /v1/realtime's server_vad, the protocol's default turn detection.
RUN pip install --no-cache-dir "/src/services/common[grpc]" "/src/services/gateway[vad]"

FROM base AS runtime
ARG UID=10001
RUN groupadd --system --gid "${UID}" llmvox \
    && useradd --system --uid "${UID}" --gid llmvox --create-home --home-dir /home/llmvox llmvox
COPY --from=builder /opt/venv /opt/venv
# Every setting is an env var (LLMVOX_GATEWAY_<FLAG>); these are the image's defaults.
ENV PATH=/opt/venv/bin:$PATH \
    LLMVOX_GATEWAY_HOST=0.0.0.0 \
    LLMVOX_GATEWAY_API_PORT=5003
WORKDIR /home/llmvox
USER 10001:10001
EXPOSE 5003
# /readyz: Redis answers, a TTS replica's heartbeat exists, the configured gRPC services serve.
HEALTHCHECK --interval=10s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/bin/sh", "-c", "llmvox-gateway health --url http://127.0.0.1:${LLMVOX_GATEWAY_API_PORT}/readyz --timeout 5 || exit 1"]
ENTRYPOINT ["llmvox-gateway"]
CMD ["serve"]
