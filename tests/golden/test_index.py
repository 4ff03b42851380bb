"""Every case of the golden index has a checker here; an unknown case fails, never skips."""

from pathlib import Path

import pytest

from .conftest import golden_dir, golden_index

pytestmark = pytest.mark.unit

HERE = Path(__file__).parent


def test_index_is_not_empty() -> None:
    assert golden_index(), f"no cases in {golden_dir() / 'index.json'}"


@pytest.mark.parametrize("entry", golden_index(), ids=lambda e: e["file"])
def test_case_has_a_checker(entry: dict) -> None:
    module = HERE / f"test_{entry['case']}.py"
    assert module.is_file(), (
        f"golden case {entry['case']!r} ({entry['file']}) has no checker {module.name}"
    )
    assert (golden_dir() / entry["file"]).is_file(), f"{entry['file']} listed but missing"
