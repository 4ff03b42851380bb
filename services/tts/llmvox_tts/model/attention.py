"""Causal self-attention over whole sequences (the training path), with optional FlashAttention.

flash-attn is a GPU-only package (the `gpu` extra). Without it, or off CUDA, or in float32,
PyTorch's scaled_dot_product_attention runs, which picks its own fused kernel.
"""

from __future__ import annotations

import importlib.util
from functools import cache

import torch
import torch.nn.functional as F


@cache
def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0
) -> torch.Tensor:
    """q, k, v (B, T, H, hd) -> (B, T, H, hd), each position attending to itself and before."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and flash_attn_available():
        from flash_attn import flash_attn_func

        return flash_attn_func(q, k, v, dropout_p=dropout_p, causal=True)
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        dropout_p=dropout_p,
        is_causal=True,
    )  # (B, H, T, hd)
    return y.transpose(1, 2)
