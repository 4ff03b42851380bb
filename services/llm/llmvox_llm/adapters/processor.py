"""Shared by the vision-language and multimodal adapters: a processor renders the chat template
with image/audio placeholders, expands them to the model's token counts and computes the media
features; the adapter only decodes the request's media and hands everything to it."""

from __future__ import annotations

from typing import Any

import numpy as np
import transformers
from PIL import Image
from transformers import AutoProcessor

from ..loading import load_model
from ..media import decode_audio, decode_image, resample
from ..requests import ChatMessage, to_template_messages
from .base import ChatAdapter, PreparedPrompt


def available_auto_classes(*names: str) -> list[Any]:
    """The auto classes this transformers version has, in order (AutoModelForMultimodalLM is
    5.x only; AutoModelForVision2Seq is its 4.x predecessor)."""
    return [getattr(transformers, name) for name in names if hasattr(transformers, name)]


class ProcessorPromptBuilder:
    """Prompt building by the model's own `AutoProcessor`."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.audio_component = getattr(processor, "audio_processor", None) or getattr(
            processor, "feature_extractor", None
        )

    @property
    def takes_images(self) -> bool:
        return getattr(self.processor, "image_processor", None) is not None

    @property
    def audio_rate(self) -> int | None:
        rate = getattr(self.audio_component, "sampling_rate", None)
        return int(rate) if rate else None

    def render(self, messages: list[dict[str, Any]]) -> str:
        return str(
            self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        )

    def encode(self, text: str, images: list[Image.Image], audios: list[np.ndarray]) -> Any:
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if images:
            kwargs["images"] = images
        if audios:
            kwargs["audio"] = audios
            # Feature extractors check it against their own rate (the audio was resampled).
            kwargs["sampling_rate"] = self.audio_rate
        return self.processor(**kwargs)


class ProcessorAdapter(ChatAdapter):
    model_classes: tuple[str, ...] = (
        "AutoModelForImageTextToText",
        "AutoModelForVision2Seq",
        "AutoModelForCausalLM",
    )

    def load(self) -> None:
        source = self.options.source
        if source.gguf_file:
            raise ValueError("GGUF files load only with --chat_type text")
        self.model = load_model(
            available_auto_classes(*self.model_classes), source, self.model_kwargs()
        ).eval()
        self.builder = self.load_builder()
        self.tokenizer = self.builder.tokenizer

    def load_builder(self) -> Any:
        processor = AutoProcessor.from_pretrained(
            self.options.source.path, trust_remote_code=self.options.trust_remote_code
        )
        return ProcessorPromptBuilder(processor)

    def prepare(self, messages: tuple[ChatMessage, ...]) -> PreparedPrompt:
        images = [
            decode_image(data, f"messages[{m.index}].images[{j}]")
            for m in messages
            for j, data in enumerate(m.images)
        ]
        audios = [
            self._audio(clip, f"messages[{m.index}].audios[{j}]")
            for m in messages
            for j, clip in enumerate(m.audios)
        ]
        text = self.builder.render(to_template_messages(messages, structured=True))
        return self.to_device(self.builder.encode(text, images, audios))

    def _audio(self, clip: Any, where: str) -> np.ndarray:
        samples, rate = decode_audio(clip, where)
        target = self.builder.audio_rate
        return resample(samples, rate, target) if target else samples
