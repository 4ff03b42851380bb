"""Shared pieces of the LLMVoX platform: settings, audio helpers, wire schemas."""
