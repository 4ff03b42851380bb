"""LLMVoX LLM service (transformers streaming over gRPC). Built in a later issue."""
