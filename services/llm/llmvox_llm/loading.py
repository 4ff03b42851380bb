"""Where and how weights load: device, dtype, attention kernel, GGUF files, and the end-of-turn
token ids a model stops on."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# transformers 4.56 renamed `torch_dtype` to `dtype`; 5.x warns about the old name.
_DTYPE_KWARG = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"


@dataclass(frozen=True)
class ModelSource:
    """What `from_pretrained` gets: a hub id or directory, and optionally a GGUF file in it."""

    path: str
    gguf_file: str | None = None

    @classmethod
    def resolve(cls, model: str, gguf_file: str | None) -> ModelSource:
        # `--model some/dir/model.Q4.gguf` is accepted as the directory plus the file.
        if gguf_file is None and model.endswith(".gguf") and Path(model).is_file():
            return cls(str(Path(model).parent), Path(model).name)
        return cls(model, gguf_file)

    def kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return _DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # CPU half-precision matmuls are slow or missing on many CPUs.
    return torch.float32


def attention_implementation(
    device: torch.device, dtype: torch.dtype, flash_attn_installed: bool | None = None
) -> str:
    """FlashAttention-2 where it can run (CUDA, half precision, package importable); else
    PyTorch's scaled-dot-product attention, which every recent architecture supports."""
    if flash_attn_installed is None:
        flash_attn_installed = importlib.util.find_spec("flash_attn") is not None
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and flash_attn_installed:
        return "flash_attention_2"
    return "sdpa"


def load_kwargs(
    device: torch.device, dtype: torch.dtype, trust_remote_code: bool
) -> dict[str, Any]:
    return {
        _DTYPE_KWARG: dtype,
        "attn_implementation": attention_implementation(device, dtype),
        "trust_remote_code": trust_remote_code,
    }


def load_model(auto_classes: Iterable[Any], source: ModelSource, kwargs: dict[str, Any]) -> Any:
    """The first auto class that knows this architecture; models without SDPA support fall back
    to eager attention."""
    errors: list[str] = []
    for auto_class in auto_classes:
        try:
            return _from_pretrained(auto_class, source, kwargs)
        except ValueError as error:
            # "Unrecognized configuration class ... for this kind of AutoModel": try the next.
            if "Unrecognized configuration class" not in str(error):
                raise
            errors.append(f"{auto_class.__name__}: {error}")
    raise ValueError(f"no model class fits {source.path}: " + "; ".join(errors))


def _from_pretrained(auto_class: Any, source: ModelSource, kwargs: dict[str, Any]) -> Any:
    try:
        return auto_class.from_pretrained(source.path, **source.kwargs(), **kwargs)
    except ValueError as error:
        if kwargs.get("attn_implementation") == "sdpa" and "scaled_dot_product" in str(error):
            log.warning("%s does not support SDPA attention; using eager", source.path)
            return auto_class.from_pretrained(
                source.path, **source.kwargs(), **{**kwargs, "attn_implementation": "eager"}
            )
        raise


def eos_token_ids(model: Any, tokenizer: Any, eos_token: str | None) -> tuple[set[int], set[str]]:
    """Token ids that end a turn (the model's generation config, the tokenizer's eos, and the
    configured one) and the configured eos as a string when it is not a single token here."""
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    strings: set[str] = set()
    if eos_token:
        token_ids = tokenizer.encode(eos_token, add_special_tokens=False)
        if len(token_ids) == 1:
            ids.add(int(token_ids[0]))
        else:
            # A marker this vocabulary has no token for can still appear spelled out.
            log.warning(
                "eos token %r is not one token in this vocabulary: matched as text", eos_token
            )
            strings.add(eos_token)
    return ids, strings


def context_length(model: Any) -> int | None:
    config = model.config
    for candidate in (config, getattr(config, "text_config", None)):
        value = getattr(candidate, "max_position_embeddings", None) if candidate else None
        if isinstance(value, int) and value > 0:
            return value
    return None
