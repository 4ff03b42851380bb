"""From a `GenerateRequest` to checked, model-independent values: the conversation (with the
default system prompt) and the resolved sampling parameters. Pure functions: no model, no I/O, so
every INVALID_ARGUMENT rule is tested without a server."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from llmvox_common._proto.llmvox.llm.v1 import llm_pb2
from llmvox_common.grpc_service import InvalidArgument

Role = Literal["system", "user", "assistant"]

_ROLES: dict[int, Role] = {
    llm_pb2.ROLE_UNSPECIFIED: "user",
    llm_pb2.ROLE_SYSTEM: "system",
    llm_pb2.ROLE_USER: "user",
    llm_pb2.ROLE_ASSISTANT: "assistant",
}

# Stop strings are matched against every decoded delta: a bound keeps that cheap.
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256


@dataclass(frozen=True)
class AudioClip:
    """Undecoded audio: a WAV file, or raw PCM16 LE mono when `sample_rate_hz` is set."""

    data: bytes
    sample_rate_hz: int = 0


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    text: str
    images: tuple[bytes, ...] = ()
    audios: tuple[AudioClip, ...] = ()
    index: int = -1  # position in the request, for error messages; -1: added by the server


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class RequestPolicy:
    """What the server accepts: its defaults and limits, and the media its model takes."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    system_prompt: str
    takes_images: bool = False
    takes_audio: bool = False
    chat_type: str = "text"


@dataclass(frozen=True)
class ParsedRequest:
    messages: tuple[ChatMessage, ...]
    sampling: Sampling


def parse_request(request: llm_pb2.GenerateRequest, policy: RequestPolicy) -> ParsedRequest:
    """Check a request against the server's policy; raise InvalidArgument naming the field."""
    messages = convert_messages(request.messages, policy)
    sampling = resolve_sampling(request.sampling if request.HasField("sampling") else None, policy)
    return ParsedRequest(messages=messages, sampling=sampling)


def convert_messages(
    messages: Any,  # a repeated field of llm_pb2.Message
    policy: RequestPolicy,
) -> tuple[ChatMessage, ...]:
    if len(messages) == 0:
        raise InvalidArgument("messages: at least one message is required")
    converted: list[ChatMessage] = []
    for index, message in enumerate(messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise InvalidArgument(f"messages[{index}].role: unknown role {message.role}")
        if message.images and not policy.takes_images:
            raise InvalidArgument(
                f"messages[{index}].images: the loaded model (chat type {policy.chat_type}) "
                "takes no images"
            )
        if message.audios and not policy.takes_audio:
            raise InvalidArgument(
                f"messages[{index}].audios: the loaded model (chat type {policy.chat_type}) "
                "takes no audio"
            )
        for image_index, image in enumerate(message.images):
            if not image.data:
                raise InvalidArgument(f"messages[{index}].images[{image_index}]: no image bytes")
        for audio_index, audio in enumerate(message.audios):
            if not audio.data:
                raise InvalidArgument(f"messages[{index}].audios[{audio_index}]: no audio bytes")
            if audio.sample_rate_hz < 0:
                raise InvalidArgument(
                    f"messages[{index}].audios[{audio_index}].sample_rate_hz: must not be negative"
                )
        if role == "system" and (message.images or message.audios):
            raise InvalidArgument(f"messages[{index}]: a system message carries text only")
        # A message with neither text nor media gives the model nothing; chat templates also
        # render empty turns inconsistently, so it is dropped rather than passed on.
        if not message.text.strip() and not message.images and not message.audios:
            continue
        converted.append(
            ChatMessage(
                role=role,
                text=message.text,
                images=tuple(image.data for image in message.images),
                audios=tuple(AudioClip(a.data, a.sample_rate_hz) for a in message.audios),
                index=index,
            )
        )
    if not any(m.role != "system" for m in converted):
        raise InvalidArgument("messages: the conversation is empty (no user or assistant text)")
    return with_system_prompt(tuple(converted), policy.system_prompt)


def with_system_prompt(
    messages: tuple[ChatMessage, ...], system_prompt: str
) -> tuple[ChatMessage, ...]:
    """Put the server's default system prompt first when the conversation brings none."""
    if not system_prompt or any(m.role == "system" for m in messages):
        return messages
    return (ChatMessage(role="system", text=system_prompt), *messages)


def resolve_sampling(params: llm_pb2.SamplingParams | None, policy: RequestPolicy) -> Sampling:
    def given(name: str) -> bool:
        return params is not None and params.HasField(name)

    temperature = params.temperature if params is not None and given("temperature") else None
    top_p = params.top_p if params is not None and given("top_p") else None
    top_k = params.top_k if params is not None and given("top_k") else None
    max_tokens = params.max_tokens if params is not None and given("max_tokens") else None
    seed = params.seed if params is not None and given("seed") else None
    stop = tuple(params.stop) if params is not None else ()

    if temperature is not None and not (math.isfinite(temperature) and temperature >= 0.0):
        raise InvalidArgument(f"sampling.temperature: must be >= 0 (0 = greedy), got {temperature}")
    if top_p is not None and not (math.isfinite(top_p) and 0.0 < top_p <= 1.0):
        raise InvalidArgument(f"sampling.top_p: must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 0:
        raise InvalidArgument(f"sampling.top_k: must be >= 0 (0 = off), got {top_k}")
    if max_tokens is not None and max_tokens < 1:
        raise InvalidArgument(f"sampling.max_tokens: must be at least 1, got {max_tokens}")
    if max_tokens is not None and max_tokens > policy.max_tokens:
        raise InvalidArgument(
            f"sampling.max_tokens: {max_tokens} is above this server's limit of {policy.max_tokens}"
        )
    if len(stop) > MAX_STOP_STRINGS:
        raise InvalidArgument(f"sampling.stop: at most {MAX_STOP_STRINGS} stop strings")
    for index, text in enumerate(stop):
        if not text:
            raise InvalidArgument(f"sampling.stop[{index}]: must not be empty")
        if len(text) > MAX_STOP_CHARS:
            raise InvalidArgument(f"sampling.stop[{index}]: longer than {MAX_STOP_CHARS} chars")

    return Sampling(
        temperature=policy.temperature if temperature is None else float(temperature),
        top_p=policy.top_p if top_p is None else float(top_p),
        top_k=policy.top_k if top_k is None else int(top_k),
        max_tokens=policy.max_tokens if max_tokens is None else int(max_tokens),
        stop=stop,
        seed=seed,
    )


def to_template_messages(
    messages: tuple[ChatMessage, ...], *, structured: bool
) -> list[dict[str, Any]]:
    """Messages in the shape `apply_chat_template` takes. Text-only templates want a string
    `content`; multimodal ones want a list of typed parts whose image/audio placeholders their
    processor expands (media first, then the text, as the model cards show)."""
    if not structured:
        return [{"role": m.role, "content": m.text} for m in messages]
    rendered: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            # Some multimodal templates (LLaVA's) only take a list; all take a text part.
            rendered.append({"role": "system", "content": [{"type": "text", "text": m.text}]})
            continue
        parts: list[dict[str, Any]] = [{"type": "image"} for _ in m.images]
        parts += [{"type": "audio"} for _ in m.audios]
        if m.text:
            parts.append({"type": "text", "text": m.text})
        rendered.append({"role": m.role, "content": parts})
    return rendered
