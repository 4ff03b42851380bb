"""Text chat with any causal LM (`--chat_type text`, and the upstream `voice`)."""

from __future__ import annotations

import logging

from transformers import AutoModelForCausalLM, AutoTokenizer

from ..loading import load_model
from ..requests import ChatMessage, to_template_messages
from .base import ChatAdapter, PreparedPrompt

log = logging.getLogger(__name__)

# For base models without a chat template: plain role-labelled turns, ending where the
# assistant speaks next.
_FALLBACK_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: "
    "{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


class TextAdapter(ChatAdapter):
    chat_type = "text"
    supports_batching = True

    def load(self) -> None:
        source = self.options.source
        self.tokenizer = AutoTokenizer.from_pretrained(
            source.path, **source.kwargs(), trust_remote_code=self.options.trust_remote_code
        )
        if not self.tokenizer.chat_template:
            log.warning("%s has no chat template: using plain 'Role: text' turns", source.path)
            self.tokenizer.chat_template = _FALLBACK_TEMPLATE
        self.model = load_model([AutoModelForCausalLM], source, self.model_kwargs()).eval()

    def prepare(self, messages: tuple[ChatMessage, ...]) -> PreparedPrompt:
        encoded = self.tokenizer.apply_chat_template(
            to_template_messages(messages, structured=False),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
        return self.to_device(encoded)
