"""The gateway's HTTP endpoints against the real stack (tests/e2e/stack.py: real ASR, LLM and two
TTS replicas running the tiny profile — **untrained random weights, the audio is noise**, so
these tests check the transport: formats, order, completion, errors; not what the audio says).
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openai
import pytest
import requests

from .stack import Stack

pytestmark = pytest.mark.integration

QUESTION = "What is the capital of France?"


def speak_wav(espeak: str, text: str, path: Path) -> Path:
    subprocess.run([espeak, "-w", str(path), text], check=True, capture_output=True)
    return path


def upstream_client(url: str, payload: dict[str, object]) -> np.ndarray:
    """What the original project's example client does: stream the POST, decode float32."""
    pieces: list[np.ndarray] = []
    with requests.post(url, json=payload, stream=True, timeout=300) as response:
        response.raise_for_status()
        assert response.headers["content-type"] == "application/octet-stream"
        pending = b""
        for chunk in response.iter_content(chunk_size=4096):
            pending += chunk
            usable = len(pending) - len(pending) % 4
            pieces.append(np.frombuffer(pending[:usable], dtype=np.float32))
            pending = pending[usable:]
        assert pending == b"", "the stream ended inside a float32 sample"
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def error_of(response: requests.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"], body
    return body["error"]


# -- the original server's endpoints -------------------------------------------------------------


def test_upstream_client_gets_the_llm_answer_as_float32_pcm_and_the_stream_closes(
    stack: Stack,
) -> None:
    audio = upstream_client(f"{stack.base_url}/tts", {"text": QUESTION})
    assert audio.size > 24_000 // 10, "expected some audio"
    assert np.isfinite(audio).all()
    assert np.abs(audio).max() <= 1.5


def test_tts_verbatim_speaks_each_sentence(stack: Stack) -> None:
    one = upstream_client(f"{stack.base_url}/tts", {"text": "Hello there.", "verbatim": True})
    two = upstream_client(
        f"{stack.base_url}/tts", {"text": "Hello there. Hello there.", "verbatim": True}
    )
    assert one.size > 0
    # Greedy decoding: the same sentence gives the same audio, so two sentences give it twice.
    assert two.size == 2 * one.size
    np.testing.assert_array_equal(two[: one.size], one)


def test_voicechat_transcribes_answers_and_speaks(
    stack: Stack, espeak_bin: str, tmp_path: Path
) -> None:
    wav = speak_wav(espeak_bin, QUESTION, tmp_path / "question.wav")
    payload = {
        "audio_base64": base64.b64encode(wav.read_bytes()).decode(),
        "source_language": "en",
        "target_language": "en",
    }
    audio = upstream_client(f"{stack.base_url}/voicechat", payload)
    assert audio.size > 0


def test_vision_endpoints_need_a_vision_chat_type(
    stack: Stack, espeak_bin: str, tmp_path: Path
) -> None:
    wav = speak_wav(espeak_bin, "What is in this picture?", tmp_path / "q.wav")
    audio_b64 = base64.b64encode(wav.read_bytes()).decode()
    image_b64 = base64.b64encode(_png()).decode()
    # The stack's gateway serves chat_type=voice: refused before any ASR work.
    vlm = requests.post(
        f"{stack.base_url}/vlmschat",
        json={"audio_base64": audio_b64, "image_base64": image_b64},
        timeout=60,
    )
    assert vlm.status_code == 422, vlm.text
    assert error_of(vlm)["code"] == "unsupported_chat_type"
    multi = requests.post(
        f"{stack.base_url}/multimodalchat",
        json={"audio_base64": audio_b64, "image_list": [image_b64]},
        timeout=60,
    )
    assert multi.status_code == 422, multi.text
    assert "multimodal" in str(error_of(multi)["message"])
    # Told the LLM takes images when it does not (SmolLM2 is text-only): the LLM service's
    # INVALID_ARGUMENT comes back as a 422 naming it, after the ASR ran.
    gateway, url = stack.start_gateway("gateway-vision", "--chat_type", "visual_speech")
    try:
        vlm = requests.post(
            f"{url}/vlmschat",
            json={"audio_base64": audio_b64, "image_base64": image_b64},
            timeout=300,
        )
        assert vlm.status_code == 422, vlm.text
        assert str(error_of(vlm)["message"]).startswith("llm:")
    finally:
        stack.stop(gateway)


def test_redis_down_is_a_503_not_a_crash(stack: Stack) -> None:
    gateway, url = stack.start_gateway(
        "gateway-no-redis", "--redis_url", "redis://127.0.0.1:1/0", ready=False
    )
    try:
        ready = requests.get(f"{url}/readyz", timeout=30)
        assert ready.status_code == 503
        assert str(ready.json()["checks"]["redis"]).startswith("error")
        spoken = requests.post(f"{url}/tts", json={"text": "Hi.", "verbatim": True}, timeout=60)
        assert spoken.status_code == 503, spoken.text
        assert "Redis" in str(error_of(spoken)["message"])
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        stack.stop(gateway)


# -- OpenAI-compatible speech --------------------------------------------------------------------


def test_openai_client_streams_pcm_and_wav(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused")
    with client.audio.speech.with_streaming_response.create(
        model="llmvox", voice="default", input="Good morning.", response_format="pcm"
    ) as response:
        pcm = b"".join(response.iter_bytes())
    assert len(pcm) > 0
    assert len(pcm) % 2 == 0
    with client.audio.speech.with_streaming_response.create(
        model="llmvox", voice="default", input="Good morning.", response_format="wav"
    ) as response:
        assert response.headers["content-type"] == "audio/wav"
        wav_bytes = b"".join(response.iter_bytes())
    assert wav_bytes[:4] == b"RIFF"
    assert wav_bytes[8:16] == b"WAVEfmt "
    with wave.open(io.BytesIO(wav_bytes[:44] + b"\0\0"), "rb") as header:
        shape = (header.getframerate(), header.getnchannels(), header.getsampwidth())
    assert shape == (24000, 1, 2)
    # The same text, the same greedy audio: the WAV carries exactly the PCM stream's samples.
    assert wav_bytes[44:] == pcm


def test_openai_client_sees_unsupported_format_as_a_bad_request(stack: Stack) -> None:
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused")
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        client.audio.speech.create(
            model="llmvox", voice="default", input="Hi.", response_format="m4a"
        )
    assert "response_format" in str(caught.value)


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "payload", "status", "needle"),
    [
        ("/tts", "{not json", 400, "JSON"),
        ("/tts", {}, 422, "text"),
        ("/tts", {"text": ""}, 422, "text"),
        ("/tts", {"text": "x" * 5000}, 413, "4000"),
        ("/voicechat", {"audio_base64": "@@@"}, 422, "base64"),
        ("/voicechat", {"audio_base64": base64.b64encode(b"not a wav").decode()}, 422, "WAV"),
        ("/vlmschat", {"audio_base64": "AAAA", "image_base64": "AAAA"}, 422, "WAV"),
        ("/v1/audio/speech", {"input": "Hi.", "speed": 5.0}, 422, "speed"),
        ("/v1/audio/speech", {"voice": "x"}, 422, "input"),
    ],
)
def test_bad_requests_get_a_clear_json_error(
    stack: Stack, path: str, payload: object, status: int, needle: str
) -> None:
    if isinstance(payload, str):
        response = requests.post(
            f"{stack.base_url}{path}",
            data=payload,
            headers={"content-type": "application/json"},
            timeout=30,
        )
    else:
        response = requests.post(f"{stack.base_url}{path}", json=payload, timeout=30)
    assert response.status_code == status, response.text
    assert needle.lower() in str(error_of(response)["message"]).lower()


