"""LLMVoX speech-to-text service: faster-whisper behind the `llmvox.asr.v1.AsrService` gRPC API."""
