"""The LLMVoX decoder: a nanoGPT-style transformer over continuous input vectors (docs/model.md).

Attribute names mirror the checkpoint keys (`transformer.h.0.attn.c_attn.weight`, ...), so a
published state dict loads with no rename table. There is no token embedding (`wte`): each input
row is a normalised concatenation of a text embedding and a speech codebook row (see inputs.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import LOSS_IGNORE_INDEX
from .attention import causal_attention
from .kv_cache import KVCache, StepIndex

# Batch invariance of the serving path (decode_step): a sequence's logits must be bit-for-bit the
# same whichever other sequences share its step, so that a job regenerated on another replica
# (after a crash) reproduces the tokens already sent. BLAS picks a matmul kernel, and with it a
# summation order, by the operands' shapes, so a row's result would depend on how many rows run
# with it and on the longest sequence among them. Hence every matmul in decode_step has a shape
# that does not depend on the batch: linear layers run ROW_TILE rows at a time (the last tile
# padded with zeros), and attention runs over KEY_BLOCK key positions at a time, the blocks
# summed in order (blocks beyond a row's length add exact zeros). docs/tts-pool.md has the cost.
ROW_TILE = 16
KEY_BLOCK = 64


def rows_in_tiles(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` for x (N, in), computed in matmuls of ROW_TILE rows each."""
    if getattr(layer, "batch_invariant", False):
        # model/precision.py's Int8Linear: exact integer sums, the same whatever the batch.
        return layer(x)
    n = x.shape[0]
    padded = -(-n // ROW_TILE) * ROW_TILE
    if padded != n:
        x = torch.cat([x, x.new_zeros((padded - n, *x.shape[1:]))])
    tiles = [layer(x[i : i + ROW_TILE]) for i in range(0, padded, ROW_TILE)]
    return (tiles[0] if len(tiles) == 1 else torch.cat(tiles))[:n]


def blocked_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, visible: torch.Tensor
) -> torch.Tensor:
    """One query per row over KEY_BLOCK-sized blocks of keys: q (N, H, hd); keys, values
    (N, H, span, hd) with span a multiple of KEY_BLOCK; visible (N, span). Returns (N, H, hd)."""
    n, h, span, hd = keys.shape
    blocks = span // KEY_BLOCK
    kb = keys.reshape(n, h, blocks, KEY_BLOCK, hd)
    vb = values.reshape(n, h, blocks, KEY_BLOCK, hd)
    # (N, H, blocks, 1, hd) @ (N, H, blocks, hd, KEY_BLOCK): one (1 x hd) @ (hd x KEY_BLOCK)
    # product per block, whatever the span.
    scores = torch.matmul(q[:, :, None, None, :], kb.transpose(-1, -2)).reshape(n, h, span)
    scores = scores * (1.0 / math.sqrt(hd))
    scores = scores.masked_fill(~visible[:, None, :], float("-inf"))
    weights = scores.softmax(dim=-1).reshape(n, h, blocks, 1, KEY_BLOCK)
    parts = torch.matmul(weights, vb)  # (N, H, blocks, 1, hd)
    y = parts[:, :, 0, 0]
    for block in range(1, blocks):  # in order: a sum whose grouping depends on nothing else
        y = y + parts[:, :, block, 0]
    return y