def test_audio_and_image_limits(stack: Stack) -> None:
    long_wav = _wav(np.zeros(16_000 * 61, dtype=np.int16), 16_000)
    response = requests.post(
        f"{stack.base_url}/voicechat",
        json={"audio_base64": base64.b64encode(long_wav).decode()},
        timeout=30,
    )
    assert response.status_code == 413, response.text
    assert "60" in str(error_of(response)["message"])
    big_image = b"\x89PNG\r\n\x1a\n" + b"\0" * 10_000_001
    response = requests.post(
        f"{stack.base_url}/vlmschat",
        json={
            "audio_base64": base64.b64encode(_wav(np.zeros(1600, np.int16), 16_000)).decode(),
            "image_base64": base64.b64encode(big_image).decode(),
        },
        timeout=30,
    )
    assert response.status_code == 413, response.text
    not_an_image = base64.b64encode(b"GIF00 nothing").decode()
    response = requests.post(
        f"{stack.base_url}/multimodalchat",
        json={
            "audio_base64": base64.b64encode(_wav(np.zeros(1600, np.int16), 16_000)).decode(),
            "image_list": [not_an_image],
        },
        timeout=30,
    )
    assert response.status_code == 422, response.text


def test_session_limit_answers_429_and_api_keys_are_enforced(stack: Stack) -> None:
    gateway, url = stack.start_gateway(
        "gateway-limited",
        "--max_sessions",
        "1",
        "--api_keys",
        "k1,k2",
        "--cors_origins",
        "http://app.example",
    )
    preflight = requests.options(
        f"{url}/tts",
        headers={
            "Origin": "http://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
        timeout=10,
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://app.example"
    other = requests.options(
        f"{url}/tts",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert "access-control-allow-origin" not in other.headers
    try:
        assert (
            requests.post(
                f"{url}/tts", json={"text": "Hi.", "verbatim": True}, timeout=30
            ).status_code
            == 401
        )
        wrong = requests.post(
            f"{url}/tts",
            json={"text": "Hi.", "verbatim": True},
            headers={"Authorization": "Bearer nope"},
            timeout=30,
        )
        assert wrong.status_code == 401
        assert error_of(wrong)["type"] == "unauthorized"
        # Health and metrics stay open for probes and Prometheus.
        assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
        assert requests.get(f"{url}/metrics", timeout=10).status_code == 200

        long_text = " ".join(["This sentence keeps the first session busy."] * 6)
        first = requests.post(
            f"{url}/tts",
            json={"text": long_text, "verbatim": True},
            headers={"Authorization": "Bearer k2"},
            stream=True,
            timeout=300,
        )
        try:
            assert first.status_code == 200
            second = requests.post(
                f"{url}/tts?api_key=k1", json={"text": "Hi.", "verbatim": True}, timeout=30
            )
            assert second.status_code == 429, second.text
            assert "max_sessions" in str(error_of(second)["message"])
        finally:
            first.close()  # the client leaves: its turn is cancelled and the slot freed
        _eventually(
            lambda: "llmvox_sessions_active 0.0" in requests.get(f"{url}/metrics", timeout=10).text,
            "the slot of the disconnected client was not freed",
        )
        again = requests.post(
            f"{url}/tts?api_key=k1", json={"text": "Hi.", "verbatim": True}, timeout=60
        )
        assert again.status_code == 200, again.text
    finally:
        stack.stop(gateway)


def test_metrics_count_requests_and_time_to_first_audio(stack: Stack) -> None:
    upstream_client(f"{stack.base_url}/tts", {"text": "Say one word."})  # through the LLM
    text = requests.get(f"{stack.base_url}/metrics", timeout=10).text
    assert 'llmvox_gateway_requests_total{endpoint="tts",status="200"}' in text
    assert 'llmvox_time_to_first_audio_seconds_count{endpoint="tts"}' in text
    assert "llmvox_gateway_chunks_resequenced_total" in text
    assert "llmvox_llm_first_token_seen_seconds_count 0.0" not in text
    ready = json.loads(requests.get(f"{stack.base_url}/readyz", timeout=10).text)
    assert ready["ready"] is True
    assert ready["checks"]["tts_replicas"] == 2
    assert ready["checks"]["tts_untrained"] is True


# -- helpers -------------------------------------------------------------------------------------


def _wav(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _eventually(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Wait until `condition` holds. It reads another process's state (its /metrics), which
    pushes nothing, so it is polled; the timeout is only there to fail instead of hanging."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} (after {timeout:g} s)"
        time.sleep(0.05)


def test_client_disconnect_cancels_the_llm_call(stack: Stack) -> None:
    before = stack.llm_calls_cancelled()
    with requests.post(
        f"{stack.base_url}/tts",
        json={"text": "Tell me a long story about a brave knight."},
        stream=True,
        timeout=300,
    ) as response:
        assert response.status_code == 200
        next(response.iter_content(chunk_size=1024))  # audio has started: now hang up
    _eventually(lambda: stack.llm_calls_cancelled() >= before + 1, "LLM call not cancelled")


def test_gateway_without_llm_or_asr_still_speaks_verbatim_text(stack: Stack) -> None:
    """LLM-agnostic includes "no LLM service at all": the gateway is ready with only Redis and
    the TTS pool, speaks text it is given, and says clearly what it cannot do."""
    gateway, url = stack.start_gateway("gateway-tts-only", "--llm_addr", "", "--asr_addr", "")
    try:
        checks = requests.get(f"{url}/readyz", timeout=10).json()["checks"]
        assert (checks["llm"], checks["asr"]) == ("not configured", "not configured")
        assert upstream_client(f"{url}/tts", {"text": "Only text.", "verbatim": True}).size > 0
        answer = requests.post(f"{url}/tts", json={"text": "Hello?"}, timeout=30)
        assert answer.status_code == 503
        assert "no LLM service" in str(error_of(answer)["message"])
    finally:
        stack.stop(gateway)
