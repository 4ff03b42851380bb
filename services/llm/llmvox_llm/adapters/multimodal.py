"""Multimodal chat (`--chat_type multimodal`): LLaVA-style image + text models, and models whose
processor also takes audio (Phi-4-multimodal style image + audio + text). What the loaded
processor has decides which media a request may carry."""

from __future__ import annotations

from typing import Any

from .processor import ProcessorAdapter


class MultimodalAdapter(ProcessorAdapter):
    chat_type = "multimodal"
    model_classes = (
        "AutoModelForMultimodalLM",
        "AutoModelForImageTextToText",
        "AutoModelForVision2Seq",
        "AutoModelForCausalLM",
    )

    def load_builder(self) -> Any:
        builder = super().load_builder()
        self.takes_images = builder.takes_images
        self.takes_audio = builder.audio_rate is not None
        return builder
