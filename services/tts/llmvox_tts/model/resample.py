"""Resampling to the 24 kHz mono input of WavTokenizer (docs/wavtokenizer.md, resampling).

A Hann-windowed sinc polyphase filter (lowpass width 6 zero crossings, roll-off 0.99), built in
float64 and applied in float32. It reproduces the reference resampler of the training pipeline to
float32 rounding.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..constants import SAMPLE_RATE

LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99


@functools.lru_cache(maxsize=32)
def _kernel(orig: int, new: int) -> tuple[torch.Tensor, int]:
    """Polyphase kernels (n, 1, 2·half + o) for the reduced rates o -> n, and `half`."""
    # Cached across calls, so never let it become an inference-mode tensor.
    with torch.inference_mode(False):
        return _build_kernel(orig, new)


def _build_kernel(orig: int, new: int) -> tuple[torch.Tensor, int]:
    w = LOWPASS_FILTER_WIDTH
    base = ROLLOFF * min(orig, new)
    half = math.ceil(w * orig / base)
    taps = torch.arange(2 * half + orig, dtype=torch.float64)
    phases = torch.arange(new, dtype=torch.float64)
    tau = (taps[None, :] - half) / orig - phases[:, None] / new  # (n phases, taps)
    t = (tau * base).clamp(-w, w)
    window = torch.cos(math.pi * t / (2 * w)) ** 2
    kernel = torch.special.sinc(t) * window * (base / orig)  # sinc(x) = sin(πx)/(πx), 1 at 0
    return kernel.to(torch.float32)[:, None, :], half  # (n, taps) -> (n, 1, taps) conv weight


def resample(wav: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """Resample along the last axis; any leading shape. Returns `wav` itself if the rates match."""
    if orig_freq <= 0 or new_freq <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_freq} -> {new_freq}")
    if orig_freq == new_freq:
        return wav
    g = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // g, int(new_freq) // g
    kernel, half = _kernel(orig, new)
    kernel = kernel.to(device=wav.device, dtype=wav.dtype)
    *lead, length = wav.shape
    flat = wav.reshape(-1, 1, length)  # (..., T) -> (N, 1, T)
    flat = F.pad(flat, (half, half + orig))
    out = F.conv1d(flat, kernel, stride=orig)  # (N, n phases, frames)
    # Interleave the phases frame-major: sample frame·n + phase.
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)  # (N, n, F) -> (N, F·n)
    target = -(-new * length // orig)  # ceil(n·T / o)
    return out[:, :target].reshape(*lead, target)  # (N, T') -> (..., T')


def convert_audio(
    wav: torch.Tensor,
    sample_rate: int,
    target_sample_rate: int = SAMPLE_RATE,
    target_channels: int = 1,
) -> torch.Tensor:
    """Mix/expand channels, then resample to `target_sample_rate`.

    Shapes: `(T,)` is one mono signal and stays 1-D (only `target_channels == 1` is allowed);
    `(C, T)` returns `(target_channels, T')`; `(B, C, T)` returns `(B, target_channels, T')`.
    Mono conversion averages the channels; stereo from mono repeats the channel. An input already
    at the target rate is only channel-converted.
    """
    if target_channels not in (1, 2):
        raise ValueError(f"target_channels must be 1 or 2, got {target_channels}")
    if wav.dim() == 1:
        if target_channels != 1:
            raise ValueError("a 1-D waveform is mono; pass (C, T) to get stereo")
        return resample(wav, sample_rate, target_sample_rate)
    if wav.dim() not in (2, 3):
        raise ValueError(f"waveform must be (T,), (C, T) or (B, C, T), got {tuple(wav.shape)}")
    channels = wav.shape[-2]
    if target_channels == 1:
        wav = wav.mean(dim=-2, keepdim=True)
    elif channels == 1:
        wav = wav.expand(*wav.shape[:-2], 2, wav.shape[-1])
    elif channels != 2:
        raise ValueError(f"cannot turn {channels} channels into stereo")
    return resample(wav, sample_rate, target_sample_rate)
