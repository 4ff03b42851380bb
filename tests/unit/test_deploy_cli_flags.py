"""Every llmvox command line in deploy/ exists in the CLI it calls: the Dockerfiles' ENTRYPOINT +
CMD and HEALTHCHECK, the Compose services' command, entrypoint and healthcheck (after Compose
merges and interpolates the files), and the Helm-rendered containers' command/args and exec
probes, for every values file. Each command is parsed by the service's own argparse parser, so
a renamed or misspelt flag fails here and not in a container at 3 a.m.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmvox_asr.cli import build_parser as asr_parser
from llmvox_gateway.cli import build_parser as gateway_parser
from llmvox_llm.cli import build_parser as llm_parser
from llmvox_tts.cli import build_parser as tts_parser
from tests.unit.test_deploy_compose import merged
from tests.unit.test_deploy_dockerfiles import DOCKER_DIR, SERVICES, parse_stages
from tests.unit.test_deploy_helm import PREFIX, VALUES_FILES, load_values, render

pytestmark = pytest.mark.unit

PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "llmvox-asr": asr_parser,
    "llmvox-llm": llm_parser,
    "llmvox-tts": tts_parser,
    "llmvox-gateway": gateway_parser,
}
SHELLS = {"sh", "/bin/sh", "bash", "/bin/bash"}
SEPARATORS = {"||", "&&", ";", "|"}


def llmvox_commands(argv: list[str]) -> Iterator[list[str]]:
    """The llmvox commands in an exec-form argv: itself, or those inside `sh -c '...'`."""
    if len(argv) >= 3 and argv[0] in SHELLS and argv[1] == "-c":
        yield from shell_commands(argv[2])
    elif argv and Path(argv[0]).name in PARSERS:
        yield argv


def shell_commands(script: str) -> Iterator[list[str]]:
    words = shlex.split(script, posix=True)
    command: list[str] = []
    for word in [*words, ";"]:
        if word in SEPARATORS:
            if command and command[0] == "exec":
                command = command[1:]
            if command and Path(command[0]).name in PARSERS:
                yield command
            command = []
        else:
            command.append(word)


def parse_error(argv: list[str]) -> str | None:
    """None when the CLI accepts `argv`, else argparse's message."""
    parser = PARSERS[Path(argv[0]).name]()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parser.parse_args(argv[1:])
    except SystemExit as error:
        return stderr.getvalue().strip() or f"exit {error.code}"
    return None


def as_argv(value: Any) -> list[str]:
    """Compose and Kubernetes write a command as a list, Compose also as one shell string."""
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


# -- where deploy/ names commands --------------------------------------------------------------
def dockerfile_entrypoints() -> dict[str, list[str]]:
    """Each image's ENTRYPOINT (exec form), by service."""
    entrypoints = {}
    for service in SERVICES:
        _, stages = parse_stages(DOCKER_DIR / f"{service}.Dockerfile")
        (entrypoint,) = stages[-1].all("ENTRYPOINT")
        entrypoints[service] = list(entrypoint.value)
    return entrypoints


def dockerfile_commands() -> Iterator[tuple[str, list[str]]]:
    for service in SERVICES:
        _, stages = parse_stages(DOCKER_DIR / f"{service}.Dockerfile")
        runtime = stages[-1]
        (entrypoint,) = runtime.all("ENTRYPOINT")
        (cmd,) = runtime.all("CMD")
        where = f"{service}.Dockerfile"
        yield f"{where} ENTRYPOINT+CMD", [*entrypoint.value, *cmd.value]
        for check in runtime.all("HEALTHCHECK"):
            # HEALTHCHECK [options] CMD <exec form>: the command follows the CMD keyword.
            words = list(check.value)
            yield f"{where} HEALTHCHECK", words[words.index("CMD") + 1 :]


