"""LLMVoX gateway (FastAPI, WebSocket, upstream HTTP API). Built in a later issue."""
