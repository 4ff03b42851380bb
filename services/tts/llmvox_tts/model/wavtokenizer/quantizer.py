"""Vector-quantizer codebooks (docs/wavtokenizer.md: decode step 1 and the encode quantizer).

Module names mirror the checkpoint: `quantizer.vq.layers.{i}._codebook.{inited, cluster_size,
embed, embed_avg}`. Only `embed` is used at inference; the other buffers are training state kept
so that a strict load passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Codebook(nn.Module):
    embed: torch.Tensor

    def __init__(self, bins: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("inited", torch.ones(1))
        self.register_buffer("cluster_size", torch.zeros(bins))
        self.register_buffer("embed", torch.zeros(bins, dim))
        self.register_buffer("embed_avg", torch.zeros(bins, dim))

    def nearest(self, vectors: torch.Tensor) -> torch.Tensor:
        """Index of the closest row for each (N, C) vector, by squared Euclidean distance."""
        embed = self.embed
        # Expanded form ||z||² − 2 z·e + ||e||², the order of the upstream search, so that near
        # ties resolve the same way.
        dist = (
            vectors.pow(2).sum(1, keepdim=True)
            - 2 * vectors @ embed.t()
            + embed.pow(2).sum(1)[None, :]
        )
        return dist.argmin(dim=-1)


class VQLayer(nn.Module):
    def __init__(self, bins: int, dim: int) -> None:
        super().__init__()
        self._codebook = Codebook(bins, dim)


class _VQStack(nn.Module):
    def __init__(self, num_quantizers: int, bins: int, dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VQLayer(bins, dim) for _ in range(num_quantizers))


class ResidualVectorQuantizer(nn.Module):
    def __init__(self, num_quantizers: int, bins: int, dim: int) -> None:
        super().__init__()
        self.vq = _VQStack(num_quantizers, bins, dim)

    def codebook(self, layer: int = 0) -> torch.Tensor:
        return self.vq.layers[layer]._codebook.embed

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(K, B, L) codes of the first K codebooks -> (B, C, L), the sum of their rows."""
        if codes.dim() != 3:
            raise ValueError(f"codes must be (K, B, L), got shape {tuple(codes.shape)}")
        if codes.shape[0] > len(self.vq.layers):
            raise ValueError(
                f"{codes.shape[0]} codebook layers given, the model has {len(self.vq.layers)}"
            )
        out = None
        for k in range(codes.shape[0]):
            rows = F.embedding(codes[k], self.codebook(k))  # (B, L, C)
            out = rows if out is None else out + rows
        assert out is not None
        return out.transpose(1, 2)  # (B, L, C) -> (B, C, L)

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, T) encoder frames -> (B, T) indices into the first codebook.

        Upstream inference always quantises with one codebook whatever the bandwidth.
        """
        batch, width, frames = z.shape
        vectors = z.transpose(1, 2).reshape(batch * frames, width)  # (B, C, T) -> (B·T, C)
        codes = self.vq.layers[0]._codebook.nearest(vectors)
        return codes.view(batch, frames)  # (B·T,) -> (B, T)
