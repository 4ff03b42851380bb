"""Load a WavTokenizer checkpoint (docs/checkpoints.md) and read its yaml config."""

from __future__ import annotations

import math
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch
import yaml

from llmvox_tts.model.wavtokenizer import (
    WavTokenizer,
    WavTokenizerCheckpointError,
    WavTokenizerConfig,
    normalize_weight_norm_keys,
)

from .checkpoint_io import load_trusted

MODEL_PREFIXES = ("backbone.", "head.", "feature_extractor.")

# Config fields the yaml settles; the rest (SEANet filters, LSTM depth, kernel sizes) are upstream
# defaults that the yaml never names, so they always come from the weights.
YAML_FIELDS = (
    "vq_bins",
    "codebook_dim",
    "num_quantizers",
    "ratios",
    "dim",
    "intermediate_dim",
    "num_layers",
    "adanorm_num_embeddings",
    "n_fft",
    "hop_length",
)


def load_wavtokenizer(
    checkpoint_path: str | PathLike[str],
    config_path: str | PathLike[str] | None = None,
    *,
    map_location: str | torch.device = "cpu",
) -> WavTokenizer:
    """Read a Lightning checkpoint (or a bare state dict) into a `WavTokenizer` in eval mode.

    Only the `backbone.`, `head.` and `feature_extractor.` keys are kept (the file also holds the
    training discriminators and losses); the rest must match the model exactly. Sizes come from
    the tensor shapes; a yaml given as `config_path` must agree with them.
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"WavTokenizer checkpoint not found: {path}")
    # Safe unpickler first; the full one only for this trusted file (with a warning).
    state_dict = extract_state_dict(load_trusted(path, map_location=map_location))
    if not state_dict:
        raise WavTokenizerCheckpointError(
            f"{path}: no keys starting with {', '.join(MODEL_PREFIXES)} in the checkpoint"
        )
    try:
        inferred = WavTokenizerConfig.from_state_dict(state_dict)
        if config_path is not None:
            declared = read_wavtokenizer_yaml(config_path)
            check_config_agrees(declared, inferred, source=str(config_path))
        return WavTokenizer.from_state_dict(state_dict, inferred)
    except WavTokenizerCheckpointError as exc:
        raise WavTokenizerCheckpointError(f"{path}: {exc}") from None


def extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The model's tensors of a Lightning checkpoint (`state_dict` entry) or of a bare dict."""
    if not isinstance(obj, Mapping):
        raise WavTokenizerCheckpointError(f"checkpoint is a {type(obj).__name__}, not a dict")
    inner = obj.get("state_dict")
    raw = inner if isinstance(inner, Mapping) else obj
    kept = {k: v for k, v in raw.items() if isinstance(k, str) and k.startswith(MODEL_PREFIXES)}
    bad = sorted(k for k, v in kept.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise WavTokenizerCheckpointError(f"non-tensor entries in the state dict: {bad[:5]}")
    return normalize_weight_norm_keys(kept)


def read_wavtokenizer_yaml(path: str | PathLike[str]) -> WavTokenizerConfig:
    """Sizes from the upstream training yaml (`model.init_args.{feature_extractor, backbone,
    head}.init_args`). SEANet sizes absent from the yaml keep the published defaults."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"WavTokenizer config not found: {path}")
    doc = yaml.safe_load(path.read_text())
    return config_from_yaml_dict(doc, source=str(path))


def config_from_yaml_dict(doc: Any, source: str = "<yaml>") -> WavTokenizerConfig:
    """Sizes from a parsed yaml: the Lightning layout (`model.init_args.<part>.init_args`) or a
    flat one (`<part>: {...}`). Unknown fields are ignored."""
    root = doc
    if isinstance(doc, Mapping) and isinstance(doc.get("model"), Mapping):
        root = doc["model"].get("init_args", doc["model"])

    def section(name: str) -> dict[str, Any]:
        part = root.get(name) if isinstance(root, Mapping) else None
        if isinstance(part, Mapping) and "init_args" in part:
            part = part["init_args"]
        if not isinstance(part, Mapping):
            raise WavTokenizerCheckpointError(
                f"{source}: missing model.init_args.{name}.init_args (a mapping)"
            )
        return dict(part)

    def need(args: Mapping[str, Any], key: str, where: str) -> Any:
        if key not in args:
            raise WavTokenizerCheckpointError(f"{source}: {where}.init_args lacks {key!r}")
        return args[key]

    fe, bb, hd = section("feature_extractor"), section("backbone"), section("head")
    padding = hd.get("padding", "same")
    if padding != "same":
        raise WavTokenizerCheckpointError(
            f"{source}: head padding {padding!r} is not supported (only 'same')"
        )
    if bb.get("adanorm_num_embeddings") is None:
        raise WavTokenizerCheckpointError(
            f"{source}: backbone without adanorm_num_embeddings (plain LayerNorm) is not supported"
        )
    if "dim" in hd and int(hd["dim"]) != int(need(bb, "dim", "backbone")):
        raise WavTokenizerCheckpointError(
            f"{source}: head dim {hd['dim']} != backbone dim {bb['dim']}"
        )
    ratios = tuple(int(r) for r in fe.get("dowmsamples", fe.get("downsamples", (8, 5, 4, 2))))
    hop = int(need(hd, "hop_length", "head"))
    if math.prod(ratios) != hop:
        raise WavTokenizerCheckpointError(
            f"{source}: head hop_length {hop} != product of dowmsamples {list(ratios)}"
        )
    defaults = WavTokenizerConfig.published()
    return WavTokenizerConfig(
        vq_bins=int(need(fe, "vq_bins", "feature_extractor")),
        codebook_dim=int(need(bb, "input_channels", "backbone")),
        num_quantizers=int(fe.get("num_quantizers", 1)),
        n_filters=defaults.n_filters,
        ratios=ratios,
        lstm_layers=defaults.lstm_layers,
        dim=int(need(bb, "dim", "backbone")),
        intermediate_dim=int(need(bb, "intermediate_dim", "backbone")),
        num_layers=int(need(bb, "num_layers", "backbone")),
        adanorm_num_embeddings=int(bb["adanorm_num_embeddings"]),
        n_fft=int(need(hd, "n_fft", "head")),
        hop_length=hop,
    )


def check_config_agrees(
    declared: WavTokenizerConfig, inferred: WavTokenizerConfig, source: str = "config"
) -> None:
    """Raise if a yaml-settled size differs from what the weights say."""
    diffs = [
        f"{name}: config {getattr(declared, name)!r} vs weights {getattr(inferred, name)!r}"
        for name in YAML_FIELDS
        if getattr(declared, name) != getattr(inferred, name)
    ]
    if diffs:
        raise WavTokenizerCheckpointError(
            f"{source} does not match the checkpoint weights: " + "; ".join(diffs)
        )
