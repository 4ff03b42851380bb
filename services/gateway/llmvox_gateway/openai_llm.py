"""The LLM as any OpenAI-compatible chat server (vLLM, llama.cpp's server, Ollama, `transformers
serve`, OpenAI itself ...) instead of the built-in gRPC `llmvox-llm` service.

`OpenAiLlm` implements the same `LlmClient` Protocol as the gRPC client (`backends.LlmBackend`),
so a turn cannot tell them apart: `generate` yields the answer's text deltas of one streamed chat
completion (`stream=True`, through the official `openai` async client), and raises a
`GatewayError` when the server refuses or fails. Leaving the loop early (barge-in, the client
gone, the turn's deadline) closes the HTTP response, and with it the connection, which is how an
OpenAI-compatible server learns to stop generating: the protocol has no cancel call.

Mapping of the gateway's conversation:
- the system prompt is the first `system` message, the history the `user`/`assistant` messages;
- images become `image_url` content parts holding `data:` URLs, WAV audio `input_audio` parts
  (format `wav`), both before the text of their message, as the gRPC service orders them;
- `temperature`, `top_p`, `max_tokens` are standard fields; `top_k` is not part of the OpenAI API
  and goes in the request body's extra fields only when set (vLLM, llama.cpp and Ollama accept
  it; strict servers such as `transformers serve` refuse unknown fields with a 400/422, so leave
  `llm_top_k` unset for those). `llm_extra_body` adds any other server-specific field.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import openai

from .backends import ChatMessage, Sampling
from .errors import GatewayError

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_S = 5.0
# The answer is streamed; a server that stays silent this long between two chunks is stuck.
# The whole call is bounded separately by `timeout_s`.
_READ_TIMEOUT_S = 30.0

# The first bytes of the image formats vision servers take, for the data URL's media type.
_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def image_media_type(data: bytes) -> str:
    """The media type of an image from its first bytes; JPEG when unknown (the most common)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for magic, media_type in _IMAGE_MAGIC:
        if data.startswith(magic):
            return media_type
    return "image/jpeg"


def to_openai_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """The conversation as chat-completions messages. A message with media gets a list of
    content parts (media first, then its text); a text-only one keeps a plain string, which
    every server takes (some text-only servers refuse content lists)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if not message.images and not message.audios:
            out.append({"role": message.role, "content": message.text})
            continue
        parts: list[dict[str, Any]] = []
        for image in message.images:
            url = f"data:{image_media_type(image)};base64,{base64.b64encode(image).decode()}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        for audio in message.audios:
            parts.append(
                {
                    "type": "input_audio",
                    "input_audio": {"data": base64.b64encode(audio).decode(), "format": "wav"},
                }
            )
        if message.text:
            parts.append({"type": "text", "text": message.text})
        out.append({"role": message.role, "content": parts})
    return out


def request_options(sampling: Sampling, extra_body: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling fields of a request: only those set (unset = the server's defaults)."""
    options: dict[str, Any] = {}
    if sampling.temperature is not None:
        options["temperature"] = sampling.temperature
    if sampling.top_p is not None:
        options["top_p"] = sampling.top_p
    if sampling.max_tokens is not None:
        options["max_tokens"] = sampling.max_tokens
    extra = dict(extra_body)
    if sampling.top_k is not None:
        extra["top_k"] = sampling.top_k
    if extra:
        options["extra_body"] = extra
    return options


def _server_message(error: openai.APIStatusError) -> str:
    """The server's own explanation: OpenAI's `{"error": {"message"}}`, FastAPI's `{"detail"}`,
    or the raw body, shortened."""
    body = error.body
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            for key in ("message", "detail"):
                if isinstance(inner.get(key), str):
                    return str(inner[key])[:500]
        if isinstance(body.get("detail"), str):
            return str(body["detail"])[:500]
    if isinstance(body, str) and body:
        return body[:500]
    try:
        text = error.response.text
    except Exception:  # a streamed body that is not read: the status says enough
        text = ""
    return (text or error.message)[:500]


