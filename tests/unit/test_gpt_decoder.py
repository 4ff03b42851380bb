"""LLMVoX decoder: checkpoint layouts and the batched KV cache (streaming equals offline)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from llmvox_tts.loading.llmvox import load_llmvox_decoder
from llmvox_tts.model.gpt import GPTConfig, LLMVoXDecoder

pytestmark = pytest.mark.unit

CONFIGS = [
    GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=96, bias=False, vocab_size=300),
    GPTConfig(n_layer=3, n_head=2, n_embd=48, block_size=64, bias=True, vocab_size=128),
]


def random_model(cfg: GPTConfig, seed: int = 0) -> LLMVoXDecoder:
    torch.manual_seed(seed)
    model = LLMVoXDecoder(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model.eval()


def unit_rows(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape), dim=-1)


def save(model: LLMVoXDecoder, path: Path, *, prefix: str, extra: dict | None = None) -> Path:
    state = {prefix + k: v for k, v in model.state_dict().items()}
    state.update(extra or {})
    torch.save({"model": state, "model_args": model.config.to_model_args(), "iter_num": 7}, path)
    return path


@pytest.mark.parametrize("cfg", CONFIGS, ids=["nobias", "bias"])
@pytest.mark.parametrize("prefix", ["_orig_mod.", ""])
def test_checkpoint_round_trip(tmp_path: Path, cfg: GPTConfig, prefix: str) -> None:
    model = random_model(cfg)
    loaded = load_llmvox_decoder(save(model, tmp_path / "ckpt.pt", prefix=prefix))
    assert loaded.config == cfg
    x = unit_rows(2, 10, cfg.n_embd)
    torch.testing.assert_close(loaded(x)[0], model(x)[0])


def test_old_causal_mask_buffers_are_ignored(tmp_path: Path) -> None:
    cfg = CONFIGS[0]
    mask = torch.tril(torch.ones(1, 1, cfg.block_size, cfg.block_size))
    extra = {f"_orig_mod.transformer.h.{i}.attn.bias": mask for i in range(cfg.n_layer)}
    path = save(random_model(cfg), tmp_path / "ckpt.pt", prefix="_orig_mod.", extra=extra)
    assert load_llmvox_decoder(path).config == cfg


def test_missing_and_mismatched_keys_are_errors(tmp_path: Path) -> None:
    cfg = CONFIGS[0]
    model = random_model(cfg)
    state = model.state_dict()
    del state["lm_head.weight"]
    torch.save({"model": state, "model_args": cfg.to_model_args()}, tmp_path / "a.pt")
    with pytest.raises(ValueError, match=r"lm_head\.weight"):
        load_llmvox_decoder(tmp_path / "a.pt")
    args = {**cfg.to_model_args(), "n_embd": 32}
    torch.save({"model": model.state_dict(), "model_args": args}, tmp_path / "b.pt")
    with pytest.raises((ValueError, RuntimeError), match=r"size mismatch|does not match"):
        load_llmvox_decoder(tmp_path / "b.pt")
    torch.save({"weights": {}}, tmp_path / "c.pt")
    with pytest.raises(KeyError, match="model_args"):
        load_llmvox_decoder(tmp_path / "c.pt")
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        load_llmvox_decoder(tmp_path / "nope.pt")


@pytest.mark.parametrize("cfg", CONFIGS, ids=["nobias", "bias"])
def test_incremental_equals_full_forward(cfg: GPTConfig) -> None:
    model = random_model(cfg, seed=1)
    x = unit_rows(1, 40, cfg.n_embd)
    full, _ = model(x, torch.zeros(1, 40, dtype=torch.long))
    cache = model.new_cache(1, initial_capacity=8)  # forces the cache to grow several times
    with torch.no_grad():
        steps = torch.cat([model.decode_step(x[0, t : t + 1], cache) for t in range(40)])
    torch.testing.assert_close(steps, full[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cfg", CONFIGS, ids=["nobias", "bias"])
def test_batched_sequences_of_different_lengths_equal_each_alone(cfg: GPTConfig) -> None:
    model = random_model(cfg, seed=2)
    lengths = [25, 7, 16, 1]
    starts = [0, 3, 9, 20]  # join at different steps, as sessions do
    seqs = [unit_rows(n, cfg.n_embd) for n in lengths]
    alone = []
    with torch.no_grad():
        for seq in seqs:
            cache = model.new_cache(1)
            alone.append(
                torch.cat([model.decode_step(seq[t : t + 1], cache) for t in range(len(seq))])
            )
        cache = model.new_cache(len(seqs), initial_capacity=4)
        got: list[list[torch.Tensor]] = [[] for _ in seqs]
        for step in range(max(s + n for s, n in zip(starts, lengths, strict=True))):
            slots = [
                i for i, (s, n) in enumerate(zip(starts, lengths, strict=True)) if s <= step < s + n
            ]
            if not slots:
                continue
            x = torch.stack([seqs[i][step - starts[i]] for i in slots])
            out = model.decode_step(x, cache, slots)
            for row, i in enumerate(slots):
                got[i].append(out[row])
    for i in range(len(seqs)):
        torch.testing.assert_close(torch.stack(got[i]), alone[i], atol=1e-5, rtol=1e-5)


def test_slot_reset_starts_a_fresh_sequence() -> None:
    cfg = CONFIGS[0]
    model = random_model(cfg, seed=3)
    seq = unit_rows(6, cfg.n_embd)
    cache = model.new_cache(2)
    with torch.no_grad():
        first = [model.decode_step(seq[t : t + 1].expand(2, -1), cache) for t in range(6)]
        cache.reset(1)
        again = [model.decode_step(seq[t : t + 1], cache, [1]) for t in range(6)]
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a[1:2], b)
    assert cache.lengths == [6, 6]


def test_block_size_is_a_clear_limit() -> None:
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=5, bias=False, vocab_size=10)
    model = random_model(cfg)
    cache = model.new_cache(1)
    x = unit_rows(1, cfg.n_embd)
    with torch.no_grad():
        for _ in range(5):
            model.decode_step(x, cache)
        with pytest.raises(ValueError, match="block_size=5"):
            model.decode_step(x, cache)
        with pytest.raises(ValueError, match="block_size=5"):
            model(unit_rows(1, 6, cfg.n_embd))


def test_loss_ignores_padding_targets() -> None:
    cfg = CONFIGS[0]
    model = random_model(cfg, seed=4)
    x = unit_rows(1, 8, cfg.n_embd)
    targets = torch.randint(0, cfg.vocab_size, (1, 8))
    padded = targets.clone()
    padded[0, 5:] = -1000
    logits, loss = model(x, padded)
    expected = F.cross_entropy(logits[0, :5], targets[0, :5])
    torch.testing.assert_close(loss, expected)
