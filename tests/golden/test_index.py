"""Every case of the golden index has a checker here and an intact file; an unknown case fails,
never skips."""

import hashlib
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


@pytest.mark.parametrize("entry", golden_index(), ids=lambda e: e["file"])
def test_case_file_matches_index(entry: dict) -> None:
    # A truncated copy or a Git LFS pointer would otherwise surface as a confusing unpickling
    # error in the checker; the index records each file's size and hash.
    path = golden_dir() / entry["file"]
    assert path.is_file(), f"{entry['file']} listed but missing"
    data = path.read_bytes()
    size = entry["bytes"]
    assert len(data) == size, f"{entry['file']}: {len(data)} bytes, the index says {size}"
    assert hashlib.sha256(data).hexdigest() == entry["sha256"], f"{entry['file']}: sha256 differs"