def map_error(error: BaseException, *, base_url: str, model: str) -> GatewayError:
    """An error of the OpenAI-compatible server → the gateway's error shape. A refusal of the
    request itself stays a 4xx; trouble of the server or of the gateway's configuration for it
    (credentials, model name) is a 5xx, since the gateway's client cannot fix it."""
    where = f"llm ({base_url})"
    if isinstance(error, openai.APITimeoutError):  # before APIConnectionError: a subclass
        return GatewayError(504, "timeout", f"{where}: no answer in time", code="llm_timeout")
    if isinstance(error, openai.APIConnectionError):
        cause = error.__cause__ or error
        return GatewayError(
            503,
            "unavailable",
            f"{where}: cannot reach the server or the connection broke: {cause}",
            code="llm_unreachable",
        )
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        detail = _server_message(error)
        if status in (401, 403):
            return GatewayError(
                502,
                "backend_error",
                f"{where}: the server refused the gateway's credentials (HTTP {status}; check "
                f"llm_api_key): {detail}",
                code="llm_unauthorized",
            )
        if status == 404:
            return GatewayError(
                502,
                "backend_error",
                f"{where}: model {model!r} not found (HTTP 404; check llm_model): {detail}",
                code="llm_model_not_found",
            )
        if status == 429:
            return GatewayError(
                429, "busy", f"{where}: rate limited (HTTP 429): {detail}", code="llm_rate_limited"
            )
        if status in (400, 413, 422):
            return GatewayError(
                422,
                "invalid_request_error",
                f"{where}: the server refused the request (HTTP {status}): {detail}",
                code="llm_request_refused",
            )
        if status == 503:
            return GatewayError(
                503,
                "unavailable",
                f"{where}: unavailable (HTTP 503): {detail}",
                code="llm_unavailable",
            )
        if status == 504:
            return GatewayError(
                504, "timeout", f"{where}: timed out (HTTP 504): {detail}", code="llm_timeout"
            )
        return GatewayError(
            502,
            "backend_error",
            f"{where}: server error (HTTP {status}): {detail}",
            code="llm_server_error",
        )
    if isinstance(error, openai.APIError):  # an `error` object inside the stream
        return GatewayError(
            502, "backend_error", f"{where}: error in the stream: {error}", code="llm_stream_error"
        )
    # A chunk that is not JSON, or not a chat-completion chunk: the stream cannot be trusted.
    return GatewayError(
        502,
        "backend_error",
        f"{where}: malformed stream ({type(error).__name__}: {error})",
        code="llm_malformed_stream",
    )


def _connection_lost(error: BaseException) -> bool:
    return isinstance(error, openai.APIConnectionError) and not isinstance(
        error, openai.APITimeoutError
    )


class OpenAiLlm:
    """`LlmClient` over an OpenAI-compatible `/v1/chat/completions` endpoint."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        api_key: str = "",
        timeout_s: float = 60.0,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        self.addr = base_url  # what readiness reports
        self._model = model
        self._timeout_s = timeout_s
        self._extra_body = dict(extra_body or {})
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            # The client insists on a key, and would otherwise read OPENAI_API_KEY from the
            # environment and send it to whatever server this is. Local servers ignore it.
            api_key=api_key or "unused",
            timeout=openai.Timeout(
                timeout_s, connect=_CONNECT_TIMEOUT_S, read=min(_READ_TIMEOUT_S, timeout_s)
            ),
            # No retries: a voice turn is better failed at once (the client may ask again)
            # than answered after seconds of backoff.
            max_retries=0,
        )

    async def ready(self, check_s: float = 2.0) -> bool:
        """Whether the server answers `GET /models` (it is up and takes the key)."""
        try:
            await self._client.with_options(timeout=check_s).models.list()
        except openai.OpenAIError:
            return False
        return True

    async def close(self) -> None:
        await self._client.close()

    async def generate(
        self, messages: Sequence[ChatMessage], sampling: Sampling
    ) -> AsyncIterator[str]:
        """The answer's text deltas; leaving the loop early closes the response."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        stream: openai.AsyncStream[Any] | None = None
        try:
            async with asyncio.timeout_at(deadline):
                stream = await self._client.chat.completions.create(
                    model=self._model,
                    # Plain dicts of the API's shape; the SDK's TypedDicts are not built here.
                    messages=to_openai_messages(messages),  # type: ignore[arg-type]
                    stream=True,
                    **request_options(sampling, self._extra_body),
                )
            while True:
                # The deadline covers the waits for the server only, never the consumer's
                # work between two deltas (a timeout spanning a `yield` would cancel the
                # consumer's code instead).
                async with asyncio.timeout_at(deadline):
                    try:
                        chunk = await anext(stream)
                    except StopAsyncIteration:
                        break
                for choice in getattr(chunk, "choices", None) or ():
                    delta = getattr(choice, "delta", None)
                    content = getattr(delta, "content", None)
                    if content is not None and not isinstance(content, str):
                        raise TypeError(f"delta content is {type(content).__name__}, not text")
                    if content:
                        yield content
        except TimeoutError:
            raise GatewayError(
                504,
                "timeout",
                f"llm ({self.addr}): no complete answer within {self._timeout_s:g} s",
                code="llm_timeout",
            ) from None
        except (openai.OpenAIError, ValueError, TypeError) as error:
            if stream is not None and _connection_lost(error):
                # The answer had begun: a dropped connection now is a broken answer (the
                # server crashed or a proxy cut it), not an unreachable server.
                mapped = GatewayError(
                    502,
                    "backend_error",
                    f"llm ({self.addr}): the answer's stream broke off: {error.__cause__ or error}",
                    code="llm_stream_broken",
                )
            else:
                mapped = map_error(error, base_url=self.addr, model=self._model)
            log.warning("%s", mapped.message)
            raise mapped from None
        finally:
            if stream is not None:
                # Closing an unfinished response drops its connection: the server sees the
                # client leave and stops generating.
                await stream.close()
