# syntax=docker/dockerfile:1
# LLMVoX ASR service: faster-whisper behind gRPC (llmvox.asr.v1), on a CUDA runtime.
#
#   docker build -f deploy/docker/asr.Dockerfile -t llmvox/asr:0.1.0 .     (from the repo root)
#
# The build context is cut down by asr.Dockerfile.dockerignore to what this image needs: the
# protos, the Makefile that compiles them, services/common and services/asr.
# CTranslate2 (under faster-whisper) needs cuBLAS 12 and cuDNN 9: hence the cudnn runtime image.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

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
COPY services/asr /src/services/asr
RUN pip install --no-cache-dir "/src/services/common[grpc]" /src/services/asr

FROM base AS runtime
ARG UID=10001
RUN groupadd --system --gid "${UID}" llmvox \
    && useradd --system --uid "${UID}" --gid llmvox --create-home --home-dir /home/llmvox llmvox \
    && mkdir -p /models \
    && chown llmvox:llmvox /models
COPY --from=builder /opt/venv /opt/venv
# Every setting is an env var (LLMVOX_ASR_<FLAG>); these are the image's defaults.
# HF_HOME: Whisper sizes fetched by name are cached on the /models volume.
ENV PATH=/opt/venv/bin:$PATH \
    HF_HOME=/models/huggingface \
    LLMVOX_ASR_HOST=0.0.0.0 \
    LLMVOX_ASR_PORT=50051 \
    LLMVOX_ASR_METRICS_PORT=9464
VOLUME ["/models"]
WORKDIR /home/llmvox
USER 10001:10001
EXPOSE 50051 9464
# SERVING only once the model is loaded and warmed up; a large model's first download takes a
# while, hence the long start period.
HEALTHCHECK --interval=15s --timeout=10s --start-period=20m --retries=3 \
    CMD ["/bin/sh", "-c", "llmvox-asr health --addr 127.0.0.1:${LLMVOX_ASR_PORT} --timeout 5 || exit 1"]
ENTRYPOINT ["llmvox-asr"]
CMD ["serve"]
