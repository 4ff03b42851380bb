"""Test categories (markers in pyproject.toml): every test declares `unit` or `integration`;
`gpu` and `slow` come on top of one of them. A `gpu` test on a machine without CUDA is the only
skip allowed.
"""

from __future__ import annotations

import pytest

CATEGORIES = ("unit", "integration")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything: every collected test is checked
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    undeclared = [
        item.nodeid for item in items if not any(item.get_closest_marker(m) for m in CATEGORIES)
    ]
    if undeclared:
        raise pytest.UsageError(
            "every test must be marked `unit` or `integration` (pytestmark or decorator); "
            f"{len(undeclared)} are not:\n  " + "\n  ".join(undeclared)
        )

    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and not _cuda_available():
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def _cuda_available() -> bool:
    import torch  # only when gpu tests were collected: most runs need no torch here

    return torch.cuda.is_available()
