"""The WebSocket's client events (docs/gateway.md), validated once at the edge as pydantic
models discriminated on `type`. Server events are plain dicts built where they are sent."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore")
    event_id: str | None = None


class SessionConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input_sample_rate: int | None = Field(None, ge=8000, le=48000)
    output_audio_format: Literal["pcm16", "float32"] | None = None
    instructions: str | None = None
    language: str | None = None


class SessionUpdate(_Event):
    type: Literal["session.update"]
    session: SessionConfig


class AudioAppend(_Event):
    type: Literal["input_audio_buffer.append"]
    audio: str


class AudioCommit(_Event):
    type: Literal["input_audio_buffer.commit"]


class AudioClear(_Event):
    type: Literal["input_audio_buffer.clear"]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["input_text", "text"]
    text: str


class ConversationItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["message"] = "message"
    role: Literal["user"] = "user"
    content: list[ContentPart] = Field(min_length=1)


class ItemCreate(_Event):
    type: Literal["conversation.item.create"]
    item: ConversationItem


class ResponseOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    instructions: str | None = None


class ResponseCreate(_Event):
    type: Literal["response.create"]
    response: ResponseOptions = Field(default_factory=ResponseOptions)


class ResponseCancel(_Event):
    type: Literal["response.cancel"]


class TextAppend(_Event):
    type: Literal["llmvox.text.append"]
    text: str


class TextCommit(_Event):
    type: Literal["llmvox.text.commit"]


ClientEvent = Annotated[
    SessionUpdate
    | AudioAppend
    | AudioCommit
    | AudioClear
    | ItemCreate
    | ResponseCreate
    | ResponseCancel
    | TextAppend
    | TextCommit,
    Field(discriminator="type"),
]

CLIENT_EVENT = TypeAdapter(ClientEvent)
