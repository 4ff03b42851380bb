"""Model adapters behind the one Generate RPC; `--chat_type` picks one."""

from __future__ import annotations

from .base import ChatAdapter, LoadOptions, PreparedPrompt
from .multimodal import MultimodalAdapter
from .text import TextAdapter
from .vision import VisionLanguageAdapter

ADAPTERS: dict[str, type[ChatAdapter]] = {
    "text": TextAdapter,
    "visual_speech": VisionLanguageAdapter,
    "multimodal": MultimodalAdapter,
}


def build_adapter(chat_type: str, options: LoadOptions) -> ChatAdapter:
    return ADAPTERS[chat_type](options)


__all__ = ["ADAPTERS", "ChatAdapter", "LoadOptions", "PreparedPrompt", "build_adapter"]
