"""LLMVoX decoder against the upstream full-sequence and server-style incremental passes."""

import pytest
import torch

from llmvox_tts.loading.llmvox import load_llmvox_decoder

from .conftest import assert_close

pytestmark = pytest.mark.unit
CASE = "gpt_forward"


def _tol(case: dict, key: str, default: dict) -> dict:
    tol = case.get("tolerances", {}).get(key, default)
    return {"atol": float(tol.get("atol", 0.0)), "rtol": float(tol.get("rtol", 0.0))}


@pytest.fixture
def decoder(golden_case, save_checkpoint):
    return load_llmvox_decoder(save_checkpoint(golden_case["checkpoint"], "ckpt.pt"))


def test_config_read_from_checkpoint(golden_case, decoder) -> None:
    args = golden_case["checkpoint"]["model_args"]
    cfg = decoder.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size, cfg.bias) == (
        args["n_layer"],
        args["n_head"],
        args["n_embd"],
        args["block_size"],
        args["vocab_size"],
        args["bias"],
    )


def test_full_sequence_logits_and_loss(golden_case, decoder) -> None:
    x = golden_case["inputs"]["embeddings"]
    targets = golden_case["inputs"]["targets"]
    with torch.no_grad():
        logits, loss = decoder(x, targets)
    exp = golden_case["expected"]
    assert_close(
        logits,
        exp["logits_full"],
        what="logits_full",
        **_tol(golden_case, "logits", {"atol": 1e-4, "rtol": 1e-4}),
    )
    loss_tol = golden_case.get("tolerances", {}).get("loss", {"atol": 1e-5})
    assert_close(
        loss, torch.as_tensor(exp["loss"]), atol=float(loss_tol["atol"]), rtol=0.0, what="loss"
    )


def test_incremental_decoding_matches_upstream_loop(golden_case, decoder) -> None:
    x = golden_case["inputs"]["embeddings"][0]  # (T, E)
    expected = golden_case["expected"]["incremental_logits_seq0"]
    cache = decoder.new_cache(1)
    with torch.no_grad():
        rows = [decoder.decode_step(x[t : t + 1], cache) for t in range(x.shape[0])]
    logits = torch.cat(rows, dim=0)
    assert_close(
        logits,
        expected,
        what="incremental logits",
        **_tol(golden_case, "logits", {"atol": 1e-4, "rtol": 1e-4}),
    )
    assert torch.equal(logits.argmax(-1), expected.argmax(-1)), "greedy tokens differ"


def test_batched_incremental_equals_full_pass(golden_case, decoder) -> None:
    # Both rows decoded at once, the second starting later (sequences of different lengths).
    x = golden_case["inputs"]["embeddings"]
    exp = golden_case["expected"]["logits_full"]
    t_total = x.shape[1]
    lag = 5
    cache = decoder.new_cache(2)
    got: list[list[torch.Tensor]] = [[], []]
    with torch.no_grad():
        for t in range(t_total + lag):
            slots = [s for s, start in ((0, 0), (1, lag)) if 0 <= t - start < t_total]
            rows = torch.stack([x[s, t - (0 if s == 0 else lag)] for s in slots])
            out = decoder.decode_step(rows, cache, slots)
            for i, s in enumerate(slots):
                got[s].append(out[i])
    for s in range(2):
        assert_close(
            torch.stack(got[s]),
            exp[s],
            what=f"batched row {s}",
            **_tol(golden_case, "logits", {"atol": 1e-4, "rtol": 1e-4}),
        )
