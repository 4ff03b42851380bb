"""SEANet convolution stack of the WavTokenizer codec (docs/wavtokenizer.md, encode).

Only the encoder runs (waveform -> continuous frames). The codec's decoder is built as a holder of
its weights so that published checkpoints load strictly; it has no forward pass.
Submodule names mirror the checkpoint keys (`model.{i}.conv.conv.weight_g`, `...block.1...`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import WavTokenizerConfig, normalize_weight_norm_keys


def _weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """W = g · v / ‖v‖, the norm over every dim but 0, with no epsilon (as torch's weight_norm)."""
    norm = torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)
    return v * (g / norm)


def _rename_parametrized_keys(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: object
) -> None:
    # Files re-saved by newer torch name g/v `parametrizations.weight.original0/1`; map them to the
    # legacy names this module stores, so either layout loads strictly.
    own = {k: v for k, v in state_dict.items() if k.startswith(prefix + "parametrizations.")}
    for key, value in normalize_weight_norm_keys(own).items():
        state_dict[key] = value
    for key in own:
        del state_dict[key]


class _WeightNormParams(nn.Module):
    """bias, weight_g, weight_v of one weight-normalised convolution (key order as upstream)."""

    def __init__(self, g_shape: tuple[int, ...], v_shape: tuple[int, ...], bias: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(bias))
        self.weight_g = nn.Parameter(torch.ones(g_shape))
        self.weight_v = nn.Parameter(torch.ones(v_shape))
        self.register_load_state_dict_pre_hook(_rename_parametrized_keys)

    @property
    def weight(self) -> torch.Tensor:
        return _weight_norm(self.weight_g, self.weight_v)


class WNConv1d(_WeightNormParams):
    """A Conv1d with weight normalisation and no built-in padding."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, dilation: int = 1
    ) -> None:
        super().__init__((out_ch, 1, 1), (out_ch, in_ch, kernel_size), out_ch)
        self.stride = stride
        self.dilation = dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight, self.bias, stride=self.stride, dilation=self.dilation)


class WNConvTranspose1d(_WeightNormParams):
    """Weights of a weight-normalised ConvTranspose1d; g is per *input* channel (dim 0)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int) -> None:
        super().__init__((in_ch, 1, 1), (in_ch, out_ch, kernel_size), out_ch)
        self.stride = stride


class NormConv1d(nn.Module):
    def __init__(self, conv: WNConv1d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _reflect_pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reflect padding that also works when the input is not longer than the padding."""
    length = x.shape[-1]
    max_pad = max(left, right)
    extra = 0
    if length <= max_pad:
        # torch's reflect mode needs more samples than the pad; borrow zeros and drop them after.
        extra = max_pad - length + 1
        x = F.pad(x, (0, extra))
    padded = F.pad(x, (left, right), mode="reflect")
    return padded[..., : padded.shape[-1] - extra]


class SConv1d(nn.Module):
    """Non-causal padded convolution: output length ceil(T / stride)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, dilation: int = 1
    ) -> None:
        super().__init__()
        self.conv = NormConv1d(WNConv1d(in_ch, out_ch, kernel_size, stride, dilation))
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k_eff = (self.kernel_size - 1) * self.dilation + 1
        total = k_eff - self.stride
        right = total // 2
        left = total - right
        length = x.shape[-1]
        # The original `extra` formula reduces to this because k_eff - total == stride: pad the end
        # so that the last window is complete.
        extra = -(-length // self.stride) * self.stride - length
        return self.conv(_reflect_pad(x, left, right + extra))


class SConvTranspose1d(nn.Module):
    """Weight holder of the codec decoder's upsampling convolution (never run)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.convtr = _NormConvTr(WNConvTranspose1d(in_ch, out_ch, kernel_size, stride))


class _NormConvTr(nn.Module):
    def __init__(self, convtr: WNConvTranspose1d) -> None:
        super().__init__()
        self.convtr = convtr


class ResidualBlock(nn.Module):
    """out = shortcut(x) + conv_b(ELU(conv_a(ELU(x)))), conv_a halving the width (compress)."""

    def __init__(self, channels: int, kernel_size: int, compress: int) -> None:
        super().__init__()
        hidden = channels // compress
        self.block = nn.Sequential(
            nn.ELU(),
            SConv1d(channels, hidden, kernel_size),
            nn.ELU(),
            SConv1d(hidden, channels, 1),
        )
        self.shortcut = SConv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


class SLSTM(nn.Module):
    """LSTM over time with a skip connection, on (B, C, T)."""

    def __init__(self, channels: int, num_layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(channels, channels, num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.permute(2, 0, 1)  # (B, C, T) -> (T, B, C), the LSTM's time-major layout
        y, _ = self.lstm(seq)
        return (y + seq).permute(1, 2, 0)  # (T, B, C) -> (B, C, T)


class SEANetEncoder(nn.Module):
    """(B, 1, T) at 24 kHz -> (B, codebook_dim, ceil(T / hop))."""

    def __init__(self, cfg: WavTokenizerConfig) -> None:
        super().__init__()
        width = cfg.n_filters
        layers: list[nn.Module] = [SConv1d(1, width, cfg.kernel_size)]
        for stride in cfg.encoder_strides:
            layers += [
                ResidualBlock(width, cfg.residual_kernel_size, cfg.compress),
                nn.ELU(),
                SConv1d(width, width * 2, 2 * stride, stride=stride),
            ]
            width *= 2
        if cfg.lstm_layers:
            layers.append(SLSTM(width, cfg.lstm_layers))
        layers += [nn.ELU(), SConv1d(width, cfg.codebook_dim, cfg.last_kernel_size)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class SEANetDecoderWeights(nn.Module):
    """The codec's own decoder, kept only so its checkpoint keys load (LLMVoX never runs it)."""

    def __init__(self, cfg: WavTokenizerConfig) -> None:
        super().__init__()
        ratios = cfg.codec_decoder_ratios
        width = cfg.n_filters * 2 ** len(ratios)
        layers: list[nn.Module] = [SConv1d(cfg.codebook_dim, width, cfg.kernel_size)]
        if cfg.lstm_layers:
            layers.append(SLSTM(width, cfg.lstm_layers))
        for ratio in ratios:
            layers += [
                nn.ELU(),
                SConvTranspose1d(width, width // 2, 2 * ratio, ratio),
                ResidualBlock(width // 2, cfg.residual_kernel_size, cfg.compress),
            ]
            width //= 2
        layers += [nn.ELU(), SConv1d(width, 1, cfg.last_kernel_size)]
        self.model = nn.ModuleList(layers)
