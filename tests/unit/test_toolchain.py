"""The monorepo's wiring: service packages, the dev install, the Makefile, proto pins and CI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.parent.name for p in (REPO_ROOT / "services").glob("*/pyproject.toml"))


def _make(*args: str) -> str:
    make = shutil.which("make")
    assert make, "GNU make is needed: every documented command is a make target"
    result = subprocess.run(
        [make, "--no-print-directory", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"make {' '.join(args)} failed:\n{result.stderr}"
    return result.stdout


def test_every_expected_service_exists() -> None:
    assert set(SERVICES) >= {"common", "asr", "llm", "tts", "gateway"}


@pytest.mark.parametrize("service", SERVICES)
def test_service_names_its_distribution_and_import_package(service: str) -> None:
    project = tomllib.loads((REPO_ROOT / "services" / service / "pyproject.toml").read_text())
    assert project["project"]["name"] == f"llmvox-{service}"
    package = f"llmvox_{service}"
    assert (REPO_ROOT / "services" / service / package / "__init__.py").is_file()
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == [f"{package}*"]


def test_dev_requirements_install_every_service_editable() -> None:
    lines = (REPO_ROOT / "requirements-dev.txt").read_text().splitlines()
    editable = {re.sub(r"\[.*\]$", "", line.split()[1]) for line in lines if line.startswith("-e ")}
    assert editable == {f"services/{service}" for service in SERVICES}


def test_make_help_lists_the_documented_targets() -> None:
    listed = {line.split()[0] for line in _make("help").splitlines() if line.startswith("  ")}
    assert listed >= {"install", "proto", "lint", "redis", "test", "golden", "run", "bench"}


def test_make_test_runs_pytest_without_gpu_and_slow_tests() -> None:
    # Dry run against a venv path that does not exist: shows the whole chain, runs nothing.
    plan = _make("-n", "test", "VENV=/nonexistent/venv")
    assert "pip install torch==2.13.0" in plan
    assert plan.index("pip install torch==") < plan.index("pip install -r requirements-dev.txt")
    assert "ensure-redis.sh" in plan
    assert '/nonexistent/venv/bin/python -m pytest -m "not gpu and not slow"' in plan


def test_proto_tools_are_pinned_together() -> None:
    pins = {}
    for line in (REPO_ROOT / "requirements-proto.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{line!r} in requirements-proto.txt is not pinned with =="
            pins[name.lower()] = version
    assert {"grpcio", "grpcio-tools", "protobuf", "mypy-protobuf"} <= pins.keys()
    assert pins["grpcio"] == pins["grpcio-tools"]


def test_ruff_runs_the_async_rules() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "ASYNC" in config["tool"]["ruff"]["lint"]["select"]


def test_ci_runs_lint_and_the_readme_test_command() -> None:
    ci = REPO_ROOT / ".ci" / "run"
    assert os.access(ci, os.X_OK), ".ci/run must be executable"
    text = ci.read_text()
    assert "make lint" in text
    assert "make test" in text
