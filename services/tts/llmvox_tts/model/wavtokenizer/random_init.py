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


# ---------------------------------------------------------------------------------------------
# A codebook drawn from the encoder's own outputs.
#
# With random weights, the encoder's frames and a random normal codebook live in unrelated
# places: nearly every frame of speech lands on the same few rows (7 distinct codes for 624 frames
# of espeak speech, 70 % one code), so data encoded by such a model carries almost no information
# and a decoder trained on it learns nothing but the majority code. Fitting the rows to what the
# encoder produces on speech-like sound spreads encoding over many codes. The sound is made here,
# deterministically and without any outside tool, so the tiny profile is the same everywhere.


def speech_like_waveform(seconds: float, seed: int, sample_rate: int = 24_000) -> torch.Tensor:
    """(T,) float32 in [-1, 1]: syllable-like segments of voiced sound (a harmonic series with a
    drifting pitch, shaped by three formant-like resonances), noise bursts (fricatives) and short
    pauses, each with its own loudness envelope."""
    gen = torch.Generator().manual_seed(seed)

    def draw(low: float, high: float) -> float:
        return float(torch.rand((), generator=gen)) * (high - low) + low

    pieces: list[torch.Tensor] = []
    total = int(seconds * sample_rate)
    made = 0
    harmonics = torch.arange(1, 60, dtype=torch.float32)
    while made < total:
        kind = float(torch.rand((), generator=gen))
        length = int(draw(0.06, 0.28) * sample_rate)
        t = torch.arange(length, dtype=torch.float32) / sample_rate
        if kind < 0.62:  # voiced: pitch glides between two values, formants move a little
            f0 = draw(85.0, 260.0) * (1 + 0.25 * (t / t[-1]) * draw(-1.0, 1.0))
            phase = 2 * math.pi * torch.cumsum(f0, 0) / sample_rate
            formants = [draw(250, 900), draw(850, 2400), draw(2200, 3300)]
            widths = [draw(60, 160), draw(90, 220), draw(120, 300)]
            # Formant gains at the segment's mean pitch: a glide of a few semitones barely
            # moves the harmonics across the resonances, and (H,) is far cheaper than (H, L).
            freqs = harmonics * f0.mean()
            gain = sum(
                torch.exp(-0.5 * ((freqs - f) / w) ** 2) * (1.0 / (i + 1))
                for i, (f, w) in enumerate(zip(formants, widths, strict=True))
            )
            gain = gain * (freqs < 5000.0)  # speech energy above 5 kHz is small
            kept = gain > 1e-4
            signal = gain[kept] @ torch.sin(harmonics[kept, None] * phase[None, :])
            signal = signal + 0.02 * torch.randn(length, generator=gen)
        elif kind < 0.85:  # fricative: noise, roughly high-passed by a difference, maybe twice
            noise = torch.randn(length + 2, generator=gen)
            signal = noise[1:] - noise[:-1] * draw(0.0, 0.95)
            if draw(0, 1) < 0.5:
                signal = signal[1:] - signal[:-1] * draw(0.0, 0.9)
            signal = signal[:length]
        else:  # pause: near silence
            signal = 0.003 * torch.randn(length, generator=gen)
        # Attack and release of each segment, and its own loudness.
        ramp = torch.clamp(torch.minimum(t, t[-1] - t) / 0.02, max=1.0)
        signal = signal * ramp * draw(0.05, 1.0)
        pieces.append(signal / signal.abs().max().clamp_min(1e-6) * draw(0.1, 0.9))
        made += length
    return torch.cat(pieces)[:total].to(torch.float32)


def fit_codebook_to_speech(
    model: torch.nn.Module, seed: int, seconds: float = 45.0, iterations: int = 4
) -> torch.Tensor:
    """Set the first codebook of `model` (a WavTokenizer) to centres of its encoder's frames on
    `speech_like_waveform` (seeded k-means: rows drawn from the frames, then `iterations` Lloyd
    steps; an emptied row takes a fresh frame). Returns the codebook, also written into the
    model together with consistent training buffers (`embed_avg` = `embed` · `cluster_size`)."""
    from .model import WavTokenizer  # model imports this package's modules; avoid a cycle

    assert isinstance(model, WavTokenizer)
    book = model.feature_extractor.encodec.quantizer.vq.layers[0]._codebook
    bins = book.embed.shape[0]
    audio = speech_like_waveform(seconds, seed=seed, sample_rate=model.config.sample_rate)
    with torch.inference_mode():
        frames = model.feature_extractor.encodec.encoder(audio[None, None])[0].t()  # (F, C)
    frames = frames.float().contiguous()
    gen = torch.Generator().manual_seed(seed + 7)
    # More rows than frames: some rows are repeated frames, each still a real encoder output.
    order = torch.randperm(frames.shape[0], generator=gen)
    picks = order.repeat(-(-bins // frames.shape[0]))[:bins]
    centres = frames[picks].clone()
    for _ in range(iterations):
        dist = (
            frames.pow(2).sum(1, keepdim=True)
            - 2 * frames @ centres.t()
            + centres.pow(2).sum(1)[None, :]
        )
        nearest = dist.argmin(1)
        counts = torch.bincount(nearest, minlength=bins).float()
        sums = torch.zeros_like(centres).index_add_(0, nearest, frames)
        used = counts > 0
        centres[used] = sums[used] / counts[used, None]
        empty = int((~used).sum())
        if empty:
            refill = torch.randint(0, frames.shape[0], (empty,), generator=gen)
            centres[~used] = frames[refill]
    with torch.no_grad():
        book.embed.copy_(centres)
        book.cluster_size.fill_(1.0)
        book.embed_avg.copy_(centres)
    return centres
