"""Numeric precision of the decoder's weights for serving.

fp32 reproduces the original implementation's numbers (the golden suite runs it). The others
trade exactness for speed and change logits slightly, so greedy tokens can differ where two
candidates are close:
- bf16 / fp16: half the weight bytes; the usual choice on GPUs (and on CPUs with AMX at larger
  batches);
- int8: Linear weights quantised to int8 with dynamically quantised activations (CPU only),
  a quarter of the weight bytes, which is what batch-1 decoding on a CPU is bound by.
"""

from __future__ import annotations

import copy
import warnings
from typing import Literal, get_args

import torch
from torch import nn

Precision = Literal["fp32", "bf16", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

_FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def with_precision(model: nn.Module, precision: str) -> nn.Module:
    """A copy of `model` in `precision` (the model itself for fp32)."""
    if precision == "fp32":
        return model
    if precision in _FLOAT_DTYPES:
        return copy.deepcopy(model).to(_FLOAT_DTYPES[precision])
    if precision == "int8":
        device = next(model.parameters()).device
        if device.type != "cpu":
            raise ValueError("int8 decoding is CPU-only; use bf16 on GPUs")
        with warnings.catch_warnings():
            # The eager quantisation API is deprecated in favour of torchao, but still shipped
            # with torch and needs no extra package.
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8
            )
    raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
