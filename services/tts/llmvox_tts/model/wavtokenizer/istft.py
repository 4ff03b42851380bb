"""ISTFT head with "same" padding (docs/wavtokenizer.md, decode step 4 and the "same" ISTFT).

`torch.istft` cannot express it: center=True trims n_fft/2 per side and center=False keeps edges
where the window envelope is zero. Here frames are overlap-added and (n_fft − hop)/2 samples are
trimmed from each end, giving exactly hop·L samples for L frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_MAX_CACHED_ENVELOPES = 64
_MAG_CLIP = 100.0


def periodic_hann(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.hann_window(n, periodic=True, dtype=dtype)


def overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """(B, N, L) frames -> (B, (L−1)·hop + N), frame t added at offset t·hop."""
    batch, n, length = frames.shape
    total = (length - 1) * hop + n
    out = F.fold(frames, output_size=(1, total), kernel_size=(1, n), stride=(1, hop))
    return out.view(batch, total)  # (B, 1, 1, total) -> (B, total)


def istft_same(
    spec: torch.Tensor, window: torch.Tensor, hop: int, envelope: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, N/2+1, L) complex spectrum -> (B, hop·L) waveform.

    `envelope` is the trimmed overlap-add of window² for this L (see `same_envelope`); it is
    computed here when not given.
    """
    n_fft = window.shape[0]
    pad = (n_fft - hop) // 2
    frames = torch.fft.irfft(spec, n=n_fft, dim=1, norm="backward") * window[None, :, None]
    y = overlap_add(frames, hop)
    if envelope is None:
        envelope = same_envelope(window, hop, spec.shape[-1])
    return y[:, pad : y.shape[-1] - pad] / envelope


def same_envelope(window: torch.Tensor, hop: int, length: int) -> torch.Tensor:
    """Trimmed overlap-add of window² for `length` frames, shape (hop·length,)."""
    n_fft = window.shape[0]
    pad = (n_fft - hop) // 2
    squares = window.square()[None, :, None].expand(1, n_fft, length).contiguous()
    env = overlap_add(squares, hop)[0]
    return env[pad : env.shape[-1] - pad]


class ISTFT(nn.Module):
    """Holds the stored window (`head.istft.window`) and a cache of envelopes per frame count."""

    window: torch.Tensor

    def __init__(self, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.register_buffer("window", periodic_hann(n_fft))
        self._envelopes: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}
        # A loaded window may differ from the one the cached envelopes were built from.
        self.register_load_state_dict_post_hook(lambda module, _: module._envelopes.clear())

    def envelope(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        key = (length, self.window.device, dtype)
        env = self._envelopes.get(key)
        if env is None:
            # Built outside inference mode so the cached tensor stays usable in any mode.
            with torch.inference_mode(False), torch.no_grad():
                window = self.window.detach().clone().to(dtype)
                env = same_envelope(window, self.hop_length, length)
            if bool((env <= 1e-11).any()):
                raise ValueError("ISTFT window envelope vanishes; n_fft / hop do not overlap")
            if len(self._envelopes) >= _MAX_CACHED_ENVELOPES:
                # Oldest first; tolerant of another thread evicting the same entry.
                oldest = next(iter(self._envelopes), None)
                if oldest is not None:
                    self._envelopes.pop(oldest, None)
            self._envelopes[key] = env
        return env

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        dtype = spec.real.dtype
        env = self.envelope(spec.shape[-1], dtype)
        return istft_same(spec, self.window.to(dtype), self.hop_length, env)


class ISTFTHead(nn.Module):
    """(B, L, dim) -> (B, hop·L): linear to log-magnitude and phase, then the "same" ISTFT."""

    def __init__(self, dim: int, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self.out = nn.Linear(dim, n_fft + 2)
        self.istft = ISTFT(n_fft, hop_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The FFT runs in float32 even for a half-precision model (irfft of length 1280 needs it).
        y = self.out(x).float().transpose(1, 2)  # (B, L, N+2) -> (B, N+2, L)
        log_mag, phase = y.chunk(2, dim=1)  # each (B, N/2+1, L)
        mag = torch.exp(log_mag).clamp(max=_MAG_CLIP)
        real = mag * torch.cos(phase)
        imag = mag * torch.sin(phase)
        # A real signal has no imaginary DC/Nyquist part; CPU irfft ignores it, but zeroing it
        # keeps other FFT backends from depending on it.
        imag[:, 0] = 0
        imag[:, -1] = 0
        return self.istft(torch.complex(real, imag))
