"""Reading checkpoint files: the one place that calls torch.load."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def load_trusted(path: str | Path, *, map_location: str | torch.device = "cpu") -> Any:
    """torch.load, safe unpickler first; the full unpickler only for files that need it.

    Published Lightning checkpoints may carry non-tensor objects in their training sections that
    the safe unpickler rejects (docs/checkpoints.md, WavTokenizer); those files come from a
    trusted source.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as safe_error:  # the safe unpickler raises several types
        log.warning("safe load of %s failed (%s); loading it as a trusted file", path, safe_error)
        return torch.load(path, map_location=map_location, weights_only=False)
