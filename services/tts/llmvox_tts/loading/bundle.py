"""The three models LLMVoX speaks with, loaded together: published weights or the tiny profile.

The tiny profile builds small random-weight models with the published structure. They are
untrained: what they say is noise, and every caller is told so (`ModelBundle.untrained`). Its
WavTokenizer codebook is fitted to its own encoder's outputs on generated speech-like sound, so
that speech encoded with it spreads over hundreds of codes and a decoder can learn from it.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..model.byt5_tokenizer import ByT5Tokenizer
from ..model.gpt import GPTConfig, LLMVoXDecoder
from ..model.precision import wavtokenizer_with_precision, with_precision
from ..model.speech_decoder import check_tables_fit
from ..model.text_embedding import resize_with_mean_rows
from ..model.wavtokenizer import WavTokenizer, WavTokenizerConfig
from ..model.wavtokenizer.random_init import (
    fit_codebook_to_speech,
    random_wavtokenizer_state_dict,
)
from .hub import CHARSIU_REPO, LLMVOX_DECODER_FILE, LLMVOX_REPO, WAVTOKENIZER_FILE, resolve_file
from .llmvox import load_llmvox_decoder
from .text_embedding import load_text_table
from .wavtokenizer import load_wavtokenizer

log = logging.getLogger(__name__)

UNTRAINED_WARNING = (
    "tiny profile: small RANDOM-WEIGHT models (untrained); the audio is noise, "
    "useful only to exercise the pipeline"
)


@dataclass
class ModelBundle:
    tokenizer: ByT5Tokenizer
    text_table: torch.Tensor  # (386, D)
    decoder: LLMVoXDecoder
    wavtokenizer: WavTokenizer
    untrained: bool
    description: str
    precision: str = "fp32"
    vocoder_precision: str = "fp32"

    @property
    def device(self) -> torch.device:
        return self.decoder.transformer.wpe.weight.device

    def to(
        self, device: str | torch.device, precision: str = "fp32", vocoder_precision: str = "fp32"
    ) -> ModelBundle:
        """Move to `device`; the decoder then takes `precision`, the vocoder (WavTokenizer's
        backbone and head; its codebook stays fp32) `vocoder_precision` (model/precision.py)."""
        self.decoder = with_precision(self.decoder.to(device), precision)
        self.wavtokenizer = wavtokenizer_with_precision(
            self.wavtokenizer.to(device), vocoder_precision
        )
        self.text_table = self.text_table.to(device)
        self.precision = precision
        self.vocoder_precision = vocoder_precision
        if precision != "fp32" or vocoder_precision != "fp32":
            self.description += f" (decoder in {precision}, vocoder in {vocoder_precision})"
        return self


def check_compatible(text_table: torch.Tensor, decoder: LLMVoXDecoder, wt: WavTokenizer) -> None:
    check_tables_fit(decoder, text_table, wt.codebook)


def load_published(
    *,
    llmvox: str | Path = LLMVOX_REPO,
    wavtokenizer: str | Path = LLMVOX_REPO,
    wavtokenizer_config: str | Path | None = None,
    text_model: str | Path = CHARSIU_REPO,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    vocoder_precision: str = "fp32",
) -> ModelBundle:
    """Each source is a file, a directory holding the published file name, or a hub id."""
    decoder_path = resolve_file(llmvox, LLMVOX_DECODER_FILE)
    wt_path = resolve_file(wavtokenizer, WAVTOKENIZER_FILE)
    decoder = load_llmvox_decoder(decoder_path)
    wt = load_wavtokenizer(wt_path, wavtokenizer_config)
    table = load_text_table(text_model)
    check_compatible(table, decoder, wt)
    bundle = ModelBundle(
        tokenizer=ByT5Tokenizer(),
        text_table=table,
        decoder=decoder,
        wavtokenizer=wt,
        untrained=False,
        description=f"published weights: {decoder_path.name}, {wt_path.name}, {text_model}",
    )
    return bundle.to(device, precision, vocoder_precision)


def tiny_gpt_config(codebook_dim: int, vocab_size: int, text_dim: int = 32) -> GPTConfig:
    return GPTConfig(
        n_layer=2,
        n_head=4,
        n_embd=text_dim + codebook_dim,
        block_size=2048,
        bias=False,
        vocab_size=vocab_size,
    )


def random_decoder(cfg: GPTConfig, seed: int, lm_head_std: float = 1.0) -> LLMVoXDecoder:
    """nanoGPT's initialisation, except a wider output layer: its logits spread like a trained
    model's (std ~ sqrt(n_embd)), so greedy choices are far from ties and decoding reproduces
    exactly whatever the batch it runs in."""
    generator = torch.Generator().manual_seed(seed)
    model = LLMVoXDecoder(cfg)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            elif param.dim() == 1:  # LayerNorm gains
                param.fill_(1.0)
            else:
                std = lm_head_std if name == "lm_head.weight" else 0.02
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model.eval()


def tiny_wavtokenizer_config() -> WavTokenizerConfig:
    # The real speech vocabulary (4096 codes), so EOA (453) and every code id stay meaningful.
    return WavTokenizerConfig.tiny().replace(vq_bins=4096)


@functools.lru_cache(maxsize=4)
def _tiny_wavtokenizer_state(seed: int) -> dict[str, torch.Tensor]:
    # Fitting the codebook takes about a second; tests build the tiny profile many times.
    cfg = tiny_wavtokenizer_config()
    wt = WavTokenizer(cfg)
    wt.load_state_dict(random_wavtokenizer_state_dict(cfg, seed=seed))
    fit_codebook_to_speech(wt, seed=seed)
    return {k: v.clone() for k, v in wt.state_dict().items()}


def tiny_wavtokenizer(seed: int = 0) -> WavTokenizer:
    """The tiny profile's WavTokenizer: random weights, codebook fitted to its encoder."""
    wt = WavTokenizer(tiny_wavtokenizer_config())
    wt.load_state_dict(_tiny_wavtokenizer_state(seed))
    return wt.eval()


def build_tiny(
    seed: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    vocoder_precision: str = "fp32",
) -> ModelBundle:
    """Random-weight models of the published structure, small enough for tests and demos."""
    log.warning(UNTRAINED_WARNING)
    wt = tiny_wavtokenizer(seed)
    wt_cfg = wt.config
    text_dim = 32
    generator = torch.Generator().manual_seed(seed + 1)
    table = resize_with_mean_rows(torch.randn(384, text_dim, generator=generator))
    decoder = random_decoder(tiny_gpt_config(wt_cfg.codebook_dim, 4096, text_dim), seed + 2)
    check_compatible(table, decoder, wt)
    bundle = ModelBundle(
        tokenizer=ByT5Tokenizer(),
        text_table=table,
        decoder=decoder,
        wavtokenizer=wt,
        untrained=True,
        description=UNTRAINED_WARNING,
    )
    return bundle.to(device, precision, vocoder_precision)
