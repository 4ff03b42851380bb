"""Streaming synthesis with the tiny random-weight models (untrained: the audio is noise)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from llmvox_common.audio import read_wav
from llmvox_common.sentences import SentenceSplitter
from llmvox_tts.cli import main
from llmvox_tts.constants import HOP_LENGTH
from llmvox_tts.loading.bundle import build_tiny
from llmvox_tts.model.precision import with_precision
from llmvox_tts.model.speech_decoder import SpeechTokenDecoder
from llmvox_tts.streaming.sentence_stream import StopReason, SynthesisLimits
from llmvox_tts.streaming.synthesizer import StreamingSynthesizer, split_sentences

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(seed=0)


def test_synth_splits_sentences_as_the_gateway_does() -> None:
    """One splitter for the service and `llmvox-tts synth`: the same text, the same sentences."""
    text = "Hi there. How are **you**? Item 5. Fine\nBye"
    streamed = ["Hi th", "ere. How", " are **you**? Item", " 5. Fine\nBye"]
    expected = [["Hi", "there."], ["How", "are", "you?"], ["Item", "5", "Fine"], ["Bye"]]
    assert list(split_sentences([text], SentenceSplitter())) == expected
    assert list(split_sentences(streamed, SentenceSplitter())) == expected
    assert list(split_sentences(["", "-", "  "], SentenceSplitter())) == []


def test_untrained_sentence_is_stopped_by_runaway_guard(tiny) -> None:
    synth = StreamingSynthesizer(
        tiny,
        initial_dump_size=10,
        max_dump_size=40,
        limits=SynthesisLimits(max_tokens_per_text_id=3.0, min_token_budget=10),
    )
    chunks = list(synth.speak_sentence(["Hello", "world"]))
    report = synth.stats.sentences[0]
    assert report.stop_reason is StopReason.RUNAWAY
    text_ids = 13  # "Hello"+</s>, "world"+</s>, EOS
    assert report.tokens == 3 * text_ids
    assert [len(c.tokens) for c in chunks] == [10, 29]  # 10, then the stop flushes the rest
    assert [c.last for c in chunks] == [False, True]
    assert [c.part for c in chunks] == [0, 1]
    for c in chunks:
        assert c.pcm.shape == (HOP_LENGTH * len(c.tokens),)
        assert torch.isfinite(c.pcm).all()


def test_speak_keeps_sentence_order_and_one_growing_schedule(tiny) -> None:
    synth = StreamingSynthesizer(
        tiny,
        initial_dump_size=4,
        max_dump_size=1000,
        limits=SynthesisLimits(max_tokens_per_text_id=2.0, min_token_budget=1),
    )
    chunks = list(synth.speak(["One", " two", ".", " Three", "."]))
    assert [c.sentence for c in chunks] == sorted(c.sentence for c in chunks)
    assert {c.sentence for c in chunks} == {0, 1}
    sizes = [len(c.tokens) for c in chunks]
    assert sizes[:2] == [4, 12]  # x3 growth, carried across sentences like an upstream replica
    assert sum(sizes) == synth.stats.tokens
    assert synth.stats.time_to_first_audio is not None


def test_batched_speech_decoder_equals_one_at_a_time(tiny) -> None:
    texts = [[75, 108, 1, 385], [119, 107, 104, 117, 104, 1, 385], [100, 1, 385]]
    steps = 12
    alone = []
    for ids in texts:
        dec = SpeechTokenDecoder(tiny.decoder, tiny.text_table, tiny.wavtokenizer.codebook, 1)
        dec.start_segment(0)
        alone.append([dec.step([0], [ids[n] if n < len(ids) else 384])[0] for n in range(steps)])
    dec = SpeechTokenDecoder(tiny.decoder, tiny.text_table, tiny.wavtokenizer.codebook, 4)
    got: list[list[int]] = [[], [], []]
    starts = [0, 2, 5]  # slot 3 stays idle; rows join late, as sessions do
    for s in range(3):
        dec.start_segment(s + 1 if s == 2 else s)
    slot_of = [0, 1, 3]
    for t in range(steps + max(starts)):
        active = [i for i in range(3) if starts[i] <= t < starts[i] + steps]
        ids = [texts[i][t - starts[i]] if t - starts[i] < len(texts[i]) else 384 for i in active]
        out = dec.step([slot_of[i] for i in active], ids)
        for i, tok in zip(active, out, strict=True):
            got[i].append(tok)
    assert got == alone


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precisions_decode(tiny, precision: str) -> None:
    model = with_precision(tiny.decoder, precision)
    dec = SpeechTokenDecoder(model, tiny.text_table, tiny.wavtokenizer.codebook, 2)
    for s in range(2):
        dec.start_segment(s)
    tokens = [dec.step([0, 1], [100, 101]) for _ in range(5)]
    assert all(0 <= t < 4096 for row in tokens for t in row)
    with pytest.raises(ValueError, match="unknown precision"):
        with_precision(tiny.decoder, "int4")


def test_cli_synth_writes_wav(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo.wav"
    code = main(
        [
            "synth",
            "--profile",
            "tiny",
            "--text",
            "Hello there. Bye now.",
            "--out",
            str(out),
            "--max_tokens_per_text_id",
            "3",
        ]
    )
    assert code == 0
    samples, rate = read_wav(out)
    assert rate == 24000
    assert samples.shape[0] > 0
    assert samples.shape[0] % HOP_LENGTH == 0
    assert np.isfinite(samples).all()
    printed = capsys.readouterr()
    assert "time to first audio chunk" in printed.out
    assert "real-time factor" in printed.out
    assert "runaway" in printed.out
    assert "RANDOM-WEIGHT" in printed.err


def test_cli_rejects_empty_and_oversized_text(tmp_path: Path) -> None:
    assert (
        main(["synth", "--profile", "tiny", "--text", "  ", "--out", str(tmp_path / "a.wav")]) == 2
    )
    assert (
        main(
            [
                "synth",
                "--profile",
                "tiny",
                "--text",
                "x" * 50,
                "--max_text_chars",
                "10",
                "--out",
                str(tmp_path / "b.wav"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "a.wav").exists()
