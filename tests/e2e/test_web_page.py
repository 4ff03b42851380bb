"""The gateway's web page in a real browser: headless Debian Chromium driven by Playwright against
the whole stack (the `stack` fixture; the TTS runs the untrained tiny profile, so the audio is
noise, but it is real audio through the real pipeline).

The microphone is Chromium's fake capture device playing a WAV file that espeak-ng spoke. The
page exposes its state on `window.llmvox`; the tests wait on that state, never on fixed sleeps.
Screenshots and the page state go to out/test-artifacts/ (`*-failed.*` when a test fails).
"""

from __future__ import annotations

import json
import re
import subprocess
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    WebSocketRoute,
    sync_playwright,
)
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from llmvox_asr.audio_input import resample_to_whisper
from llmvox_common.audio import write_wav
from tests.integration.conftest import ensure_debian_tool

from .stack import Stack

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# OFFLINE_NOTES.md, "Browser tests": without the autoplay flag AudioContext.resume() never
# resolves headless; the fake-device flags stand in for a microphone and its permission prompt.
CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
)

QUESTION = "What is the capital of France?"
WAV_SAMPLE_RATE = 16_000
# Chromium loops the file: the silence after the question keeps the recording (stopped once the
# whole file went out) from catching the start of the next loop.
LEAD_SILENCE_S = 0.3
TAIL_SILENCE_S = 1.5
SHORT_VERBATIM = "Hello from the browser test."
API_KEY = "web-page-test-key"
# Near the gateway's max_text_chars (4000): the tiny TTS profile speaks tens of times faster than
# real time, and the answer must still be in synthesis when the stop button is pressed.
LONG_VERBATIM = " ".join(
    f"This is sentence number {n} of a long answer that nobody wants to hear to the end."
    for n in range(1, 44)
)

# The machine has two cores shared with the rest of the stack: a turn may take 20 to 40 s.
CONNECT_TIMEOUT_MS = 60_000
TURN_TIMEOUT_MS = 180_000
PLAYBACK_TIMEOUT_MS = 120_000

# Conditions on the page state `s` (window.llmvox).
CONNECTED = "s && s.ready && s.connected && s.session !== null"
# The turn's audio has all been played and the player is idle again.
PLAYED_OUT = (
    "s.turns[{index}].samplesPlayed >= s.turns[{index}].samplesReceived"
    " && s.turns[{index}].samplesReceived > 0 && s.playbackState === 'idle'"
)


# ---------------------------------------------------------------------------------------------
# Fixtures: Chromium, the spoken question, a fresh page per test


def ensure_chromium() -> str:
    """/usr/bin/chromium (Debian's), installed when missing; fails with the reason."""
    return ensure_debian_tool("chromium", str(CHROMIUM), "for the web page test")


@dataclass(frozen=True)
class SpokenQuestion:
    path: Path
    seconds: float


