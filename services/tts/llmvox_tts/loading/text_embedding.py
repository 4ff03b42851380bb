"""Load the charsiu ByT5 g2p input embedding and build LLMVoX's 386-row text table."""

from __future__ import annotations

from pathlib import Path

import torch

from ..model.text_embedding import llmvox_text_table
from .checkpoint_io import load_trusted
from .hub import resolve_first

T5_WEIGHT_FILES = ["model.safetensors", "pytorch_model.bin"]


def read_t5_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = load_trusted(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


def load_text_table(source: str | Path) -> torch.Tensor:
    """`source`: a weights file, a model directory, or a hub id such as the charsiu model."""
    return llmvox_text_table(read_t5_state_dict(resolve_first(source, T5_WEIGHT_FILES)))
