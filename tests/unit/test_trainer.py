"""The trainer's pieces: schedule, optimizer groups, sizes, checkpoints, data order."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from llmvox_tts.constants import EOA_TOKEN_ID
from llmvox_tts.loading.llmvox import load_llmvox_decoder
from llmvox_tts.training import plot
from llmvox_tts.training.data import (
    BucketedSampler,
    PreparedData,
    held_out,
    rank_micro_batches,
)
from llmvox_tts.training.shards import (
    PreparedItem,
    shard_name,
    write_meta,
    write_shard,
    write_tables,
)
from llmvox_tts.training.train_cli import build_parser, main
from llmvox_tts.training.trainer import (
    TrainConfig,
    configure_optimizer,
    get_lr,
    resolve_model_config,
    train,
)

pytestmark = pytest.mark.unit

TEXT_DIM, CODE_DIM, VOCAB = 8, 8, 512
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


def make_dataset(root: Path, n: int = 24, seed: int = 0, long_item: bool = False) -> Path:
    """Random codes with a learnable pattern; tables small enough for instant steps."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        length = 6 + (i * 7) % 23
        codes = (torch.arange(length) * (i % 5 + 1)) % 40 + 1
        text = " ".join(WORDS[: 1 + i % len(WORDS)])
        items.append(PreparedItem(f"item{i:03d}", text, codes.to(torch.int64), length / 75))
    if long_item:
        items.append(PreparedItem("too_long", "long", torch.ones(500, dtype=torch.int64), 7.0))
    root.mkdir(parents=True, exist_ok=True)
    write_shard(root / shard_name(0), items)
    write_tables(
        root,
        torch.randn(386, TEXT_DIM, generator=generator),
        torch.randn(VOCAB, CODE_DIM, generator=generator),
    )
    write_meta(root, {"shards": [{"file": shard_name(0), "items": len(items)}]})
    return root