@pytest.fixture(scope="module")
def spoken_question(espeak_bin: str, tmp_path_factory: pytest.TempPathFactory) -> SpokenQuestion:
    """QUESTION spoken by espeak-ng (22.05 kHz), as a 16 kHz mono PCM16 WAV padded with silence."""
    folder = tmp_path_factory.mktemp("web-page")
    raw = folder / "question-espeak.wav"
    subprocess.run([espeak_bin, "-w", str(raw), QUESTION], check=True, timeout=60)
    with wave.open(str(raw), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    speech = resample_to_whisper(pcm.astype(np.float32) / 32768.0, rate)
    samples = np.concatenate(
        [
            np.zeros(int(LEAD_SILENCE_S * WAV_SAMPLE_RATE), dtype=np.float32),
            speech,
            np.zeros(int(TAIL_SILENCE_S * WAV_SAMPLE_RATE), dtype=np.float32),
        ]
    )
    path = write_wav(folder / "question.wav", samples, WAV_SAMPLE_RATE)
    return SpokenQuestion(path.resolve(), len(samples) / WAV_SAMPLE_RATE)


@pytest.fixture(scope="module")
def browser(spoken_question: SpokenQuestion) -> Iterator[Browser]:
    executable = ensure_chromium()
    flags = [*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={spoken_question.path}"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=flags)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageUnderTest:
    page: Page
    console_errors: list[str] = field(default_factory=list)
    websocket_urls: list[str] = field(default_factory=list)

    @classmethod
    def watching(cls, page: Page) -> PageUnderTest:
        """The page, with its console errors, page errors and WebSocket URLs recorded."""
        web = cls(page)

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                web.console_errors.append(message.text)

        page.on("console", on_console)
        page.on("pageerror", lambda error: web.console_errors.append(f"page error: {error}"))
        page.on("websocket", lambda socket: web.websocket_urls.append(socket.url))
        return web

    def state(self) -> dict[str, Any]:
        return self.page.evaluate("() => window.llmvox")

    def wait_for(self, condition: str, timeout_ms: int, what: str) -> None:
        """Waits until the JS expression `condition` (over `s`, the page state) is true."""
        try:
            self.page.wait_for_function(
                f"() => {{ const s = window.llmvox; return {condition}; }}", timeout=timeout_ms
            )
        except PlaywrightTimeoutError as error:
            raise AssertionError(f"timed out waiting for {what}: {condition}") from error


OpenPage = Callable[..., PageUnderTest]


@pytest.fixture
def open_page(browser: Browser) -> Iterator[OpenPage]:
    """`open_page(url, prepare=None)`: the URL in a fresh browser context (microphone allowed),
    after `prepare(page)` (routes, listeners); every context is closed after the test."""
    contexts: list[BrowserContext] = []

    def open_url(url: str, prepare: Callable[[Page], None] | None = None) -> PageUnderTest:
        context = browser.new_context(
            permissions=["microphone"], viewport={"width": 1280, "height": 900}
        )
        contexts.append(context)
        web = PageUnderTest.watching(context.new_page())
        if prepare is not None:
            prepare(web.page)
        web.page.goto(url)
        return web

    try:
        yield open_url
    finally:
        for context in contexts:
            context.close()


@pytest.fixture
def web_page(open_page: OpenPage, stack: Stack) -> PageUnderTest:
    web = open_page(f"{stack.base_url}/")
    web.wait_for(CONNECTED, CONNECT_TIMEOUT_MS, "the connection")
    return web


def save_artifacts(web: PageUnderTest, artifacts_dir: Path, name: str) -> dict[str, Any]:
    """A full-page screenshot and the page state (`name`.png, `name`.json); returns the state."""
    web.page.screenshot(path=str(artifacts_dir / f"{name}.png"), full_page=True)
    state = web.state()
    (artifacts_dir / f"{name}.json").write_text(json.dumps(state, indent=2))
    return state


@contextmanager
def artifacts_on_failure(web: PageUnderTest, artifacts_dir: Path, name: str) -> Iterator[None]:
    try:
        yield
    except BaseException:
        with suppress(PlaywrightError):  # a crashed page: the test's own error says more
            save_artifacts(web, artifacts_dir, f"{name}-failed")
        raise


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def turn_ended(index: int) -> str:
    return (
        f"s.turns.length > {index} && !['pending', 'in_progress'].includes(s.turns[{index}].status)"
    )


# ---------------------------------------------------------------------------------------------
# Tests


def test_voice_turn_from_the_microphone(
    web_page: PageUnderTest, artifacts_dir: Path, spoken_question: SpokenQuestion
) -> None:
    web = web_page
    with artifacts_on_failure(web, artifacts_dir, "web-page-voice"):
        # The stack's replicas run the tiny profile: the server says so and the page shows it.
        assert web.state()["ttsUntrained"] is True
        notice = web.page.locator("#untrained")
        assert notice.is_visible()
        assert notice.inner_text().strip() == "TTS model: untrained (tiny profile) — audio is noise"

        web.page.click("#mic")
        web.wait_for("s.capturing", 30_000, "the microphone to start")
        # The whole file once: the question and the silence after it.
        web.wait_for(
            f"s.capturedSeconds >= {spoken_question.seconds:.3f}", 60_000, "the question's audio"
        )
        web.page.click("#mic")  # stop: input_audio_buffer.commit

        web.wait_for(turn_ended(0), TURN_TIMEOUT_MS, "the answer")
        web.wait_for(PLAYED_OUT.format(index=0), PLAYBACK_TIMEOUT_MS, "the answer to play out")
        # The table row is the last thing drawn for a turn: the screenshot shows it all.
        web.page.wait_for_selector("#turns tbody tr[data-status='completed']", timeout=10_000)
        state = save_artifacts(web, artifacts_dir, "web-page-voice")
        turn = state["turns"][0]
        assert turn["kind"] == "voice"
        assert turn["status"] == "completed", turn
        assert {"capital", "france"} <= set(words(state["transcript"])), state["transcript"]
        assert state["transcriptFinal"] is True
        assert turn["input"] == state["transcript"]
        assert state["answer"].strip(), "no answer text"
        assert turn["inputAudioSeconds"] == pytest.approx(state["capturedSeconds"], abs=0.05)
        assert turn["framesReceived"] > 0
        # Every sample received was played, in one go after the pre-roll (underruns are counted,
        # not asserted: this machine is shared with other heavy tests).
        assert turn["samplesPlayed"] == turn["samplesReceived"] > 0
        assert state["samplesPlayed"] > 0
        assert 0 < turn["firstAudioMs"] < TURN_TIMEOUT_MS
        assert turn["timings"]["first_audio_s"] is not None
        assert turn["timings"]["asr_s"] is not None
        assert web.page.locator("#transcript").inner_text().strip() == state["transcript"]
        assert web.page.locator("#answer").inner_text().strip() == state["answer"].strip()
        assert state["errors"] == []
        assert web.console_errors == []


def test_verbatim_text_plays_and_stop_cancels(web_page: PageUnderTest, artifacts_dir: Path) -> None:
    web = web_page
    with artifacts_on_failure(web, artifacts_dir, "web-page-verbatim"):
        web.page.check("#verbatim")
        web.page.fill("#text", SHORT_VERBATIM)
        web.page.click("#send")
        web.wait_for(turn_ended(0), TURN_TIMEOUT_MS, "the verbatim response")
        web.wait_for(PLAYED_OUT.format(index=0), PLAYBACK_TIMEOUT_MS, "the text to play out")
        short = web.state()["turns"][0]
        assert short["kind"] == "verbatim"
        assert short["source"] == "verbatim"
        assert short["status"] == "completed", short
        assert words(short["text"]) == words(SHORT_VERBATIM)
        assert short["firstAudioMs"] is not None
        assert short["samplesPlayed"] == short["samplesReceived"] > 0
        assert len(LONG_VERBATIM) < 4000  # the gateway's default max_text_chars

        web.page.fill("#text", LONG_VERBATIM)
        web.page.click("#send")
        web.wait_for(
            "s.turns.length > 1 && s.turns[1].samplesPlayed > 0",
            TURN_TIMEOUT_MS,
            "the long answer to play",
        )
        web.page.click("#stop")
        web.wait_for(turn_ended(1), TURN_TIMEOUT_MS, "the long answer to end")
        # Stopped: the queued audio is gone at once, whatever the server still had in flight.
        web.wait_for(
            "s.playbackState === 'idle' && s.samplesBuffered === 0",
            10_000,
            "the playback buffer to be flushed",
        )
        state = save_artifacts(web, artifacts_dir, "web-page-verbatim-stop")
        long = state["turns"][1]
        assert long["status"] == "cancelled", long
        assert long["cancelRequested"] is True
        assert long["stopped"] is True
        assert state["errors"] == []
        assert web.console_errors == []


def test_page_passes_its_api_key_to_the_websocket(
    stack: Stack, open_page: OpenPage, artifacts_dir: Path
) -> None:
    web = open_page(f"{stack.base_url}/?api_key={API_KEY}")
    with artifacts_on_failure(web, artifacts_dir, "web-page-api-key"):
        web.wait_for(CONNECTED, CONNECT_TIMEOUT_MS, "the connection")
        ws_url = stack.base_url.replace("http://", "ws://", 1) + f"/v1/ws?api_key={API_KEY}"
        assert web.websocket_urls == [ws_url]


def test_page_stops_retrying_when_refused(
    stack: Stack, open_page: OpenPage, artifacts_dir: Path
) -> None:
    """A WebSocket refused at the door (what the gateway does on a wrong API key: an `error`
    event, then close code 1008) is shown as `refused`, the state in which the page does not
    reconnect. The socket is a named fake here, Playwright's WebSocket route; the page itself
    comes from the stack's gateway."""

    def fake_refusing_gateway(socket: WebSocketRoute) -> None:
        error = {
            "type": "unauthorized",
            "code": "unauthorized",
            "status": 401,
            "message": "missing or invalid API key",
        }
        socket.send(json.dumps({"type": "error", "error": error}))
        socket.close(code=1008, reason="missing or invalid API key")

    web = open_page(
        f"{stack.base_url}/",
        prepare=lambda page: page.route_web_socket(re.compile(r"/v1/ws"), fake_refusing_gateway),
    )
    with artifacts_on_failure(web, artifacts_dir, "web-page-refused"):
        web.wait_for("s && s.connection === 'refused'", CONNECT_TIMEOUT_MS, "the refusal")
        state = web.state()
        assert state["connected"] is False
        errors = state["errors"]
        assert [e["type"] for e in errors] == ["unauthorized", "connection"], errors
        assert errors[1]["code"] == 1008  # the close code: policy
        assert web.page.locator("#connection").inner_text().startswith("refused")
