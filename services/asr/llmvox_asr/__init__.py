"""LLMVoX speech-to-text service (faster-whisper over gRPC). Built in a later issue."""