def compose_commands() -> Iterator[tuple[str, list[str]]]:
    entrypoints = dockerfile_entrypoints()
    for cpu in (False, True):
        for name, service in merged(cpu)["services"].items():
            where = f"compose{' (cpu)' if cpu else ''} {name}"
            dockerfile = (service.get("build") or {}).get("dockerfile", "")
            image_service = Path(dockerfile).name.removesuffix(".Dockerfile")
            entrypoint = as_argv(service.get("entrypoint")) or entrypoints.get(image_service, [])
            # Compose writes `command: null` for a service that keeps the image's CMD.
            if service.get("command") is not None or service.get("entrypoint") is not None:
                yield f"{where} command", [*entrypoint, *as_argv(service.get("command"))]
            test = as_argv((service.get("healthcheck") or {}).get("test"))
            if test[:1] == ["CMD-SHELL"]:
                yield f"{where} healthcheck", ["/bin/sh", "-c", test[1]]
            elif test[:1] == ["CMD"]:
                yield f"{where} healthcheck", test[1:]


def helm_commands() -> Iterator[tuple[str, list[str]]]:
    import yaml

    entrypoints = dockerfile_entrypoints()
    for key in VALUES_FILES:
        manifests = render(load_values(key))
        for path, text in sorted(manifests.items()):
            if not path.endswith(".yaml"):
                continue
            for doc in yaml.safe_load_all(text):
                if not doc or doc.get("kind") not in ("Deployment", "StatefulSet", "Job"):
                    continue
                component = doc["metadata"]["name"].removeprefix(f"{PREFIX}-")
                pod = doc["spec"]["template"]["spec"]
                for container in [*pod.get("initContainers", []), *pod["containers"]]:
                    where = f"helm[{key}] {doc['kind']}/{doc['metadata']['name']}"
                    command = as_argv(container.get("command")) or entrypoints.get(component, [])
                    yield f"{where} args", [*command, *as_argv(container.get("args"))]
                    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                        exec_ = (container.get(probe) or {}).get("exec")
                        if exec_:
                            yield f"{where} {probe}", as_argv(exec_["command"])


def every_command() -> list[tuple[str, list[str]]]:
    found = []
    for source in (dockerfile_commands, compose_commands, helm_commands):
        for where, argv in source():
            found.extend((where, command) for command in llmvox_commands(argv))
    return found


# -- the tests ---------------------------------------------------------------------------------
def test_shell_commands_are_found_inside_sh_c() -> None:
    argv = ["/bin/sh", "-c", "llmvox-asr health --addr 127.0.0.1:${PORT} --timeout 5 || exit 1"]
    assert list(llmvox_commands(argv)) == [
        ["llmvox-asr", "health", "--addr", "127.0.0.1:${PORT}", "--timeout", "5"]
    ]
    assert parse_error(["llmvox-asr", "serve", "--beam-size", "2"]) is not None
    assert parse_error(["llmvox-asr", "serve", "--beam_size", "2"]) is None


def test_every_deploy_command_line_parses_with_its_cli() -> None:
    commands = every_command()
    # The four images' own commands and health checks at least, plus the chart's.
    where = {w.split()[0] for w, _ in commands}
    assert {"asr.Dockerfile", "llm.Dockerfile", "tts.Dockerfile", "gateway.Dockerfile"} <= where
    assert any(w.startswith("helm[") for w in where)
    problems = [
        f"{w}: {shlex.join(argv)}: {error}"
        for w, argv in commands
        if (error := parse_error(argv)) is not None
    ]
    assert not problems, "\n".join(problems)


def test_the_gateway_image_carries_no_launcher() -> None:
    """`llmvox-launch` is a development tool in its own package (services/launch): the gateway
    package, which is all the gateway image installs, neither contains nor names it."""
    import tomllib

    repo = DOCKER_DIR.parents[1]
    gateway = tomllib.loads((repo / "services" / "gateway" / "pyproject.toml").read_text())
    assert "llmvox-launch" not in gateway["project"].get("scripts", {})
    assert not list((repo / "services" / "gateway").rglob("launcher"))
    launch = tomllib.loads((repo / "services" / "launch" / "pyproject.toml").read_text())
    assert launch["project"]["scripts"] == {"llmvox-launch": "llmvox_launch.cli:main"}
    assert not any("gateway" in dep for dep in launch["project"]["dependencies"])
