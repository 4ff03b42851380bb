"""LLMVoX LLM service: any Hugging Face causal LM, vision-language or multimodal model, streamed
over gRPC (`llmvox.llm.v1.LlmService`)."""
