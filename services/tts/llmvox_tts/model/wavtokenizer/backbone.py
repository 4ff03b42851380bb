"""Vocos backbone of WavTokenizer (docs/wavtokenizer.md, decode steps 2-4).

Attribute names mirror the checkpoint keys under `backbone.`; the registration order (embed, norm,
convnext, final_layer_norm, pos_net) reproduces the upstream state-dict order, although pos_net
runs first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import WavTokenizerConfig

_GROUPS = 32
_EPS = 1e-6


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """x + conv2(swish(GN(conv1(swish(GN(x)))))) on (B, D, L); dropout is off at inference."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_GROUPS, dim, eps=_EPS)
        self.conv1 = nn.Conv1d(dim, dim, 3, padding=1)
        self.norm2 = nn.GroupNorm(_GROUPS, dim, eps=_EPS)
        self.conv2 = nn.Conv1d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all frames of each item, on (B, D, L)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_GROUPS, dim, eps=_EPS)
        self.q = nn.Conv1d(dim, dim, 1)
        self.k = nn.Conv1d(dim, dim, 1)
        self.v = nn.Conv1d(dim, dim, 1)
        self.proj_out = nn.Conv1d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x).transpose(1, 2)  # (B, D, L) -> (B, L, D): the 1x1 convs become matmuls
        q = F.linear(h, self.q.weight[..., 0], self.q.bias)
        k = F.linear(h, self.k.weight[..., 0], self.k.bias)
        v = F.linear(h, self.v.weight[..., 0], self.v.bias)
        # One head spanning all D channels; the default scale is 1/sqrt(D) as upstream.
        o = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]  # (B, L, D)
        o = F.linear(o, self.proj_out.weight[..., 0], self.proj_out.bias)
        return x + o.transpose(1, 2)  # (B, L, D) -> (B, D, L)


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine, then the scale/shift row of the bandwidth id, on (B, L, D)."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.scale = nn.Embedding(num_embeddings, dim)
        self.shift = nn.Embedding(num_embeddings, dim)

    def forward(self, x: torch.Tensor, bandwidth_id: int) -> torch.Tensor:
        x = F.layer_norm(x, (self.dim,), eps=_EPS)
        return x * self.scale.weight[bandwidth_id] + self.shift.weight[bandwidth_id]


class ConvNeXtBlock(nn.Module):
    """x + gamma * pwconv2(GELU(pwconv1(AdaLN(dwconv(x))))), residual stream in (B, L, D)."""

    def __init__(self, dim: int, intermediate_dim: int, num_embeddings: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.dwconv = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = AdaLayerNorm(num_embeddings, dim)
        self.pwconv1 = nn.Linear(dim, intermediate_dim)
        self.pwconv2 = nn.Linear(intermediate_dim, dim)

    def forward(self, x: torch.Tensor, bandwidth_id: int) -> torch.Tensor:
        y = self.dwconv(x.transpose(1, 2)).transpose(1, 2)  # depthwise conv runs on (B, D, L)
        y = self.norm(y, bandwidth_id)
        y = self.pwconv2(F.gelu(self.pwconv1(y)))  # exact erf GELU, as upstream
        return x + self.gamma * y


class VocosBackbone(nn.Module):
    """(B, C, L) codebook features -> (B, L, dim) hidden frames."""

    def __init__(self, cfg: WavTokenizerConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.num_embeddings = cfg.adanorm_num_embeddings
        self.embed = nn.Conv1d(cfg.input_channels, dim, 7, padding=3)
        self.norm = AdaLayerNorm(cfg.adanorm_num_embeddings, dim)
        self.convnext = nn.ModuleList(
            ConvNeXtBlock(dim, cfg.intermediate_dim, cfg.adanorm_num_embeddings)
            for _ in range(cfg.num_layers)
        )
        self.final_layer_norm = nn.LayerNorm(dim, eps=_EPS)
        self.pos_net = nn.Sequential(
            ResnetBlock(dim),
            ResnetBlock(dim),
            AttnBlock(dim),
            ResnetBlock(dim),
            ResnetBlock(dim),
            nn.GroupNorm(_GROUPS, dim, eps=_EPS),
        )

    def forward(self, features: torch.Tensor, bandwidth_id: int = 0) -> torch.Tensor:
        if not 0 <= bandwidth_id < self.num_embeddings:
            raise ValueError(
                f"bandwidth_id {bandwidth_id} out of range 0..{self.num_embeddings - 1}"
            )
        x = self.pos_net(self.embed(features))
        x = self.norm(x.transpose(1, 2), bandwidth_id)  # (B, D, L) -> (B, L, D)
        for block in self.convnext:
            x = block(x, bandwidth_id)
        return self.final_layer_norm(x)
