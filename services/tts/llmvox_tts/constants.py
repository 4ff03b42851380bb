"""Fixed numbers of LLMVoX and WavTokenizer (MODEL_SPEC section 1).

Model sizes are not here on purpose: they are read from each checkpoint.
"""

SAMPLE_RATE = 24_000
HOP_LENGTH = 320  # samples per speech token
TOKENS_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 75

EOA_TOKEN_ID = 453  # end of audio: an ordinary codebook index reused as the stop token
TEXT_PAD_ID = 384  # "[PAD]", fed once a sentence's text is used up
TEXT_EOS_ID = 385  # "EOS", appended to the last text chunk of a sentence
BYT5_EOS_ID = 1  # "</s>", appended by the ByT5 tokenizer to every call
BYT5_VOCAB_SIZE = 384  # 256 bytes + 3 specials + 125 extra ids
TEXT_VOCAB_SIZE = 386  # after "[PAD]" and "EOS" were added
LOSS_IGNORE_INDEX = -1000

# Upstream server defaults (configs/inference_config.py).
DEFAULT_INITIAL_DUMP_SIZE_1 = 10
DEFAULT_INITIAL_DUMP_SIZE_2 = 160
DEFAULT_MAX_DUMP_SIZE = 1280
DEFAULT_MAX_AUDIO_LENGTH = 8000
DEFAULT_EOS_TOKEN = "<|eot_id|>"
