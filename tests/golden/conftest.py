"""Golden cases produced by running the original implementation (tests/golden/cases/README.md).

The cases live in the repository, in `tests/golden/cases/`; LLMVOX_GOLDEN_DIR points the suite at
another folder of the same format (e.g. a private set with other sizes). Cases are discovered from
the folder's index.json; each case name is checked by the test module `test_<case>.py` in this
folder, and a case without one fails, as does a missing index or case file (see test_index.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_GOLDEN_DIR = Path(__file__).resolve().parent / "cases"


def golden_dir() -> Path:
    return Path(os.environ.get("LLMVOX_GOLDEN_DIR", str(DEFAULT_GOLDEN_DIR)))


def golden_index() -> list[dict[str, Any]]:
    path = golden_dir() / "index.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"golden index not found at {path}; the in-repo cases are in {DEFAULT_GOLDEN_DIR}, "
            "and LLMVOX_GOLDEN_DIR, when set, must name a folder of cases"
        )
    return json.loads(path.read_text())


def case_files(case: str) -> list[Path]:
    """Every file of the index whose case name is `case` (a directory may hold several)."""
    return [golden_dir() / entry["file"] for entry in golden_index() if entry["case"] == case]


def load_case_file(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # A test that asks for `golden_case` runs once per file of its module's CASE.
    if "golden_case" in metafunc.fixturenames:
        case = metafunc.module.CASE
        files = case_files(case)
        if not files:
            # Parametrising with nothing would skip silently; fail loudly instead.
            files = [Path(f"<no file for case {case!r} in {golden_dir()}>")]
        metafunc.parametrize("golden_case_path", files, ids=[p.name for p in files])


@pytest.fixture
def golden_case(golden_case_path: Path) -> dict[str, Any]:
    if not golden_case_path.is_file():
        pytest.fail(f"golden case file missing: {golden_case_path}")
    return load_case_file(golden_case_path)


@pytest.fixture
def save_checkpoint(tmp_path: Path):
    """Write a case's checkpoint dict to a file, so it is loaded by path like a published one."""

    def _save(obj: Any, name: str) -> Path:
        path = tmp_path / name
        torch.save(obj, path)
        return path

    return _save


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str
) -> None:
    actual = torch.as_tensor(actual).detach().to("cpu", torch.float32)
    expected = torch.as_tensor(expected).to(torch.float32)
    assert actual.shape == expected.shape, (
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    )
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")
