"""The shared sentence splitter (llmvox_common.sentences): whole words, upstream cleaning,
sentence and clause ends."""

from __future__ import annotations

import pytest

from llmvox_common.sentences import SentenceSplitter, WordBatch

pytestmark = pytest.mark.unit


def run(deltas: list[str], **kwargs: int) -> list[WordBatch]:
    splitter = SentenceSplitter(**kwargs)
    batches = [batch for delta in deltas for batch in splitter.push(delta)]
    return batches + splitter.finish()


def sentences(batches: list[WordBatch]) -> list[str]:
    """The sentences as TTS jobs would receive them (batches joined until one ends)."""
    out: list[str] = []
    words: list[str] = []
    for batch in batches:
        words.extend(batch.words)
        if batch.ends_sentence:
            out.append(" ".join(words))
            words = []
    assert not words, "words left in a sentence that never ended"
    return out


def test_words_split_across_deltas_are_held_back_until_complete() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("Hel") == []
    assert splitter.push("lo wor") == [WordBatch(("Hello",), False)]
    assert splitter.push("ld") == []
    assert splitter.push(". How") == [WordBatch(("world.",), True)]
    assert splitter.sentence_open is False
    assert splitter.finish() == [WordBatch(("How",), True)]


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        (["Hello there. How are you? Fine!"], ["Hello there.", "How are you?", "Fine!"]),
        (['He said "stop." Then', " left."], ['He said "stop."', "Then left."]),
        (["First line\nsecond line"], ["First line", "second line"]),
        (["Trailing words without a stop"], ["Trailing words without a stop"]),
        (["Item 5. Next"], ["Item 5 Next"]),  # upstream: a digit's dot is not a sentence end
        (["**Bold** and well-known"], ["Bold and well known"]),  # upstream cleaning
        (["A - B"], ["A B"]),  # a lone dash is dropped
        (["", "   ", "\n\n"], []),
    ],
)
def test_sentence_boundaries_and_cleaning(deltas: list[str], expected: list[str]) -> None:
    assert sentences(run(deltas)) == expected


def test_long_clauses_become_their_own_jobs() -> None:
    text = "one two three four, five six seven eight nine ten, eleven."
    assert sentences(run([text], clause_words=4)) == [
        "one two three four,",
        "five six seven eight nine ten,",
        "eleven.",
    ]
    # Short clauses stay together.
    assert sentences(run(["a b, c d."], clause_words=4)) == ["a b, c d."]


def test_max_sentence_words_bounds_every_job() -> None:
    words = " ".join(f"w{i}" for i in range(10))
    assert sentences(run([words], max_sentence_words=4)) == ["w0 w1 w2 w3", "w4 w5 w6 w7", "w8 w9"]


def test_newline_closes_a_sentence_opened_by_an_earlier_delta() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("Open words ") == [WordBatch(("Open", "words"), False)]
    assert splitter.push("\nNext") == [WordBatch((), True)]
    assert splitter.finish() == [WordBatch(("Next",), True)]


def test_finish_is_idempotent_and_push_after_finish_fails() -> None:
    splitter = SentenceSplitter()
    splitter.push("Done.")
    splitter.finish()
    assert splitter.finish() == []
    with pytest.raises(RuntimeError):
        splitter.push("more")


def test_split_is_the_same_whatever_the_delta_boundaries() -> None:
    text = "The quick brown fox jumps. Over the lazy dog, again and again! Done"
    whole = sentences(run([text], clause_words=3))
    by_char = sentences(run(list(text), clause_words=3))
    assert whole == by_char


def test_invalid_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="clause_words"):
        SentenceSplitter(clause_words=0)
