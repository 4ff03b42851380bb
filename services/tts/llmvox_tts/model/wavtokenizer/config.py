"""Sizes of a WavTokenizer model (docs/wavtokenizer.md) and how to read them from a state dict.

Nothing here assumes the published sizes: `from_state_dict` derives every number from tensor
shapes, so checkpoints with other widths, layer counts or vocabularies load without changes.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

ENCODER = "feature_extractor.encodec.encoder.model"
DECODER = "feature_extractor.encodec.decoder.model"
QUANTIZER = "feature_extractor.encodec.quantizer.vq.layers"

# Newer torch saves weight-norm parameters under these names instead of weight_g / weight_v.
_PARAM_G = "parametrizations.weight.original0"
_PARAM_V = "parametrizations.weight.original1"


class WavTokenizerCheckpointError(ValueError):
    """A state dict or config that does not describe a loadable WavTokenizer."""


@dataclass(frozen=True)
class WavTokenizerConfig:
    """Every size needed to build `WavTokenizer`; field names follow the upstream yaml."""

    # Quantizer: `num_quantizers` codebooks of `vq_bins` rows, each `codebook_dim` wide.
    vq_bins: int
    codebook_dim: int
    num_quantizers: int
    # SEANet encoder (and the unused codec decoder, which mirrors it).
    n_filters: int
    # Upsampling order, as the yaml `dowmsamples`; the encoder strides run in reverse.
    ratios: tuple[int, ...]
    lstm_layers: int
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    compress: int = 2
    # Vocos backbone; `input_channels` is always `codebook_dim`.
    dim: int = 768
    intermediate_dim: int = 2304
    num_layers: int = 12
    adanorm_num_embeddings: int = 4
    # ISTFT head ("same" padding only).
    n_fft: int = 1280
    hop_length: int = 320
    sample_rate: int = 24_000
    # The codec's own SEANet decoder sits in published files but never runs; its weights are
    # still held so that a strict load of the full key set passes. Upstream fixes its ratios
    # independently of the encoder's; None means "same as `ratios`".
    with_codec_decoder: bool = True
    decoder_ratios: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratios", tuple(int(r) for r in self.ratios))
        if self.decoder_ratios is not None:
            object.__setattr__(self, "decoder_ratios", tuple(int(r) for r in self.decoder_ratios))
        self.validate()

    def validate(self) -> None:
        problems = []
        if math.prod(self.ratios) != self.hop_length:
            problems.append(
                f"hop_length {self.hop_length} != product of ratios {list(self.ratios)}"
            )
        if self.dim % 32:
            problems.append(f"backbone dim {self.dim} is not divisible by the 32 GroupNorm groups")
        if self.n_fft < self.hop_length or (self.n_fft - self.hop_length) % 2:
            problems.append(
                f"n_fft {self.n_fft} and hop_length {self.hop_length} do not allow 'same' padding"
            )
        if self.adanorm_num_embeddings < 1:
            problems.append("adanorm_num_embeddings must be at least 1")
        if self.num_quantizers < 1:
            problems.append("num_quantizers must be at least 1")
        if problems:
            raise WavTokenizerCheckpointError("invalid WavTokenizer config: " + "; ".join(problems))

    @property
    def input_channels(self) -> int:
        return self.codebook_dim

    @property
    def encoder_strides(self) -> tuple[int, ...]:
        return tuple(reversed(self.ratios))

    @property
    def codec_decoder_ratios(self) -> tuple[int, ...]:
        return self.ratios if self.decoder_ratios is None else self.decoder_ratios

    def replace(self, **changes: object) -> WavTokenizerConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def published(cls) -> WavTokenizerConfig:
        """`wavtokenizer_large_speech_320_24k` (docs/wavtokenizer.md)."""
        return cls(
            vq_bins=4096,
            codebook_dim=512,
            num_quantizers=1,
            n_filters=32,
            ratios=(8, 5, 4, 2),
            lstm_layers=2,
            dim=768,
            intermediate_dim=2304,
            num_layers=12,
            adanorm_num_embeddings=4,
            n_fft=1280,
            hop_length=320,
        )

    @classmethod
    def tiny(cls) -> WavTokenizerConfig:
        """The structure of the published model at test size (the public golden cases)."""
        return cls(
            vq_bins=1024,
            codebook_dim=64,
            num_quantizers=1,
            n_filters=4,
            ratios=(8, 5, 4, 2),
            lstm_layers=2,
            dim=64,
            intermediate_dim=192,
            num_layers=2,
            adanorm_num_embeddings=4,
            n_fft=1280,
            hop_length=320,
        )

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> WavTokenizerConfig:
        """Infer every size from the tensor shapes of a (prefix-filtered) state dict."""
        sd = normalize_weight_norm_keys(state_dict)

        def shape(key: str) -> torch.Size:
            if key not in sd:
                raise WavTokenizerCheckpointError(
                    f"WavTokenizer state dict lacks {key!r}, needed to infer the model sizes"
                )
            return sd[key].shape

        vq_layers = _indices(sd, rf"{re.escape(QUANTIZER)}\.(\d+)\..*")
        if not vq_layers:
            raise WavTokenizerCheckpointError(
                f"WavTokenizer state dict has no codebook ({QUANTIZER}.0._codebook.embed)"
            )
        if vq_layers != list(range(len(vq_layers))):
            raise WavTokenizerCheckpointError(
                f"codebook layers are not numbered 0..n-1: {vq_layers}"
            )
        vq_bins, codebook_dim = shape(f"{QUANTIZER}.0._codebook.embed")

        conv_idx = _indices(sd, rf"{re.escape(ENCODER)}\.(\d+)\.conv\.conv\..*")
        if len(conv_idx) < 2:
            raise WavTokenizerCheckpointError(
                f"WavTokenizer state dict has no SEANet encoder convolutions under {ENCODER}"
            )
        first_v = shape(f"{ENCODER}.{conv_idx[0]}.conv.conv.weight_v")
        last_v = shape(f"{ENCODER}.{conv_idx[-1]}.conv.conv.weight_v")
        strides = []
        for idx in conv_idx[1:-1]:
            kernel = shape(f"{ENCODER}.{idx}.conv.conv.weight_v")[-1]
            if kernel % 2:
                raise WavTokenizerCheckpointError(
                    f"encoder conv {idx} has odd kernel {kernel}; strided convs use k = 2*ratio"
                )
            strides.append(kernel // 2)
        lstm_idx = _indices(sd, rf"{re.escape(ENCODER)}\.(\d+)\.lstm\..*")
        lstm_layers = 0
        if lstm_idx:
            prefix = f"{ENCODER}.{lstm_idx[0]}.lstm"
            lstm_layers = _count(sd, rf"{re.escape(prefix)}\.\w+_l(\d+)")
        n_filters = first_v[0]
        hidden = shape(f"{ENCODER}.1.block.1.conv.conv.weight_v")
        if last_v[0] != codebook_dim:
            raise WavTokenizerCheckpointError(
                f"SEANet encoder output width {last_v[0]} != codebook width {codebook_dim}"
            )

        embed = shape("backbone.embed.weight")
        if embed[1] != codebook_dim:
            raise WavTokenizerCheckpointError(
                f"backbone input_channels {embed[1]} != codebook width {codebook_dim}"
            )
        num_layers = _count(sd, r"backbone\.convnext\.(\d+)\..*")
        if num_layers == 0:
            raise WavTokenizerCheckpointError("WavTokenizer state dict has no backbone.convnext.*")
        head_rows = shape("head.out.weight")[0]
        ratios = tuple(reversed(strides))
        decoder_ratios = None
        with_decoder = any(k.startswith(DECODER + ".") for k in sd)
        if with_decoder:
            convtr = _indices(sd, rf"{re.escape(DECODER)}\.(\d+)\.convtr\.convtr\..*")
            found = tuple(shape(f"{DECODER}.{i}.convtr.convtr.weight_v")[-1] // 2 for i in convtr)
            decoder_ratios = None if found == ratios else found
        return cls(
            vq_bins=vq_bins,
            codebook_dim=codebook_dim,
            num_quantizers=len(vq_layers),
            n_filters=n_filters,
            ratios=ratios,
            lstm_layers=lstm_layers,
            kernel_size=first_v[-1],
            last_kernel_size=last_v[-1],
            residual_kernel_size=hidden[-1],
            compress=max(1, n_filters // hidden[0]),
            dim=embed[0],
            intermediate_dim=shape("backbone.convnext.0.pwconv1.weight")[0],
            num_layers=num_layers,
            adanorm_num_embeddings=shape("backbone.norm.scale.weight")[0],
            n_fft=head_rows - 2,
            hop_length=math.prod(ratios),
            with_codec_decoder=with_decoder,
            decoder_ratios=decoder_ratios,
        )


def normalize_weight_norm_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename `parametrizations.weight.original0/1` to the legacy `weight_g/weight_v` names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(_PARAM_G):
            key = key[: -len(_PARAM_G)] + "weight_g"
        elif key.endswith(_PARAM_V):
            key = key[: -len(_PARAM_V)] + "weight_v"
        out[key] = value
    return out


def _indices(sd: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    regex = re.compile(pattern + "$")
    found = {int(m.group(1)) for key in sd if (m := regex.match(key))}
    return sorted(found)


def _count(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    """Number of numbered blocks: the highest index + 1, so a gap surfaces as a missing key."""
    found = _indices(sd, pattern)
    return found[-1] + 1 if found else 0
