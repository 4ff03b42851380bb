"""GGUF → safetensors, once: transformers dequantises a GGUF file on every load (tens of seconds
even for a small model); the saved directory reloads in about a second."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from .loading import ModelSource

log = logging.getLogger(__name__)

MARKER = "llmvox-converted.json"


def is_converted(out: Path) -> bool:
    return (out / MARKER).is_file()


def convert_gguf(
    model: str, gguf_file: str | None, out: str | Path, *, force: bool = False
) -> Path:
    """Write `out` (config, safetensors weights, tokenizer, chat template) from a GGUF file;
    an existing conversion is kept unless `force`. The directory appears whole or not at all."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out)
    if is_converted(out) and not force:
        log.info("%s already holds a conversion; keeping it", out)
        return out
    source = ModelSource.resolve(model, gguf_file)
    if not source.gguf_file:
        raise ValueError("no GGUF file: pass --gguf_file, or --model pointing at a .gguf file")
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    lm = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file)
    # The weights are plain floats after loading; the quantizer marker left on the model only
    # makes save_pretrained refuse ("cannot save a quantized model").
    lm.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        lm.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / MARKER).write_text(
            json.dumps({"model": source.path, "gguf_file": source.gguf_file}, indent=2) + "\n"
        )
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("converted %s in %.1f s into %s", source.gguf_file, time.perf_counter() - started, out)
    return out
