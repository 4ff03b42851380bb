"""Training alignment against the upstream SpeechDataset → collator → decoder-input path."""

import pytest
import torch

from llmvox_tts.model.byt5_tokenizer import ByT5Tokenizer
from llmvox_tts.training.alignment import align_item, collate, decoder_inputs

from .conftest import assert_close

pytestmark = pytest.mark.unit
CASE = "training_batch"


def _aligned(case):
    codebook = case["checkpoint"]["codebook"]
    tok = ByT5Tokenizer()
    codes = case["inputs"]["codes_from_encoder"]
    return [
        align_item(codes[it["id"]], it["answer_text"], codebook, tok)
        for it in case["inputs"]["items"]
    ], codebook


def _x_tol(case) -> dict:
    tol = case.get("tolerances", {}).get("X", {"atol": 1e-6, "rtol": 1e-5})
    return {"atol": float(tol["atol"]), "rtol": float(tol["rtol"])}


def test_per_item_alignment(golden_case) -> None:
    items, codebook = _aligned(golden_case)
    for i, (item, exp) in enumerate(zip(items, golden_case["expected"]["per_item"], strict=True)):
        assert torch.equal(item.text_tokens, exp["text_tokens"]), f"text tokens of item {i}"
        assert torch.equal(item.speech_out_tokens, exp["speech_out_tokens"]), f"targets {i}"
        assert torch.equal(item.speech_embeddings, exp["speech_embeddings"]), f"frames {i}"
        assert torch.equal(codebook[453][:, None], exp["eo_feat"])


def test_batch_and_decoder_input(golden_case) -> None:
    items, codebook = _aligned(golden_case)
    batch = collate(items, codebook)
    exp = golden_case["expected"]
    assert torch.equal(batch.text_tokens, exp["batch_labels"])
    assert torch.equal(batch.speech_embeddings, exp["batch_speech_embeddings"])
    assert torch.equal(batch.targets, exp["batch_speech_out_tokens"])
    x = decoder_inputs(batch, golden_case["checkpoint"]["text_embedding_table"])
    assert_close(x, exp["X"], what="X", **_x_tol(golden_case))


def test_single_item_batch(golden_case) -> None:
    items, codebook = _aligned(golden_case)
    batch = collate(items[:1], codebook)
    exp = golden_case["expected"]
    assert torch.equal(batch.text_tokens[0], exp["single_item_labels"])
    x = decoder_inputs(batch, golden_case["checkpoint"]["text_embedding_table"])
    assert_close(x, exp["single_item_X"], what="single_item_X", **_x_tol(golden_case))


def test_batch_through_prepared_shards(golden_case, tmp_path) -> None:
    """The real data path: encoder codes -> shards/tables/meta on disk -> read back -> batch."""
    from llmvox_tts.training.shards import (
        PreparedItem,
        iter_items,
        read_tables,
        write_meta,
        write_shard,
        write_tables,
    )

    codebook = golden_case["checkpoint"]["codebook"]
    table = golden_case["checkpoint"]["text_embedding_table"]
    codes = golden_case["inputs"]["codes_from_encoder"]
    items = [
        PreparedItem(
            id=it["id"],
            text=it["answer_text"],
            codes=torch.tensor(codes[it["id"]], dtype=torch.long),
            seconds=len(codes[it["id"]]) * 320 / 24_000,
        )
        for it in golden_case["inputs"]["items"]
    ]
    # Two shards, so the reader must also keep the order across shard files.
    write_shard(tmp_path / "shard-00000.pt", items[:2])
    write_shard(tmp_path / "shard-00001.pt", items[2:])
    write_tables(tmp_path, table, codebook)
    shards = [
        {"file": f"shard-0000{i}.pt", "items": len(part), "seconds": 0.0, "tokens": 0}
        for i, part in enumerate((items[:2], items[2:]))
    ]
    write_meta(tmp_path, {"codebook_size": codebook.shape[0], "shards": shards})

    read_table, read_codebook = read_tables(tmp_path)
    back = list(iter_items(tmp_path))
    assert [it.id for it in back] == [it["id"] for it in golden_case["inputs"]["items"]]
    tok = ByT5Tokenizer()
    aligned = [align_item(it.codes.tolist(), it.text, read_codebook, tok) for it in back]
    batch = collate(aligned, read_codebook)
    exp = golden_case["expected"]
    assert torch.equal(batch.text_tokens, exp["batch_labels"])
    assert torch.equal(batch.speech_embeddings, exp["batch_speech_embeddings"])
    assert torch.equal(batch.targets, exp["batch_speech_out_tokens"])
    x = decoder_inputs(batch, read_table)
    assert_close(x, exp["X"], what="X", **_x_tol(golden_case))
