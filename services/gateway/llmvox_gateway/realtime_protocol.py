"""The OpenAI Realtime protocol (GA) at `/v1/realtime`, as the `openai` SDK types it
(`openai.types.realtime`): client events are validated with the SDK's own models (the members
of `RealtimeClientEvent`), and every server event is built as an instance of the SDK's server
event model, so a field the SDK does not know, or one it requires and we forgot, fails where it
is made (and in the tests, which validate every frame against `RealtimeServerEvent`).

Our extras live under `llmvox.` (docs/gateway.md): `llmvox.text.append` / `llmvox.text.commit`
from the client (speak text verbatim, for a client that brings its own LLM) and `llmvox.timings`
from the server. Clients that do not know them ignore them, as the SDK does with any type it does
not know.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal, get_args

from openai.types.realtime import RealtimeClientEvent
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from .errors import GatewayError


class _Extra(BaseModel):
    model_config = ConfigDict(extra="ignore")
    event_id: str | None = None


class TextAppend(_Extra):
    type: Literal["llmvox.text.append"]
    text: str


class TextCommit(_Extra):
    type: Literal["llmvox.text.commit"]


class Timings(BaseModel):
    """Seconds from the response's start (turn.TurnTimings)."""

    asr_s: float | None = None
    llm_first_token_s: float | None = None
    first_sentence_s: float | None = None
    first_audio_s: float | None = None
    total_s: float | None = None


class TimingsEvent(BaseModel):
    """`llmvox.timings`, sent after each `response.done`."""

    type: Literal["llmvox.timings"] = "llmvox.timings"
    event_id: str
    response_id: str
    timings: Timings


EXTRA_SERVER_EVENT: TypeAdapter[TimingsEvent] = TypeAdapter(TimingsEvent)

EXTRA_PREFIX = "llmvox."


def _client_event_models() -> dict[str, type[BaseModel]]:
    """The SDK's client event models by `type`: an event is validated by its own model (the
    SDK's union is discriminated for its own parser, not for pydantic)."""
    union = get_args(RealtimeClientEvent)[0]  # Annotated[Union[...], discriminator]
    return {get_args(model.model_fields["type"].annotation)[0]: model for model in get_args(union)}


CLIENT_EVENT_MODELS: dict[str, type[BaseModel]] = {
    **_client_event_models(),
    "llmvox.text.append": TextAppend,
    "llmvox.text.commit": TextCommit,
}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def parse_client_event(text: str) -> tuple[Any, str | None]:
    """The client event (an SDK model, or one of our extras) and its `event_id`; a GatewayError
    (`invalid_request_error`) for anything else."""
    try:
        raw = json.loads(text)
    except ValueError:
        raise GatewayError(400, "invalid_request_error", "not JSON", code="invalid_json") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise GatewayError(400, "invalid_request_error", "an event is an object with a `type`")
    event_id = raw.get("event_id") if isinstance(raw.get("event_id"), str) else None
    kind: str = raw["type"]
    model = CLIENT_EVENT_MODELS.get(kind)
    if model is None:
        raise ClientEventError(f"unknown event type {kind!r}", event_id, code="unknown_event")
    try:
        return model.model_validate(raw), event_id
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ClientEventError(f"invalid {kind}: {where}: {first.get('msg')}", event_id) from None


class ClientEventError(GatewayError):
    """A client event that is not one: the error names the `event_id` it answers."""

    def __init__(self, message: str, event_id: str | None, code: str | None = None) -> None:
        super().__init__(400, "invalid_request_error", message, code=code)
        self.event_id = event_id


def dump(event: BaseModel) -> str:
    """The event as sent: only the fields that were set, so an explicit null (e.g.
    `turn_detection: null`, manual turns) stays and unset optionals stay out."""
    return event.model_dump_json(exclude_unset=True)


def error_body(error: GatewayError, event_id: str | None = None) -> dict[str, Any]:
    """An `error` event's `error` (RealtimeError): type, code, message, and the client event it
    answers."""
    body: dict[str, Any] = {"type": error.kind, "code": error.code, "message": error.message}
    if event_id is not None:
        body["event_id"] = event_id
    return body
