"""WavTokenizer codec (docs/wavtokenizer.md): codes <-> 24 kHz waveform."""

from .config import WavTokenizerCheckpointError, WavTokenizerConfig, normalize_weight_norm_keys
from .istft import istft_same
from .model import WavTokenizer
from .random_init import random_wavtokenizer_state_dict

__all__ = [
    "WavTokenizer",
    "WavTokenizerCheckpointError",
    "WavTokenizerConfig",
    "istft_same",
    "normalize_weight_norm_keys",
    "random_wavtokenizer_state_dict",
]
