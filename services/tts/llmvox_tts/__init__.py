"""LLMVoX text-to-speech: model core, streaming synthesis and (later) the replica pool."""
