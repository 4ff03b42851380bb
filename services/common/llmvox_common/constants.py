"""Numbers and names every service shares, defined here once (stdlib only, so any package, the
model code included, may import it).

Audio: WavTokenizer speaks 24 kHz mono, one speech token per 320 samples (75 tokens a second).
Chunk schedule: the first audio part of an answer holds 10 tokens, the first part of each later
sentence 160 (it plays while earlier ones do), and parts grow ×3 up to 1280 (docs/streaming.md).
Redis: the keys of the contract between the gateway and the TTS pool (docs/redis-contract.md).
"""

from __future__ import annotations

SAMPLE_RATE = 24_000
HOP_LENGTH = 320  # samples per speech token
TOKENS_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 75

DEFAULT_FIRST_CHUNK = 10  # upstream `initial_dump_size_1`
DEFAULT_LATER_FIRST_CHUNK = 160  # upstream `initial_dump_size_2`
DEFAULT_MAX_CHUNK = 1280  # upstream `max_dump_size`

JOBS_STREAM = "llmvox:tts:jobs"
CONSUMER_GROUP = "tts"
DEAD_LETTER_STREAM = "llmvox:tts:dead"
WORKERS_KEY_PREFIX = "llmvox:tts:worker:"  # + replica name: its heartbeat
AUDIO_KEY_PREFIX = "llmvox:audio:"  # + session
TEXT_KEY_PREFIX = "llmvox:text:"  # + session:seq
CANCEL_KEY_PREFIX = "llmvox:cancel:"  # + session
