"""Load LLMVoX decoder checkpoints in the published `ckpt_english_tiny.pt` layout.

Sizes come from `model_args`; keys may carry the torch.compile prefix (docs/checkpoints.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..model.gpt import GPTConfig, LLMVoXDecoder
from .checkpoint_io import load_trusted

COMPILE_PREFIX = "_orig_mod."


def clean_decoder_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the torch.compile prefix and the causal-mask buffers old nanoGPT files carry."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = key.removeprefix(COMPILE_PREFIX)
        if name.endswith(".attn.bias") and value.dim() == 4:
            continue
        out[name] = value
    return out


def decoder_from_checkpoint(checkpoint: Mapping[str, Any]) -> LLMVoXDecoder:
    if "model" not in checkpoint or "model_args" not in checkpoint:
        raise KeyError(
            "not an LLMVoX checkpoint: expected top-level 'model' and 'model_args', found "
            f"{sorted(checkpoint)}"
        )
    cfg = GPTConfig.from_model_args(checkpoint["model_args"])
    model = LLMVoXDecoder(cfg)
    state = clean_decoder_state_dict(checkpoint["model"])
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"checkpoint does not match model_args {cfg.to_model_args()}: "
            f"missing {result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}"
        )
    return model.eval()


def load_llmvox_decoder(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> LLMVoXDecoder:
    """Build the decoder from `model_args` and load its weights strictly (shapes checked)."""
    return decoder_from_checkpoint(load_trusted(path, map_location=map_location))