def tiny_config(data_dir: Path, out_dir: Path, **overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        "data_dir": str(data_dir),
        "out_dir": str(out_dir),
        "n_layer": 1,
        "n_head": 2,
        "block_size": 64,
        "batch_size": 2,
        "gradient_accumulation_steps": 2,
        "learning_rate": 1e-3,
        "warmup_iters": 2,
        "lr_decay_iters": 10,
        "min_lr": 1e-4,
        "max_iters": 4,
        "eval_interval": 2,
        "eval_iters": 2,
        "val_fraction": 0.2,
        "compile": False,
        "progress": False,
        "device": "cpu",
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def test_lr_schedule_warmup_cosine_floor() -> None:
    cfg = TrainConfig(learning_rate=3e-4, warmup_iters=10, lr_decay_iters=110, min_lr=3e-6)
    assert get_lr(0, cfg) == pytest.approx(3e-4 / 11)
    assert get_lr(9, cfg) == pytest.approx(3e-4 * 10 / 11)
    assert get_lr(10, cfg) == pytest.approx(3e-4)
    assert get_lr(60, cfg) == pytest.approx(3e-6 + 0.5 * (3e-4 - 3e-6))
    assert get_lr(110, cfg) == pytest.approx(3e-6)
    assert get_lr(10_000, cfg) == pytest.approx(3e-6)
    assert get_lr(5, TrainConfig(decay_lr=False, learning_rate=1e-3)) == 1e-3
    lrs = [get_lr(i, cfg) for i in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def test_published_defaults() -> None:
    args = build_parser().parse_args(["--data_dir", "x"])
    assert (args.n_layer, args.n_head, args.block_size, args.batch_size) == (4, 8, 8192, 2)
    assert args.gradient_accumulation_steps == 4
    assert (args.learning_rate, args.weight_decay, args.grad_clip) == (3e-4, 0.1, 1.0)
    assert (args.beta1, args.beta2, args.min_lr) == (0.9, 0.95, 3e-6)
    assert (args.warmup_iters, args.lr_decay_iters) == (50_000, 2_600_000)
    assert args.bias is False
    assert args.compile is True
    assert args.checkpoint_filename == "ckpt.pt"
    both = build_parser().parse_args(["--data_dir=x", "--n_layer=3", "--n_head", "2", "--compile"])
    assert (both.n_layer, both.n_head, both.compile) == (3, 2, True)
    assert build_parser().parse_args(["--data_dir=x", "--bias=True"]).bias is True


def test_optimizer_decays_only_matrices(tmp_path: Path) -> None:
    data = PreparedData(make_dataset(tmp_path / "d"), val_fraction=0.2, block_size=64)
    cfg = tiny_config(tmp_path / "d", tmp_path / "o", bias=True)
    from llmvox_tts.model.gpt import LLMVoXDecoder

    model = LLMVoXDecoder(resolve_model_config(cfg, data))
    opt = configure_optimizer(model, cfg, "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1
    assert no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert opt.defaults["betas"] == (0.9, 0.95)
    assert opt.defaults["eps"] == 1e-5


def test_width_follows_tables_and_conflict_is_an_error(tmp_path: Path) -> None:
    data_dir = make_dataset(tmp_path / "d")
    data = PreparedData(data_dir, val_fraction=0.2, block_size=64)
    model_cfg = resolve_model_config(tiny_config(data_dir, tmp_path / "o"), data)
    assert model_cfg.n_embd == TEXT_DIM + CODE_DIM
    assert model_cfg.vocab_size == VOCAB
    with pytest.raises(ValueError, match="conflicts with the prepared tables"):
        resolve_model_config(tiny_config(data_dir, tmp_path / "o", n_embd=768), data)
    assert (
        main(["--data_dir", str(data_dir), "--out_dir", str(tmp_path / "o"), "--n_embd=768"]) == 2
    )


def test_too_long_items_are_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = PreparedData(
        make_dataset(tmp_path / "d", long_item=True), val_fraction=0.0, block_size=64
    )
    assert "too_long" not in {it.id for it in data.train.items}
    assert "longer than block_size" in caplog.text
    data.block_size = 8
    with pytest.raises(ValueError, match="exceeds block_size"):
        data.batch(data.train.items[:4])


def test_checkpoint_layout_and_serving_loader(tmp_path: Path) -> None:
    data_dir = make_dataset(tmp_path / "d")
    cfg = tiny_config(data_dir, tmp_path / "o")
    result = train(cfg)
    assert result.iter_num == 4
    ckpt = torch.load(tmp_path / "o" / "ckpt.pt", weights_only=False)
    assert set(ckpt) >= {"model", "model_args", "optimizer", "iter_num", "best_val_loss", "config"}
    assert ckpt["iter_num"] == 4
    assert ckpt["model_args"] == {
        "n_layer": 1,
        "n_head": 2,
        "n_embd": TEXT_DIM + CODE_DIM,
        "block_size": 64,
        "bias": False,
        "vocab_size": VOCAB,
        "dropout": 0.0,
    }
    assert ckpt["config"]["learning_rate"] == 1e-3
    assert (tmp_path / "o" / "ckpt_2.pt").is_file()
    assert (tmp_path / "o" / "ckpt_4.pt").is_file()
    decoder = load_llmvox_decoder(tmp_path / "o" / "ckpt.pt")
    for name, value in decoder.state_dict().items():
        assert torch.equal(value, ckpt["model"][name]), name
    csv_lines = (tmp_path / "o" / "loss.csv").read_text().splitlines()
    assert csv_lines[0] == "iter,train_loss,val_loss"
    assert (tmp_path / "o" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compiled_prefix_loads_in_serving(tmp_path: Path) -> None:
    """Upstream checkpoints carry `_orig_mod.`; a resumed/fine-tuned run must read them."""
    data_dir = make_dataset(tmp_path / "d")
    train(tiny_config(data_dir, tmp_path / "o", max_iters=2))
    ckpt = torch.load(tmp_path / "o" / "ckpt.pt", weights_only=False)
    ckpt["model"] = {f"_orig_mod.{k}": v for k, v in ckpt["model"].items()}
    torch.save(ckpt, tmp_path / "compiled.pt")
    load_llmvox_decoder(tmp_path / "compiled.pt")
    result = train(
        tiny_config(data_dir, tmp_path / "ft", init_from=str(tmp_path / "compiled.pt"), max_iters=2)
    )
    assert result.iter_num == 2


def test_resume_missing_checkpoint_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny_config(make_dataset(tmp_path / "d"), tmp_path / "o", init_from="resume"))


def test_held_out_split_is_stable() -> None:
    ids = [f"utt{i}" for i in range(2000)]
    val = [i for i in ids if held_out(i, 0.1)]
    assert val == [i for i in ids if held_out(i, 0.1)]
    assert 150 < len(val) < 250
    assert set(val) <= {i for i in ids if held_out(i, 0.2)}


def test_bucketed_sampler_deterministic_and_bucketed() -> None:
    lengths = [(i * 37) % 101 for i in range(200)]
    a = BucketedSampler(lengths, batch_size=4, seed=7, bucket_batches=5)
    b = BucketedSampler(lengths, batch_size=4, seed=7, bucket_batches=5)
    first = [a.micro_batch(m) for m in range(120)]
    # Random access (resume at any step) gives the same batches as sequential access.
    assert [b.micro_batch(m) for m in reversed(range(120))][::-1] == first
    epoch = first[:50]
    assert sorted(i for mb in epoch for i in mb) == list(range(200))
    assert first[50:100] != epoch  # a new order each epoch
    assert [BucketedSampler(lengths, 4, 8, 5).micro_batch(m) for m in range(50)] != epoch
    for mb in epoch:
        assert [lengths[i] for i in mb] == sorted(lengths[i] for i in mb)
    # Bucketing keeps the padding well below a random batch's.
    spread = sum(max(lengths[i] for i in mb) - min(lengths[i] for i in mb) for mb in epoch)
    assert spread / len(epoch) < 30


def test_small_split_repeats_items() -> None:
    sampler = BucketedSampler([3, 5], batch_size=4, seed=0)
    assert sorted(sampler.micro_batch(0)) == [0, 0, 1, 1]


def test_rank_sharding_is_disjoint_and_covers_global_batch() -> None:
    for world in (1, 2, 4):
        for step in range(3):
            parts = [rank_micro_batches(step, 4, r, world) for r in range(world)]
            assert all(len(p) == 4 // world for p in parts)
            flat = sorted(m for p in parts for m in p)
            assert flat == list(range(step * 4, step * 4 + 4))
    assert rank_micro_batches(1, 4, 0, 1) == [4, 5, 6, 7]
    assert rank_micro_batches(1, 4, 1, 2) == [5, 7]
    with pytest.raises(ValueError, match="not divisible"):
        rank_micro_batches(0, 3, 0, 2)


def test_loss_plot_is_a_png_with_both_curves(tmp_path: Path) -> None:
    rows = [(i, 8.0 / (i + 1), None if i % 5 else 9.0 / (i + 1)) for i in range(30)]
    rows.append((30, math.nan, None))  # a diverged step is left out, not drawn off the axes
    assert plot.write_loss_png(tmp_path / "loss.png", rows)
    with Image.open(tmp_path / "loss.png") as image:
        assert (image.format, image.size) == ("PNG", (700, 400))
        colours = {colour for _, colour in image.convert("RGB").getcolors(1 << 20) or ()}
    # matplotlib's first two cycle colours: the train and the val curve are both drawn.
    assert {(31, 119, 180), (255, 127, 14)} <= colours
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]  # the temporary file is renamed


def test_loss_plot_is_skipped_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)  # import fails
    assert not plot.write_loss_png(tmp_path / "loss.png", [(0, 1.0, None)])
    assert not (tmp_path / "loss.png").exists()
    assert "matplotlib is not installed" in caplog.text


def test_eoa_inside_codes_does_not_count(tmp_path: Path) -> None:
    from llmvox_tts.training.data import decoder_steps

    item = PreparedItem("x", "a", torch.tensor([1, EOA_TOKEN_ID, 2]), 0.1)
    assert decoder_steps(item) == 3
