"""Vision-language chat (`--chat_type visual_speech`): Qwen2.5-VL / Qwen2-VL style models, one or
more images per turn, through the model's processor.

transformers 5 cannot build a Qwen-VL processor without torchvision (its video processor needs
it, even for images only), and CPU torchvision is not on PyPI for every torch build. Then the
prompt is built from the processor's parts, which need no torchvision: the image processor (PIL
backend), the tokenizer and its chat template, and the placeholder expansion the Qwen processor
does (one `<|image_pad|>` per merged patch)."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer

from .processor import ProcessorAdapter

log = logging.getLogger(__name__)


class QwenVisionPromptBuilder:
    """The Qwen-VL processor's image path, rebuilt from its parts."""

    image_token = "<|image_pad|>"

    def __init__(self, tokenizer: Any, image_processor: Any, model: Any) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if self.image_token_id != model.config.image_token_id:
            raise ValueError(
                f"tokenizer's {self.image_token} is id {self.image_token_id}, the model "
                f"expects {model.config.image_token_id}"
            )
        # transformers 5 computes the multimodal rotary positions from a token-type mask the
        # processor adds; 4.x finds image tokens by id itself and rejects the extra argument.
        self.pass_token_types = "mm_token_type_ids" in inspect.signature(model.forward).parameters

    takes_images = True
    audio_rate = None

    def render(self, messages: list[dict[str, Any]]) -> str:
        return str(
            self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        )

    def encode(self, text: str, images: list[Image.Image], audios: list[np.ndarray]) -> Any:
        features: dict[str, Any] = {}
        pieces = text.split(self.image_token)
        if len(pieces) - 1 != len(images):
            raise ValueError(f"{len(pieces) - 1} image placeholders for {len(images)} images")
        if images:
            features = dict(self.image_processor(images=images, return_tensors="pt"))
            merge = self.image_processor.merge_size**2
            counts = [int(grid.prod()) // merge for grid in features["image_grid_thw"]]
            text = pieces[0] + "".join(
                self.image_token * count + piece
                for count, piece in zip(counts, pieces[1:], strict=True)
            )
        encoded = dict(self.tokenizer([text], return_tensors="pt"))
        if self.pass_token_types:
            # 0 = text, 1 = image (2 = video, unused here).
            encoded["mm_token_type_ids"] = (encoded["input_ids"] == self.image_token_id).to(
                torch.int
            )
        return {**encoded, **features}


class VisionLanguageAdapter(ProcessorAdapter):
    chat_type = "visual_speech"
    takes_images = True

    def load_builder(self) -> Any:
        try:
            return super().load_builder()
        except ImportError as error:
            if not hasattr(self.model.config, "image_token_id"):
                raise
            reason = str(error).strip().splitlines()[0]
            log.warning(
                "processor unavailable (%s); building Qwen-VL prompts from its parts", reason
            )
            path = self.options.source.path
            trust = self.options.trust_remote_code
            return QwenVisionPromptBuilder(
                AutoTokenizer.from_pretrained(path, trust_remote_code=trust),
                AutoImageProcessor.from_pretrained(path, trust_remote_code=trust),
                self.model,
            )
