"""Weight sources: local files and directories, hub ids offline, text-table layouts, profiles."""

from pathlib import Path

import pytest
import torch

from llmvox_tts.loading.bundle import build_tiny, load_published
from llmvox_tts.loading.hub import WeightsNotFoundError, looks_like_hub_id, resolve_file
from llmvox_tts.loading.text_embedding import load_text_table
from llmvox_tts.model.text_embedding import resize_with_mean_rows

pytestmark = pytest.mark.unit


def test_resolve_local_file_and_directory(tmp_path: Path) -> None:
    f = tmp_path / "ckpt_english_tiny.pt"
    f.write_bytes(b"x")
    assert resolve_file(f) == f
    assert resolve_file(tmp_path, "ckpt_english_tiny.pt") == f
    with pytest.raises(WeightsNotFoundError, match=r"other\.pt not found"):
        resolve_file(tmp_path, "other.pt")
    with pytest.raises(WeightsNotFoundError, match="not found"):
        resolve_file(tmp_path / "missing.pt")


@pytest.fixture
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # The library reads the variable once at import; set both so it fails at once, not after
    # network time-outs.
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.usefixtures("hub_offline")
def test_hub_id_offline_names_repo_and_file() -> None:
    # No network here: the hub client must fail, and the error must say what was wanted.
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_file("MBZUAI/LLMVoX", "ckpt_english_tiny.pt")
    message = str(err.value)
    assert "ckpt_english_tiny.pt" in message
    assert "MBZUAI/LLMVoX" in message
    assert "local path" in message


def test_hub_id_shape() -> None:
    assert looks_like_hub_id("charsiu/g2p_multilingual_byT5_tiny_16_layers_100")
    assert not looks_like_hub_id("./models/x")
    assert not looks_like_hub_id("/abs/path/file.pt")
    assert not looks_like_hub_id("a/b/c")


@pytest.mark.usefixtures("hub_offline")
def test_published_profile_offline_fails_clearly() -> None:
    with pytest.raises(WeightsNotFoundError, match=r"ckpt_english_tiny\.pt"):
        load_published()


@pytest.mark.parametrize("key", ["shared.weight", "encoder.embed_tokens.weight"])
def test_text_table_from_safetensors_with_one_tied_copy(tmp_path: Path, key: str) -> None:
    from safetensors.torch import save_file

    shared = torch.randn(384, 16)
    save_file(
        {key: shared, "lm_head.weight": torch.randn(384, 16)}, str(tmp_path / "model.safetensors")
    )
    table = load_text_table(tmp_path)
    assert table.shape == (386, 16)
    assert torch.equal(table[:384], shared)
    torch.testing.assert_close(table[384], shared.mean(0))
    torch.testing.assert_close(table[385], table[:385].mean(0))


def test_text_table_rejects_a_non_byt5_vocabulary(tmp_path: Path) -> None:
    torch.save({"shared.weight": torch.randn(500, 8)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="384 rows"):
        load_text_table(tmp_path)


def test_resize_rows_are_means_of_all_previous_rows() -> None:
    table = torch.arange(6.0).reshape(3, 2)
    out = resize_with_mean_rows(table, rows=5)
    assert out.shape == (5, 2)
    assert torch.equal(out[3], torch.tensor([2.0, 3.0]))
    assert torch.equal(out[4], out[:4].mean(0))


def test_tiny_profile_is_deterministic_and_labelled() -> None:
    a, b = build_tiny(seed=3), build_tiny(seed=3)
    assert a.untrained
    assert "RANDOM-WEIGHT" in a.description
    assert torch.equal(a.text_table, b.text_table)
    for (ka, va), (kb, vb) in zip(
        a.decoder.state_dict().items(), b.decoder.state_dict().items(), strict=True
    ):
        assert ka == kb
        assert torch.equal(va, vb)
    assert a.wavtokenizer.codebook.shape[0] == a.decoder.config.vocab_size == 4096
    assert not torch.equal(build_tiny(seed=4).text_table, a.text_table)
