"""WavTokenizer: speech codes <-> 24 kHz waveform (docs/wavtokenizer.md).

`WavTokenizer` mirrors the upstream key layout (`feature_extractor.encodec.*`, `backbone.*`,
`head.*`), so `load_state_dict(strict=True)` takes a published state dict with no renaming.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..resample import resample
from .backbone import VocosBackbone
from .config import WavTokenizerCheckpointError, WavTokenizerConfig, normalize_weight_norm_keys
from .istft import ISTFTHead
from .quantizer import ResidualVectorQuantizer
from .seanet import SEANetDecoderWeights, SEANetEncoder


class _Encodec(nn.Module):
    def __init__(self, cfg: WavTokenizerConfig) -> None:
        super().__init__()
        self.encoder = SEANetEncoder(cfg)
        self.quantizer = ResidualVectorQuantizer(cfg.num_quantizers, cfg.vq_bins, cfg.codebook_dim)
        if cfg.with_codec_decoder:
            self.decoder = SEANetDecoderWeights(cfg)


class EncodecFeatures(nn.Module):
    def __init__(self, cfg: WavTokenizerConfig) -> None:
        super().__init__()
        self.encodec = _Encodec(cfg)


class WavTokenizer(nn.Module):
    """Codebook + Vocos backbone + ISTFT head (decode) and SEANet encoder + VQ (encode)."""

    def __init__(self, config: WavTokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.feature_extractor = EncodecFeatures(config)
        self.backbone = VocosBackbone(config)
        self.head = ISTFTHead(config.dim, config.n_fft, config.hop_length)

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        config: WavTokenizerConfig | None = None,
    ) -> WavTokenizer:
        """Build a frozen model around the given tensors (no copy, no throw-away init).

        Sizes come from `config`, or are inferred from the tensor shapes. The model is in eval mode
        with `requires_grad` off (LLMVoX never trains the codec), which also lets weights loaded
        under `torch.inference_mode()` be used outside it. Raises `WavTokenizerCheckpointError`
        naming the missing/unexpected keys or shape mismatches.
        """
        sd = normalize_weight_norm_keys(state_dict)
        cfg = config if config is not None else WavTokenizerConfig.from_state_dict(sd)
        with torch.device("meta"):
            model = cls(cfg)
        check_state_dict(model, sd)
        model.load_state_dict(sd, strict=True, assign=True)
        for module in model.modules():
            if isinstance(module, nn.LSTM):
                # Assigned tensors are separate allocations; cuDNN wants one flat buffer.
                module.flatten_parameters()
        return model.requires_grad_(False).eval()

    # ----------------------------------------------------------------------------- decoding

    @property
    def codebook(self) -> torch.Tensor:
        """(V, C) rows of the first codebook; code i decodes from row i."""
        return self.feature_extractor.encodec.quantizer.codebook(0)

    def codes_to_features(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, L) codes, or (K, B, L) for K codebooks, -> (B, C, L) codebook rows."""
        if codes.dim() == 2:
            codes = codes[None]  # (B, L) -> (1, B, L): one codebook
        if codes.dim() != 3:
            raise ValueError(f"codes must be (B, L) or (K, B, L), got {tuple(codes.shape)}")
        if codes.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"codes must be integers, got {codes.dtype}")
        if codes.device.type == "cpu" and codes.numel():
            # A CPU range check is free; on an accelerator it would force a sync in the hot path.
            low, high = int(codes.min()), int(codes.max())
            if low < 0 or high >= self.config.vq_bins:
                raise ValueError(f"codes out of range 0..{self.config.vq_bins - 1}: {low}..{high}")
        return self.feature_extractor.encodec.quantizer.decode(codes)

    def backbone_forward(self, features: torch.Tensor, bandwidth_id: int = 0) -> torch.Tensor:
        """(B, C, L) features -> (B, L, dim), after the final LayerNorm."""
        # The codebook stays float32 when the vocoder runs in bf16 (model/precision.py).
        features = features.to(self.backbone.embed.weight.dtype)
        return self.backbone(features, int(bandwidth_id))

    def decode_features(self, features: torch.Tensor, bandwidth_id: int = 0) -> torch.Tensor:
        """(B, C, L) features -> (B, hop·L) float32 waveform at 24 kHz."""
        return self.head(self.backbone_forward(features, bandwidth_id))

    def decode(self, codes: torch.Tensor, bandwidth_id: int = 0) -> torch.Tensor:
        """(B, L) int64 codes -> (B, hop·L) float32 waveform at 24 kHz.

        Every item of the batch is decoded independently (GroupNorm and attention are per item),
        but each output sample depends on every code of its own row.
        """
        return self.decode_features(self.codes_to_features(codes), bandwidth_id)

    # ----------------------------------------------------------------------------- encoding

    def encode_24k(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T) or (T,) waveform at 24 kHz -> (encoder_out, codes, features).

        encoder_out (B, C, F) is the continuous SEANet output, codes (B, F) int64 the nearest rows
        of the first codebook and features (B, C, F) those rows, with F = ceil(T / hop).
        """
        x = _as_batch(waveform)[:, None]  # (B, T) -> (B, 1, T): mono input channel
        encoder_out = self.feature_extractor.encodec.encoder(x)
        codes = self.feature_extractor.encodec.quantizer.encode(encoder_out)
        features = self.feature_extractor.encodec.quantizer.decode(codes[None])
        return encoder_out, codes, features

    def encode(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """(B, T) or (T,) mono waveform at `sample_rate` -> (B, ceil(T'/hop)) codes at 24 kHz."""
        x = _as_batch(waveform)
        if sample_rate != self.config.sample_rate:
            x = resample(x, sample_rate, self.config.sample_rate)
        return self.encode_24k(x)[1]


def _as_batch(waveform: torch.Tensor) -> torch.Tensor:
    if waveform.dim() == 1:
        return waveform[None]  # (T,) -> (1, T)
    if waveform.dim() == 3 and waveform.shape[1] == 1:
        return waveform[:, 0]  # (B, 1, T) -> (B, T)
    if waveform.dim() != 2:
        raise ValueError(f"waveform must be (B, T), (B, 1, T) or (T,), got {tuple(waveform.shape)}")
    return waveform


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise WavTokenizerCheckpointError listing missing, unexpected and mis-shaped keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = sorted(expected.keys() - given.keys())
    unexpected = sorted(given.keys() - expected.keys())
    wrong = sorted(
        f"{k}: checkpoint {given[k]} vs model {expected[k]}"
        for k in expected.keys() & given.keys()
        if expected[k] != given[k]
    )
    if missing or unexpected or wrong:
        parts = []
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", wrong),
        ):
            if items:
                shown = ", ".join(items[:10]) + (
                    f", ... ({len(items)} in all)" if len(items) > 10 else ""
                )
                parts.append(f"{title}: {shown}")
        raise WavTokenizerCheckpointError(
            "WavTokenizer state dict does not match the model: " + "; ".join(parts)
        )
