"""LLM request checking and message conversion: proto → chat-template messages, the default
system prompt, sampling defaults and every INVALID_ARGUMENT rule. Pure functions, no model."""

from __future__ import annotations

import math

import pytest

from llmvox_common._proto.llmvox.llm.v1 import llm_pb2
from llmvox_common.grpc_service import InvalidArgument
from llmvox_llm.requests import (
    AudioClip,
    ChatMessage,
    RequestPolicy,
    parse_request,
    to_template_messages,
    with_system_prompt,
)
from llmvox_llm.settings import DEFAULT_SYSTEM_PROMPT

pytestmark = pytest.mark.unit

POLICY = RequestPolicy(
    max_tokens=100, temperature=0.7, top_p=0.9, top_k=50, system_prompt="Be brief."
)
VISION = RequestPolicy(
    max_tokens=100,
    temperature=0.7,
    top_p=0.9,
    top_k=50,
    system_prompt="Be brief.",
    takes_images=True,
    chat_type="visual_speech",
)


def req(*messages: llm_pb2.Message, **sampling: object) -> llm_pb2.GenerateRequest:
    request = llm_pb2.GenerateRequest(messages=messages)
    if sampling:
        request.sampling.CopyFrom(llm_pb2.SamplingParams(**sampling))  # type: ignore[arg-type]
    return request


def user(text: str, **kwargs: object) -> llm_pb2.Message:
    return llm_pb2.Message(role=llm_pb2.ROLE_USER, text=text, **kwargs)  # type: ignore[arg-type]


def test_default_system_prompt_goes_first_when_none_is_given() -> None:
    parsed = parse_request(req(user("Hi")), POLICY)
    assert parsed.messages == (
        ChatMessage(role="system", text="Be brief."),
        ChatMessage(role="user", text="Hi", index=0),
    )


def test_a_system_message_of_the_conversation_replaces_the_default() -> None:
    parsed = parse_request(
        req(llm_pb2.Message(role=llm_pb2.ROLE_SYSTEM, text="Talk like a pirate."), user("Hi")),
        POLICY,
    )
    assert [m.role for m in parsed.messages] == ["system", "user"]
    assert parsed.messages[0].text == "Talk like a pirate."


def test_no_default_system_prompt_when_configured_empty() -> None:
    assert with_system_prompt((ChatMessage("user", "Hi"),), "") == (ChatMessage("user", "Hi"),)


def test_the_default_prompt_keeps_the_upstream_meaning() -> None:
    # Upstream: "a friendly voicebot that answers questions in a concise way and do not use
    # abbreviation"; every word of the answer is spoken.
    assert "friendly" in DEFAULT_SYSTEM_PROMPT
    assert "briefly" in DEFAULT_SYSTEM_PROMPT
    assert "abbreviations" in DEFAULT_SYSTEM_PROMPT


def test_roles_map_and_unspecified_means_user() -> None:
    parsed = parse_request(
        req(
            llm_pb2.Message(role=llm_pb2.ROLE_UNSPECIFIED, text="a"),
            llm_pb2.Message(role=llm_pb2.ROLE_ASSISTANT, text="b"),
            user("c"),
        ),
        POLICY,
    )
    assert [m.role for m in parsed.messages] == ["system", "user", "assistant", "user"]
    assert [m.index for m in parsed.messages] == [-1, 0, 1, 2]


def test_blank_messages_are_dropped_but_keep_their_request_index() -> None:
    parsed = parse_request(req(user(""), user("  "), user("Hi")), POLICY)
    assert [(m.text, m.index) for m in parsed.messages] == [("Be brief.", -1), ("Hi", 2)]


def test_text_template_messages_are_plain_strings() -> None:
    messages = (ChatMessage("system", "S"), ChatMessage("user", "Q"))
    assert to_template_messages(messages, structured=False) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q"},
    ]


