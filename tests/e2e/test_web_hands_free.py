"""The web page's hands-free mode (web/hands-free.js: /v1/realtime with server_vad) in headless
Chromium against the whole stack. The fake microphone plays a WAV of two espeak-ng questions
with a short silence between them: after the one click that turns hands-free on, the server's
VAD finds both turns, and the second question, spoken while the first answer runs or plays,
interrupts it. Waits are on the page state (`window.llmvox`), never fixed sleeps.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soxr
from playwright.sync_api import Browser, sync_playwright

from llmvox_common.audio import read_wav, write_wav
from llmvox_gateway.vad import RATE

from .stack import Stack
from .test_web_page import (
    CHROMIUM_FLAGS,
    CONNECT_TIMEOUT_MS,
    CONNECTED,
    PLAYBACK_TIMEOUT_MS,
    TURN_TIMEOUT_MS,
    PageUnderTest,
    artifacts_on_failure,
    ensure_chromium,
    save_artifacts,
    words,
)

pytestmark = pytest.mark.integration

FIRST = "What is the capital of France?"
SECOND = "What is the capital of Italy?"
# Long enough for the VAD (500 ms of silence ends a turn), short enough that the second question
# starts while the first answer is still being made or played.
GAP_S = 1.2
# Chromium loops the file: the silence after the second question outlasts its answer.
TAIL_S = 150.0


@pytest.fixture(scope="module")
def two_questions(espeak_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hands-free")
    parts: list[np.ndarray] = [np.zeros(int(0.3 * RATE), dtype=np.float32)]
    for index, text in enumerate((FIRST, SECOND)):
        raw = folder / f"q{index}.wav"
        subprocess.run([espeak_bin, "-w", str(raw), text], check=True, timeout=60)
        samples, rate = read_wav(raw)
        parts.append(soxr.resample(samples, rate, RATE).astype(np.float32))
        parts.append(np.zeros(int((GAP_S if index == 0 else TAIL_S) * RATE), dtype=np.float32))
    return write_wav(folder / "two-questions.wav", np.concatenate(parts), RATE).resolve()


@pytest.fixture(scope="module")
def hands_free_browser(two_questions: Path) -> Iterator[Browser]:
    flags = [*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={two_questions}"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=ensure_chromium(), headless=True, args=flags
        )
        try:
            yield browser
        finally:
            browser.close()


def hands_free_turn(index: int, condition: str) -> str:
    """`condition` over `t`, the hands-free turn number `index` (0-based)."""
    return (
        f"(() => {{ const t = s.turns.filter((x) => x.kind === 'hands-free')[{index}];"
        f" return t !== undefined && ({condition}); }})()"
    )


def test_hands_free_turns_and_an_interruption_without_clicks(
    hands_free_browser: Browser, stack: Stack, artifacts_dir: Path
) -> None:
    context = hands_free_browser.new_context(
        permissions=["microphone"], viewport={"width": 1280, "height": 900}
    )
    try:
        web = PageUnderTest.watching(context.new_page())
        web.page.goto(f"{stack.base_url}/")
        web.wait_for(CONNECTED, CONNECT_TIMEOUT_MS, "the connection")
        with artifacts_on_failure(web, artifacts_dir, "web-hands-free"):
            web.page.click("#hands-free")  # the only click
            web.wait_for("s.handsFree.connected", 30_000, "the realtime connection")
            assert web.page.locator("#mic").is_disabled()

            # The server's VAD ends the first question and answers it; the second question
            # interrupts that answer; the second answer completes and plays.
            web.wait_for("s.handsFree.utterances >= 2", TURN_TIMEOUT_MS, "two turns")
            web.wait_for("s.handsFree.interruptions >= 1", TURN_TIMEOUT_MS, "the interruption")
            web.wait_for(
                hands_free_turn(1, "t.status === 'completed'"), TURN_TIMEOUT_MS, "the 2nd answer"
            )
            web.wait_for(
                hands_free_turn(
                    1,
                    "t.samplesReceived > 0 && t.samplesPlayed >= t.samplesReceived"
                    " && s.playbackState === 'idle'",
                ),
                PLAYBACK_TIMEOUT_MS,
                "the second answer to play out",
            )
            state = save_artifacts(web, artifacts_dir, "web-hands-free")

        turns = [turn for turn in state["turns"] if turn["kind"] == "hands-free"]
        assert len(turns) == 2, turns
        first, second = turns
        # Cut by the second question: cancelled on the server while it ran (turn_detected), or,
        # when it was already complete there, cut in playback here.
        assert first["stopped"] is True
        assert first["status"] in ("cancelled", "completed")
        if first["status"] == "completed":
            assert first["samplesPlayed"] < first["samplesReceived"]
        assert second["status"] == "completed"
        assert second["stopped"] is False
        heard = [set(words(text)) for text in state["transcripts"]]
        assert {"capital", "france"} <= heard[0], state["transcripts"]
        assert {"capital", "italy"} <= heard[1], state["transcripts"]
        assert second["input"] == state["transcripts"][1]
        assert second["timings"] is not None
        assert state["handsFree"]["speechStarts"] == 2
        assert any("/v1/realtime" in url for url in web.websocket_urls)
        assert web.console_errors == []
        assert state["errors"] == []
    finally:
        context.close()
