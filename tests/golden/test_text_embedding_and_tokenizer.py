"""ByT5 ids and the resized text table against the upstream tokenizer and T5 loader."""

from pathlib import Path

import pytest
import torch

from llmvox_tts.loading.text_embedding import load_text_table
from llmvox_tts.model.byt5_tokenizer import ByT5Tokenizer

from .conftest import assert_close

pytestmark = pytest.mark.unit
CASE = "text_embedding_and_tokenizer"


def test_ids_of_every_string(golden_case) -> None:
    tok = ByT5Tokenizer()
    expected = golden_case["expected"]["ids"]
    for text in golden_case["inputs"]["strings"]:
        assert tok.encode(text) == list(expected[text]), f"ids of {text!r}"


def test_list_call_and_training_tokens(golden_case) -> None:
    tok = ByT5Tokenizer()
    words = golden_case["inputs"]["words_for_list_call"]
    exp = golden_case["expected"]
    assert tok.encode_batch(words) == [list(x) for x in exp["list_call_ids"]]
    assert tok.encode_words(" ".join(words)) == list(exp["training_text_tokens"])
    assert len(tok) == exp["len_tokenizer"]
    assert tok.pad_token_id == exp["pad_token_id"]


@pytest.mark.parametrize("layout", ["directory", "file"])
def test_resized_table_loaded_by_path(golden_case, tmp_path: Path, layout: str) -> None:
    model_dir = tmp_path / "charsiu"
    model_dir.mkdir()
    torch.save(golden_case["checkpoint"]["t5_state_dict"], model_dir / "pytorch_model.bin")
    source = model_dir if layout == "directory" else model_dir / "pytorch_model.bin"
    table = load_text_table(source)
    tol = golden_case.get("tolerances", {}).get("embedding_table", {"atol": 1e-6, "rtol": 1e-6})
    exp = golden_case["expected"]["embedding_table"]
    assert_close(
        table, exp, atol=float(tol["atol"]), rtol=float(tol["rtol"]), what="embedding table"
    )
    # The original rows are copies, not recomputations.
    assert torch.equal(table[: exp.shape[0] - 2], exp[: exp.shape[0] - 2])
