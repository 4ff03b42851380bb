# syntax=docker/dockerfile:1
# LLMVoX TTS replica: one process of the pool, holding LLMVoX + WavTokenizer + the ByT5 text
# model on one device, taking jobs from Redis Streams (llmvox:tts:jobs, group tts).
#
#   docker build -f deploy/docker/tts.Dockerfile -t llmvox/tts:0.1.0 .     (from the repo root)
#
# The build context is cut down by tts.Dockerfile.dockerignore to what this image needs (the TTS
# package uses no gRPC, so no protos). TORCH_SPEC picks the PyTorch build, as in llm.Dockerfile.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM base AS builder
ARG TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from its own index (TORCH_SPEC pins the version): the service's `torch>=2.4`
# then installs nothing more. The spec is word-split on purpose.
# hadolint ignore=SC2086,DL3013
RUN pip install --no-cache-dir $TORCH_SPEC
COPY services/common /src/services/common
COPY services/tts /src/services/tts
# [hub]: published weights by hub id (MBZUAI/LLMVoX, charsiu ByT5).
RUN pip install --no-cache-dir /src/services/common "/src/services/tts[hub]"

FROM base AS runtime
ARG UID=10001
RUN groupadd --system --gid "${UID}" llmvox \
    && useradd --system --uid "${UID}" --gid llmvox --create-home --home-dir /home/llmvox llmvox \
    && mkdir -p /models \
    && chown llmvox:llmvox /models
COPY --from=builder /opt/venv /opt/venv
# Every setting is an env var (LLMVOX_TTS_<FLAG>); these are the image's defaults. The replica's
# name defaults to tts-<hostname> (unique per container and pod). Weights fetched by hub id are
# cached on the /models volume.
ENV PATH=/opt/venv/bin:$PATH \
    HF_HOME=/models/huggingface \
    LLMVOX_TTS_DEVICE=cuda \
    LLMVOX_TTS_METRICS_PORT=9101
VOLUME ["/models"]
WORKDIR /home/llmvox
USER 10001:10001
EXPOSE 9101
# Healthy while the replica's heartbeat key is in Redis (refreshed every claim_idle_ms / 3, it
# expires after claim_idle_ms): written once the models are loaded, gone when the loop stalls.
HEALTHCHECK --interval=15s --timeout=15s --start-period=20m --retries=3 \
    CMD ["/bin/sh", "-c", "llmvox-tts health --timeout 5 || exit 1"]
ENTRYPOINT ["llmvox-tts"]
CMD ["worker"]
