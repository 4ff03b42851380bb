"""Fixed numbers of LLMVoX and WavTokenizer (docs/checkpoints.md, "Fixed numbers").

Model sizes are not here on purpose: they are read from each checkpoint.
"""

# Shared with the gateway and the pool, so defined in llmvox_common (stdlib only: the model
# modules that import this file stay torch + standard library).
from llmvox_common import constants as _shared
from llmvox_common.constants import HOP_LENGTH, SAMPLE_RATE, TOKENS_PER_SECOND

EOA_TOKEN_ID = 453  # end of audio: an ordinary codebook index reused as the stop token
TEXT_PAD_ID = 384  # "[PAD]", fed once a sentence's text is used up
TEXT_EOS_ID = 385  # "EOS", appended to the last text chunk of a sentence
BYT5_EOS_ID = 1  # "</s>", appended by the ByT5 tokenizer to every call
BYT5_VOCAB_SIZE = 384  # 256 bytes + 3 specials + 125 extra ids
TEXT_VOCAB_SIZE = 386  # after "[PAD]" and "EOS" were added
LOSS_IGNORE_INDEX = -1000

# Upstream server defaults (configs/inference_config.py), under the upstream names.
DEFAULT_INITIAL_DUMP_SIZE_1 = _shared.DEFAULT_FIRST_CHUNK
DEFAULT_INITIAL_DUMP_SIZE_2 = _shared.DEFAULT_LATER_FIRST_CHUNK
DEFAULT_MAX_DUMP_SIZE = _shared.DEFAULT_MAX_CHUNK
DEFAULT_MAX_AUDIO_LENGTH = 8000
DEFAULT_EOS_TOKEN = "<|eot_id|>"

__all__ = [
    "BYT5_EOS_ID",
    "BYT5_VOCAB_SIZE",
    "DEFAULT_EOS_TOKEN",
    "DEFAULT_INITIAL_DUMP_SIZE_1",
    "DEFAULT_INITIAL_DUMP_SIZE_2",
    "DEFAULT_MAX_AUDIO_LENGTH",
    "DEFAULT_MAX_DUMP_SIZE",
    "EOA_TOKEN_ID",
    "HOP_LENGTH",
    "LOSS_IGNORE_INDEX",
    "SAMPLE_RATE",
    "TEXT_EOS_ID",
    "TEXT_PAD_ID",
    "TEXT_VOCAB_SIZE",
    "TOKENS_PER_SECOND",
]