def test_multimodal_template_messages_put_media_parts_before_the_text() -> None:
    messages = (
        ChatMessage("system", "S"),
        ChatMessage("user", "What?", images=(b"i1", b"i2"), audios=(AudioClip(b"a"),)),
        ChatMessage("assistant", "A cat."),
    )
    assert to_template_messages(messages, structured=True) == [
        {"role": "system", "content": [{"type": "text", "text": "S"}]},
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "image"},
                {"type": "audio"},
                {"type": "text", "text": "What?"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
    ]


def test_an_image_only_message_is_not_empty() -> None:
    image = llm_pb2.Image(data=b"png")
    parsed = parse_request(req(user("", images=[image])), VISION)
    assert parsed.messages[-1].images == (b"png",)
    assert to_template_messages(parsed.messages, structured=True)[-1]["content"] == [
        {"type": "image"}
    ]


def test_sampling_defaults_come_from_the_server() -> None:
    sampling = parse_request(req(user("Hi")), POLICY).sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k) == (0.7, 0.9, 50)
    assert sampling.max_tokens == 100
    assert sampling.stop == ()
    assert sampling.seed is None
    assert not sampling.greedy


def test_given_sampling_values_win_and_zero_temperature_is_greedy() -> None:
    sampling = parse_request(
        req(user("Hi"), temperature=0.0, top_p=1.0, top_k=0, max_tokens=100, stop=["\n"], seed=3),
        POLICY,
    ).sampling
    assert sampling.greedy
    assert (sampling.top_p, sampling.top_k, sampling.max_tokens) == (1.0, 0, 100)
    assert sampling.stop == ("\n",)
    assert sampling.seed == 3


BAD = {
    "no messages": (req(), "at least one message"),
    "only blank messages": (req(user(""), user(" \n")), "conversation is empty"),
    "only a system message": (
        req(llm_pb2.Message(role=llm_pb2.ROLE_SYSTEM, text="S")),
        "conversation is empty",
    ),
    "unknown role": (req(llm_pb2.Message(role=7, text="x")), "messages[0].role"),  # type: ignore[arg-type]
    "negative temperature": (req(user("x"), temperature=-0.1), "sampling.temperature"),
    "NaN temperature": (req(user("x"), temperature=math.nan), "sampling.temperature"),
    "top_p zero": (req(user("x"), top_p=0.0), "sampling.top_p"),
    "top_p above one": (req(user("x"), top_p=1.01), "sampling.top_p"),
    "negative top_k": (req(user("x"), top_k=-1), "sampling.top_k"),
    "zero max_tokens": (req(user("x"), max_tokens=0), "at least 1"),
    "max_tokens above the limit": (req(user("x"), max_tokens=101), "limit of 100"),
    "empty stop string": (req(user("x"), stop=["ok", ""]), "sampling.stop[1]"),
    "too many stop strings": (req(user("x"), stop=[str(i) for i in range(17)]), "at most 16"),
    "long stop string": (req(user("x"), stop=["x" * 257]), "longer than 256"),
    "image to a text model": (
        req(user("x", images=[llm_pb2.Image(data=b"png")])),
        "messages[0].images: the loaded model (chat type text) takes no images",
    ),
    "audio to a text model": (
        req(user("x", audios=[llm_pb2.Audio(data=b"wav")])),
        "takes no audio",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_are_invalid_argument(case: str) -> None:
    bad, message = BAD[case]
    with pytest.raises(InvalidArgument) as caught:
        parse_request(bad, POLICY)
    assert message in caught.value.message


def test_empty_image_bytes_are_invalid_even_for_a_vision_model() -> None:
    with pytest.raises(InvalidArgument, match=r"messages\[0\]\.images\[1\]: no image bytes"):
        parse_request(
            req(user("x", images=[llm_pb2.Image(data=b"a"), llm_pb2.Image(data=b"")])), VISION
        )


def test_media_in_a_system_message_is_invalid() -> None:
    bad = req(
        llm_pb2.Message(role=llm_pb2.ROLE_SYSTEM, text="S", images=[llm_pb2.Image(data=b"a")]),
        user("x"),
    )
    with pytest.raises(InvalidArgument, match="system message carries text only"):
        parse_request(bad, VISION)
