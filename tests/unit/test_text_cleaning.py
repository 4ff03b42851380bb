"""Upstream LLM-piece cleaning, eos rstrip and two-queue routing (docs/streaming.md)."""

import pytest

from llmvox_common.text_cleaning import clean_llm_piece
from tests.golden.upstream_oracle import PieceRouter, RoutedPiece, route_pieces, rstrip_eos

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("Item 5.", "Item 5"),
        ("end 7.", "end 7"),
        ("3. Third", "3 Third"),
        ("5.5 stays", "5.5 stays"),
        ("Done.", "Done."),
        ("1,000,000", "1000000"),
        ("1,2,3", "12,3"),
        ("a, b", "a, b"),
        ("C#", "C number "),
        ("R&D", "R and D"),
        ("a & b", "a and b"),
        ("me@x.com", "me at x.com"),
        ("Wait...", "Wait pause "),
        ("so.....", "so pause "),
        ("..", ".."),
        ("**Bold** text", "Bold text"),
        ("*star*", "star"),
        ("well-known", "well known"),
        ("-", " "),
        ("   multi   space  ", "multi space"),
        ("tab\there", "tab here"),
        ("a/b//c", "a slash b slash c"),
        ("back\\slash", "back backslash slash"),
        ("Hi!", "Hi!"),
        ("", ""),
    ],
)
def test_clean_llm_piece(raw: str, cleaned: str) -> None:
    assert clean_llm_piece(raw) == cleaned


def test_cleaning_rule_order() -> None:
    # "**" goes before the digit-dot rule sees the text; a lone "*" only afterwards.
    assert clean_llm_piece("5.**") == "5"
    assert clean_llm_piece("5.*") == "5."
    # A dash turned into a space makes the digit's dot end-of-word.
    assert clean_llm_piece("5.-x") == "5 x"
    # No strip at the end: the replacement's spaces stay at the edges.
    assert clean_llm_piece("#1") == " number 1"


@pytest.mark.parametrize(
    ("text", "stripped"),
    [
        ("Hello.<|eot_id|>", "Hello."),
        ("good<|eot_id|>", "g"),
        ("idiot<|eot_id|>", ""),
        ("<|eot_id|>", ""),
        ("Yes!<|eot_id|>", "Yes!"),
        ("done.<|eot_id|>", "done."),
        ("food", "f"),
        ("plain", "plain"),
    ],
)
def test_rstrip_eos_strips_a_character_set(text: str, stripped: str) -> None:
    assert rstrip_eos(text, "<|eot_id|>") == stripped


def test_rstrip_eos_uses_the_given_eos() -> None:
    assert rstrip_eos("stop</s>", "</s>") == "stop"
    assert rstrip_eos("goods</s>", "</s>") == "good"


def test_skip_runs_before_strip() -> None:
    router = PieceRouter()
    assert router.route("-") == RoutedPiece(None, None)
    assert router.route("") == RoutedPiece(None, None)
    assert router.route(" -") == RoutedPiece(" ", 0)
    assert router.route("   ") == RoutedPiece(None, None)  # cleans to nothing


def test_eos_piece_is_not_cleaned() -> None:
    eos = "<|end-of-text|>"
    router = PieceRouter(eos_token=eos)
    assert router.route(f" {eos} ") == RoutedPiece(eos, 0)
    # Glued to a word it is an ordinary piece, so its dashes are cleaned.
    assert router.route(f"x{eos}") == RoutedPiece("x<|end of text|>", 0)


def test_only_a_trailing_dot_switches_queue() -> None:
    router = PieceRouter()
    assert router.route("Sure") == RoutedPiece("Sure", 0)
    assert router.route("!") == RoutedPiece("!", 0)
    assert router.route("ok?") == RoutedPiece("ok?", 0)
    assert router.route("Item 5.") == RoutedPiece("Item 5", 0)
    assert router.route("Wait...") == RoutedPiece("Wait pause ", 0)
    assert router.active == 0
    assert router.route(" done.") == RoutedPiece("done.", 0)
    assert router.active == 1
    assert router.route("Next") == RoutedPiece("Next", 1)
    assert router.route(".") == RoutedPiece(".", 1)
    assert router.route("<|eot_id|>") == RoutedPiece("<|eot_id|>", 0)


def test_route_pieces_alternates_sentences() -> None:
    pieces = [
        "Hi",
        " there",
        ".",
        " How",
        " are",
        " **you**",
        "?",
        "-",
        " Good",
        " day",
        ".",
        "<|eot_id|>",
    ]
    assert route_pieces(pieces) == [
        ["Hi", "there", ".", "<|eot_id|>"],
        ["How", "are", "you", "?", "Good", "day", "."],
    ]


def test_router_rejects_no_queue() -> None:
    with pytest.raises(ValueError, match="n_queues"):
        PieceRouter(n_queues=0)
