# syntax=docker/dockerfile:1
# LLMVoX LLM service: any Hugging Face chat model streamed over gRPC (llmvox.llm.v1), on a CUDA
# runtime.
#
#   docker build -f deploy/docker/llm.Dockerfile -t llmvox/llm:0.1.0 .     (from the repo root)
#
# The build context is cut down by llm.Dockerfile.dockerignore to what this image needs.
# TORCH_SPEC picks the PyTorch build: the CUDA 12.8 wheels by default; for a CPU-only image use
# --build-arg TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu".
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
ARG TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from its own index (TORCH_SPEC pins the version): the service's `torch>=2.4`
# then installs nothing more. The spec is word-split on purpose.
# hadolint ignore=SC2086,DL3013
RUN pip install --no-cache-dir $TORCH_SPEC
COPY --from=proto /src/services/common /src/services/common
COPY services/llm /src/services/llm
RUN pip install --no-cache-dir "/src/services/common[grpc]" /src/services/llm

FROM base AS runtime
ARG UID=10001
RUN groupadd --system --gid "${UID}" llmvox \
    && useradd --system --uid "${UID}" --gid llmvox --create-home --home-dir /home/llmvox llmvox \
    && mkdir -p /models \
    && chown llmvox:llmvox /models
COPY --from=builder /opt/venv /opt/venv
# Every setting is an env var (LLMVOX_LLM_<FLAG>); these are the image's defaults. The model
# (LLMVOX_LLM_MODEL) has none: compose and the Helm chart set it. Hub downloads are cached on the
# /models volume; HF_TOKEN (gated models) is passed in at run time, never baked in.
ENV PATH=/opt/venv/bin:$PATH \
    HF_HOME=/models/huggingface \
    LLMVOX_LLM_HOST=0.0.0.0 \
    LLMVOX_LLM_PORT=50052 \
    LLMVOX_LLM_METRICS_PORT=9465
VOLUME ["/models"]
WORKDIR /home/llmvox
USER 10001:10001
EXPOSE 50052 9465
# NOT_SERVING until the weights are loaded and a warm-up generation has run: an 8B model's first
# download takes a while, hence the long start period.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30m --retries=3 \
    CMD ["/bin/sh", "-c", "llmvox-llm health --addr 127.0.0.1:${LLMVOX_LLM_PORT} --timeout 5 || exit 1"]
ENTRYPOINT ["llmvox-llm"]
CMD ["serve"]
