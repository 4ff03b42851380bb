"""Seeded random WavTokenizer weights in the exact published layout.

Used for the `tiny` profile and to benchmark the full published size without the real file. The
scales keep every activation O(1), so decode gives finite audio and encode gives varied codes.
"""

from __future__ import annotations

import math

import torch

from .config import WavTokenizerConfig
from .istft import periodic_hann


def random_wavtokenizer_state_dict(
    config: WavTokenizerConfig, seed: int
) -> dict[str, torch.Tensor]:
    """Float32 CPU tensors for every key of `WavTokenizer(config).state_dict()`."""
    from .model import WavTokenizer  # model imports this package's modules; avoid a cycle

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in WavTokenizer(config).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)

    def normal(shape: tuple[int, ...], std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std + mean

    def uniform(shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
        return torch.rand(shape, generator=gen) * (high - low) + low

    out: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        name = key.rsplit(".", 1)[-1]
        if name == "window":
            value = periodic_hann(shape[0])
        elif name == "inited":
            value = torch.ones(shape)  # trained files carry 1; 0 would trigger k-means upstream
        elif name == "cluster_size":
            value = uniform(shape, 1.0, 5.0)
        elif name == "embed":
            value = normal(shape)
        elif name == "embed_avg":
            # EMA numerator: embed = embed_avg / cluster_size in training.
            counts = out[key.replace("embed_avg", "cluster_size")]
            value = out[key.replace("embed_avg", "embed")] * counts[:, None]
        elif ".lstm." in key:
            bound = 1.0 / math.sqrt(shape[-1] if name.startswith("weight") else shape[0] // 4)
            value = uniform(shape, -bound, bound)
        elif name == "weight_g":
            value = uniform(shape, 0.8, 1.2)  # row norm of the effective weight
        elif name == "weight_v":
            value = normal(shape)
        elif name == "gamma":
            value = uniform(shape, 0.1, 0.4)
        elif key.endswith("scale.weight"):
            value = normal(shape, 0.1, 1.0)  # distinct AdaLayerNorm rows per bandwidth
        elif key.endswith("shift.weight"):
            value = normal(shape, 0.1)
        elif name == "weight" and len(shape) == 1:
            value = normal(shape, 0.1, 1.0)  # GroupNorm / LayerNorm affine scale
        elif name == "weight":
            value = normal(shape, 1.0 / math.sqrt(math.prod(shape[1:])))
        elif name == "bias":
            value = normal(shape, 0.05)
        else:
            raise AssertionError(f"no random-init rule for {key}")
        out[key] = value.to(torch.float32).contiguous()
    return out
