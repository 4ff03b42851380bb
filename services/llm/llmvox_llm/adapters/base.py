"""What every adapter gives the engine: a loaded model and tokenizer, and `prepare`, which turns
a checked conversation into the tensors `generate` takes."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from ..loading import ModelSource, load_kwargs, resolve_device, resolve_dtype
from ..requests import ChatMessage


@dataclass(frozen=True)
class LoadOptions:
    source: ModelSource
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False


@dataclass
class PreparedPrompt:
    inputs: dict[str, torch.Tensor]  # generate() keyword arguments, on the model's device
    prompt_tokens: int


class ChatAdapter(ABC):
    """One kind of model behind the Generate RPC. `load` runs once (on a worker thread, before
    SERVING); `prepare` runs per request on a worker thread, never on the event loop."""

    chat_type: str = "text"
    takes_images: bool = False
    takes_audio: bool = False
    # Whether calls may share decode steps (continuous batching): needs prompts that are plain
    # token ids and no per-call state on the model (Qwen-VL keeps its rotary offsets there).
    supports_batching: bool = False

    def __init__(self, options: LoadOptions) -> None:
        self.options = options
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype, self.device)
        self.model: Any = None
        self.tokenizer: Any = None  # decodes generated ids
        # A fast tokenizer's Rust backend refuses concurrent use from two threads ("Already
        # borrowed": each call reconfigures truncation/padding on the shared object), and
        # prepare() runs on the default thread pool for any number of calls at once.
        self._prepare_lock = threading.Lock()

    def model_kwargs(self) -> dict[str, Any]:
        return {
            **load_kwargs(self.device, self.dtype, self.options.trust_remote_code),
            # Straight onto the device: no full CPU copy of a large model first.
            "device_map": str(self.device),
        }

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def prepare(self, messages: tuple[ChatMessage, ...]) -> PreparedPrompt: ...

    def prepare_exclusive(self, messages: tuple[ChatMessage, ...]) -> PreparedPrompt:
        """`prepare`, one call at a time (the engine decodes with its own tokenizer copy)."""
        with self._prepare_lock:
            return self.prepare(messages)

    def to_device(self, encoded: Any) -> PreparedPrompt:
        inputs = {
            name: value.to(self.device) if isinstance(value, torch.Tensor) else value
            for name, value in dict(encoded).items()
        }
        # Image features follow the model's dtype; ids and masks stay integer.
        for name, value in inputs.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                inputs[name] = value.to(self.dtype)
        return PreparedPrompt(inputs=inputs, prompt_tokens=int(inputs["input_ids"].shape[-1]))