@dataclass(frozen=True)
class GPTConfig:
    n_layer: int = 4
    n_head: int = 8
    n_embd: int = 768
    block_size: int = 8192
    bias: bool = False
    vocab_size: int = 4096
    dropout: float = 0.0

    REQUIRED = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")

    @classmethod
    def from_model_args(cls, model_args: Mapping[str, Any]) -> GPTConfig:
        missing = [k for k in cls.REQUIRED if k not in model_args]
        if missing:
            raise KeyError(f"checkpoint model_args lacks {missing}")
        cfg = cls(
            n_layer=int(model_args["n_layer"]),
            n_head=int(model_args["n_head"]),
            n_embd=int(model_args["n_embd"]),
            block_size=int(model_args["block_size"]),
            bias=bool(model_args["bias"]),
            vocab_size=int(model_args["vocab_size"]),
            dropout=float(model_args.get("dropout", 0.0) or 0.0),
        )
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_embd={cfg.n_embd} is not divisible by n_head={cfg.n_head}")
        return cfg

    def to_model_args(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class LayerNorm(nn.Module):
    """LayerNorm whose bias is optional, as in nanoGPT (`bias=False` checkpoints have none)."""

    def __init__(self, dim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.n_embd = cfg.n_embd
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # (..., 3E) -> three (..., H, hd)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=-1)
        shape = (*x.shape[:-1], self.n_head, self.n_embd // self.n_head)
        return q.view(shape), k.view(shape), v.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Full sequence, causal: x (B, T, E) -> (B, T, E)."""
        q, k, v = self._heads(x)  # each (B, T, H, hd)
        y = causal_attention(q, k, v, self.dropout if self.training else 0.0)
        y = y.reshape(x.shape)
        return self.resid_dropout(self.c_proj(y))

    def decode(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        step: StepIndex,
        visible: torch.Tensor,
    ) -> torch.Tensor:
        """One new row per sequence: x (N, E); keys/values: this layer's cache (S, H, cap, hd);
        visible (N, span): the key positions each row attends to, span a multiple of
        KEY_BLOCK (batch invariance, see ROW_TILE)."""
        q, k, v = rows_in_tiles(self.c_attn, x).split(self.n_embd, dim=-1)
        n, hd = x.shape[0], self.n_embd // self.n_head
        q, k, v = (t.reshape(n, self.n_head, hd) for t in (q, k, v))
        k, v = k.to(keys.dtype), v.to(values.dtype)
        if step.contiguous and step.shared_position is not None:
            keys[:n, :, step.shared_position] = k
            values[:n, :, step.shared_position] = v
        else:
            keys[step.rows, :, step.positions] = k
            values[step.rows, :, step.positions] = v
        span = visible.shape[-1]
        taken = min(span, keys.shape[2])
        if step.contiguous:
            k_all = keys[:n, :, :taken]  # (N, H, taken, hd), a view
            v_all = values[:n, :, :taken]
        else:
            k_all = keys[step.rows, :, :taken]  # gathered copy
            v_all = values[step.rows, :, :taken]
        if taken < span:  # the cache is shorter than the last block: masked zeros fill it
            pad = (0, 0, 0, span - taken)
            k_all, v_all = F.pad(k_all, pad), F.pad(v_all, pad)
        # One memory layout whatever the slots: BLAS also picks its kernel by the operands'
        # strides, and a view of the cache has other strides than a gathered copy.
        k_all, v_all = k_all.contiguous(), v_all.contiguous()
        y = blocked_attention(q.to(keys.dtype), k_all, v_all, visible)
        return rows_in_tiles(self.c_proj, y.to(x.dtype).reshape(x.shape))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.project(x))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))

    def project_rows(self, x: torch.Tensor) -> torch.Tensor:
        """`project` for decoding, batch-invariant (see ROW_TILE)."""
        return rows_in_tiles(self.c_proj, F.gelu(rows_in_tiles(self.c_fc, x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(cfg.n_embd, cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = LayerNorm(cfg.n_embd, cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class LLMVoXDecoder(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(
            {
                "wpe": nn.Embedding(cfg.block_size, cfg.n_embd),
                "drop": nn.Dropout(cfg.dropout),
                "h": nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
                "ln_f": LayerNorm(cfg.n_embd, cfg.bias),
            }
        )
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    def forward(
        self, x: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Training path. x (B, T, E) normalised input rows; targets (B, T) with -1000 = ignore.

        With targets: logits for every position and the mean cross-entropy. Without: only the
        last position's logits, (B, 1, V), as nanoGPT returns them.
        """
        _, t, _ = x.shape
        if t > self.config.block_size:
            raise ValueError(f"sequence of {t} rows exceeds block_size={self.config.block_size}")
        pos = torch.arange(t, device=x.device)
        h = self.transformer.drop(x + self.transformer.wpe(pos))
        for block in self.transformer.h:
            h = block(h)
        h = self.transformer.ln_f(h)
        if targets is None:
            return self.lm_head(h[:, -1:, :]), None
        logits = self.lm_head(h)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(),
            targets.reshape(-1),
            ignore_index=LOSS_IGNORE_INDEX,
        )
        return logits, loss

    def new_cache(
        self, num_slots: int, *, initial_capacity: int = 256, dtype: torch.dtype | None = None
    ) -> KVCache:
        # wpe: a plain table whatever happens to the Linear layers (quantisation, compile).
        weight = self.transformer.wpe.weight
        if dtype is None:
            # CPUs run attention fastest in float32 whatever the weights are; GPUs keep the
            # cache in the weights' dtype for their fused kernels.
            dtype = weight.dtype if weight.device.type == "cuda" else torch.float32
        return KVCache(
            n_layer=self.config.n_layer,
            n_head=self.config.n_head,
            head_dim=self.config.head_dim,
            num_slots=num_slots,
            max_positions=self.config.block_size,
            initial_capacity=initial_capacity,
            dtype=dtype,
            device=weight.device,
        )

    def decode_step(
        self, x: torch.Tensor, cache: KVCache, slots: list[int] | None = None
    ) -> torch.Tensor:
        """Serving path: one new input row per sequence, x (N, E) -> logits (N, V).

        `slots` names the cache row of each input (None: rows 0..N-1 of the cache). Each
        sequence's row goes to position = its cache length, as upstream's growing-input loop
        does (docs/model.md, incremental decoding), at O(1) input cost per step.
        """
        step = cache.prepare(slots, x.shape[0])
        h = x + self.transformer.wpe(step.positions)
        # Keys attended over in whole blocks, masked per row, even for one sequence alone: the
        # same operations whatever the batch (see ROW_TILE).
        span = -(-step.span // KEY_BLOCK) * KEY_BLOCK
        visible = torch.arange(span, device=x.device)[None, :] <= step.positions[:, None]
        for layer, block in enumerate(self.transformer.h):
            h = h + block.attn.decode(
                block.ln_1(h), cache.keys[layer], cache.values[layer], step, visible
            )
            h = h + block.mlp.project_rows(block.ln_2(h))
        cache.advance(step)
        return rows_in_tiles(self.lm_head, self.transformer.ln_f(h))

    def num_parameters(self, include_positions: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if include_positions else n - self.transformer.wpe.weight.numel()
