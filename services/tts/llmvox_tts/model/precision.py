"""Numeric precision of the decoder's (and the vocoder's) weights for serving.

fp32 reproduces the original implementation's numbers (the golden suite runs it). The others
trade exactness for speed and change logits slightly, so greedy tokens can differ where two
candidates are close:
- bf16 / fp16: half the weight bytes; the usual choice on GPUs;
- int8 (CPU): every Linear layer becomes `Int8Linear`: weights int8 with one scale per output
  row, activations quantised to int8 on the fly with one scale per input row (per token), an
  int8 x int8 matmul accumulated exactly in int32, then rescaled. A quarter of the weight bytes,
  which is what decoding a few rows per step on a CPU is bound by.

int8 here is batch-invariant by construction, unlike torch's dynamic quantisation: that one
quantises the activations with one scale over the whole input tensor, so a row's numbers depend
on the other rows of its batch (a loud neighbour coarsens everyone's steps), and a job
regenerated on another replica in another batch could speak other tokens. Per-row scales depend
on the row alone (a maximum, exact in any order); integer sums are exact in any order; the
rescale is elementwise. So a row's output is bit-for-bit the same whatever batch it runs in and
whichever matmul kernel the library picks for that batch's shape.
"""

from __future__ import annotations

import copy
from typing import Literal, get_args

import torch
from torch import nn

Precision = Literal["fp32", "bf16", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

_FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_INT8_MAX = 127.0
# A row of zeros gets this scale instead of 0 (it quantises to zeros either way).
_MIN_SCALE = 1e-12


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 of each row of (N, K) float32 `x`: (codes (N, K) int8, scales (N, 1))."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp_min(_MIN_SCALE) / _INT8_MAX
    codes = torch.round(x / scale).clamp_(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return codes, scale


class Int8Linear(nn.Module):
    """An `nn.Linear` with int8 weights (per output row) and per-row int8 activations.

    `batch_invariant` tells the decoder that this layer needs no batch-shape precautions (see
    the module docstring): its output row depends on its input row alone, bit for bit.
    """

    batch_invariant = True

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        codes, scale = quantize_rows(weight)
        self.register_buffer("qweight", codes)  # (out, in) int8
        self.register_buffer("weight_scale", scale.reshape(1, -1))  # (1, out)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)
        self._packed = _onednn_pack(codes)

    # The packed weights are an opaque oneDNN tensor that cannot be copied or pickled: copies
    # leave them out and pack again.
    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._packed = _onednn_pack(self.qweight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features).float()
        codes, scale = quantize_rows(rows)
        # int32 sums are exact (|sum| <= 127² · in_features, far below 2^31); both paths give
        # float32(sum), the same bits.
        if self._packed is not None and rows.device.type == "cpu":
            sums = _onednn_sums(codes, self._packed, self.out_features)
        else:
            sums = torch._int_mm(codes, self.qweight.t()).float()
        # Fixed order (sum · row scale) · weight scale: elementwise, the same for every batch.
        y = sums * scale * self.weight_scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


_UNIT_SCALES: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def _onednn_pack(codes: torch.Tensor) -> torch.Tensor | None:
    """The weight codes pre-packed for oneDNN's int8 matmul (~25 % faster than `_int_mm`,
    which re-lays the weights out on every call), or None where torch has no oneDNN."""
    try:
        return torch.ops.onednn.qlinear_prepack(codes, None)
    except (AttributeError, RuntimeError):
        return None


def _onednn_sums(codes: torch.Tensor, packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """float32(codes @ weight codes.T) through the pre-packed weights: signed activations with
    no zero point, so the integer sum is exact (an unsigned input with zero point 128 would
    subtract a compensation term in float32, off by a few units past 2^24)."""
    if out_features not in _UNIT_SCALES:
        _UNIT_SCALES[out_features] = (
            torch.ones(out_features, dtype=torch.float32),
            torch.zeros(out_features, dtype=torch.long),
        )
    ones, zeros = _UNIT_SCALES[out_features]
    return torch.ops.onednn.qlinear_pointwise(
        codes, 1.0, 0, packed, ones, zeros, None, 1.0, 0, torch.float32, "none", [], ""
    )


def quantize_linears(model: nn.Module) -> nn.Module:
    """Replace every `nn.Linear` of `model` (in place) by an `Int8Linear`; returns `model`."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, Int8Linear(child))
        else:
            quantize_linears(child)
    return model


def with_precision(model: nn.Module, precision: str) -> nn.Module:
    """A copy of `model` in `precision` (the model itself for fp32)."""
    if precision == "fp32":
        return model
    if precision in _FLOAT_DTYPES:
        return copy.deepcopy(model).to(_FLOAT_DTYPES[precision])
    if precision == "int8":
        first = next(iter(model.parameters()), None)
        if first is not None and first.device.type != "cpu":
            raise ValueError("int8 decoding is CPU-only; use bf16 on GPUs")
        return quantize_linears(copy.deepcopy(model))
    raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")


VocoderPrecision = Literal["fp32", "bf16", "int8"]
VOCODER_PRECISIONS: tuple[str, ...] = get_args(VocoderPrecision)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere torch emulates
    it, slower than fp32."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def default_vocoder_precision(device: str) -> str:
    """The vocoder's default: on a CPU with bf16 hardware bf16 (measured fastest there, ~35 dB
    from fp32: docs/benchmarks.md), int8 on other CPUs, fp32 elsewhere."""
    if torch.device(device).type != "cpu":
        return "fp32"
    return "bf16" if cpu_has_bf16() else "int8"


def wavtokenizer_with_precision(wavtokenizer: nn.Module, precision: str) -> nn.Module:
    """A copy of a WavTokenizer whose vocoder (backbone and output layer) runs in `precision`
    (the model itself for fp32). The codebook stays float32: the decoder reads its rows as input,
    so rounding them would change the speech tokens, not only the audio. The inverse FFT runs in
    float32 whatever the precision (model/wavtokenizer/istft.py)."""
    if precision == "fp32":
        return wavtokenizer
    if precision not in VOCODER_PRECISIONS:
        raise ValueError(
            f"unknown vocoder precision {precision!r}; choose one of {VOCODER_PRECISIONS}"
        )
    model = copy.deepcopy(wavtokenizer)
    backbone, head = model.backbone, model.head  # type: ignore[union-attr]
    if precision == "bf16":
        backbone.to(torch.bfloat16)
        head.out.to(torch.bfloat16)
    else:
        if next(backbone.parameters()).device.type != "cpu":
            raise ValueError("int8 is CPU-only; use bf16 on GPUs")
        quantize_linears(backbone)
        quantize_linears(head)
    return model
