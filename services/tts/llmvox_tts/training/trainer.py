"""The LLMVoX trainer: nanoGPT's `train.py` loop over prepared data (docs/training.md).

Only the GPT is trained; the text table and the codebook are frozen lookups (tables.pt).
Checkpoints keep the published layout (`model`, `model_args`, `optimizer`, `iter_num`,
`best_val_loss`, `config`), so the serving loader reads them unchanged.

Step semantics: `iter_num` counts optimizer steps taken. A checkpoint at iter_num N holds the
model after N steps; the run stops when iter_num reaches `max_iters`, after a final evaluation
and checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..loading.checkpoint_io import load_trusted
from ..loading.llmvox import clean_decoder_state_dict
from ..model.gpt import GPTConfig, LLMVoXDecoder
from .data import BucketedSampler, PreparedData, rank_micro_batches
from .plot import write_loss_png

log = logging.getLogger(__name__)

LOSS_CSV = "loss.csv"
LOSS_PNG = "loss.png"


@dataclass
class TrainConfig:
    """The original train.py flags and defaults (docs/training.md, "Train")."""

    data_dir: str = ""
    out_dir: str = "out"
    # model; n_embd None = text width + codebook width of the prepared tables
    n_layer: int = 4
    n_head: int = 8
    n_embd: int | None = None
    block_size: int = 8192
    dropout: float = 0.0
    bias: bool = False
    # optimisation; batch_size is per rank and micro-step, gradient_accumulation_steps is the
    # total over all ranks (nanoGPT divides it by the world size)
    batch_size: int = 2
    gradient_accumulation_steps: int = 4
    learning_rate: float = 3e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-5
    grad_clip: float = 1.0
    decay_lr: bool = True
    warmup_iters: int = 50_000
    lr_decay_iters: int = 2_600_000
    min_lr: float = 3e-6
    max_iters: int = 2_600_000
    # evaluation, logging, checkpoints
    val_fraction: float = 0.01
    eval_interval: int = 1000
    eval_iters: int = 200
    eval_only: bool = False
    log_interval: int = 1
    always_save_checkpoint: bool = True
    checkpoint_filename: str = "ckpt.pt"
    init_from: str = "scratch"  # scratch | resume | path to a published-layout checkpoint
    wandb_log: bool = False
    wandb_project: str = "speech_stream"
    wandb_run_name: str = "llmvox"
    # system
    device: str = "auto"
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    compile: bool = True
    seed: int = 1337
    progress: bool = True


# -- schedule and optimizer --------------------------------------------------------------------


def get_lr(it: int, cfg: TrainConfig) -> float:
    """nanoGPT: linear warm-up, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it > cfg.lr_decay_iters:
        return cfg.min_lr
    span = max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    ratio = (it - cfg.warmup_iters) / span
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def configure_optimizer(model: nn.Module, cfg: TrainConfig, device_type: str) -> torch.optim.AdamW:
    """Weight decay on matrices only (≥ 2 dims); gains and biases are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups,
        lr=cfg.learning_rate,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=device_type == "cuda",
    )


def init_weights(model: LLMVoXDecoder, seed: int) -> None:
    """nanoGPT's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2·n_layer)."""
    generator = torch.Generator().manual_seed(seed)
    proj_std = 0.02 / math.sqrt(2 * model.config.n_layer)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.zero_()
            elif param.dim() == 1:
                param.fill_(1.0)
            else:
                std = proj_std if name.endswith("c_proj.weight") else 0.02
                param.copy_(torch.randn(param.shape, generator=generator) * std)


# -- model sizes against the tables ------------------------------------------------------------


def resolve_model_config(cfg: TrainConfig, data: PreparedData) -> GPTConfig:
    width = data.text_dim + data.codebook_dim
    if cfg.n_embd is not None and cfg.n_embd != width:
        raise ValueError(
            f"--n_embd={cfg.n_embd} conflicts with the prepared tables: the decoder input is "
            f"text ({data.text_dim}) + codebook ({data.codebook_dim}) = {width} wide; "
            f"drop --n_embd or pass --n_embd={width}"
        )
    model_cfg = GPTConfig(
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_embd=width,
        block_size=cfg.block_size,
        bias=cfg.bias,
        vocab_size=data.vocab_size,
        dropout=cfg.dropout,
    )
    if width % cfg.n_head:
        raise ValueError(f"n_embd={width} is not divisible by --n_head={cfg.n_head}")
    return model_cfg


def check_fits_tables(model_cfg: GPTConfig, data: PreparedData, source: str) -> None:
    width = data.text_dim + data.codebook_dim
    if model_cfg.n_embd != width or model_cfg.vocab_size != data.vocab_size:
        raise ValueError(
            f"{source}: n_embd={model_cfg.n_embd}, vocab_size={model_cfg.vocab_size} do not fit "
            f"the prepared tables (text {data.text_dim} + codebook {data.codebook_dim} = {width}, "
            f"{data.vocab_size} codes)"
        )


# -- checkpoints and outputs -------------------------------------------------------------------


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Atomic: a crash while writing leaves the previous checkpoint intact."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, tmp)
    tmp.replace(path)


def build_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_cfg: GPTConfig,
    iter_num: int,
    best_val_loss: float,
    cfg: TrainConfig,
) -> dict[str, Any]:
    # `model` is the compiled module when compiled, so its keys carry `_orig_mod.` as upstream.
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "model_args": model_cfg.to_model_args(),
        "iter_num": iter_num,
        "best_val_loss": best_val_loss,
        "config": asdict(cfg),
    }


class LossLog:
    """OUT/loss.csv (iter,train_loss,val_loss) and its plot; a resumed run drops later rows."""

    def __init__(self, out_dir: Path, start_iter: int) -> None:
        self.path = out_dir / LOSS_CSV
        self.png = out_dir / LOSS_PNG
        self.rows: list[tuple[int, float | None, float | None]] = []
        if start_iter > 0 and self.path.is_file():
            with self.path.open() as f:
                for row in csv.DictReader(f):
                    if int(row["iter"]) < start_iter:
                        self.rows.append(
                            (int(row["iter"]), _num(row["train_loss"]), _num(row["val_loss"]))
                        )
        self._write()

    def add(self, iter_num: int, train: float | None, val: float | None) -> None:
        self.rows.append((iter_num, train, val))
        with self.path.open("a") as f:
            f.write(f"{iter_num},{_fmt(train)},{_fmt(val)}\n")

    def _write(self) -> None:
        tmp = self.path.with_name(LOSS_CSV + ".tmp")
        with tmp.open("w") as f:
            f.write("iter,train_loss,val_loss\n")
            for it, train, val in self.rows:
                f.write(f"{it},{_fmt(train)},{_fmt(val)}\n")
        tmp.replace(self.path)

    def plot(self) -> None:
        write_loss_png(self.png, self.rows)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _num(text: str) -> float | None:
    return float(text) if text else None


# -- distributed -------------------------------------------------------------------------------


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK (also across nodes); without them: one process."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=int(os.environ["WORLD_SIZE"]),
    )
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return info


def _all_mean(value: float, info: DistInfo, device: torch.device) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


# -- the run -----------------------------------------------------------------------------------


@dataclass
class TrainResult:
    iter_num: int
    best_val_loss: float
    step_losses: dict[int, float] = field(default_factory=dict)  # iter -> global batch loss
    val_losses: dict[int, float] = field(default_factory=dict)
    tokens_per_second: float = 0.0
    checkpoint: Path | None = None


def resolve_device(cfg: TrainConfig, info: DistInfo) -> str:
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and info.enabled:
        device = f"cuda:{info.local_rank}"
    return device


def resolve_dtype(cfg: TrainConfig, device_type: str) -> torch.dtype:
    if cfg.dtype == "auto":
        if device_type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if cfg.dtype not in dtypes:
        raise ValueError(f"--dtype={cfg.dtype}: choose auto, float32, bfloat16 or float16")
    if cfg.dtype == "float16" and device_type != "cuda":
        raise ValueError("--dtype=float16 needs a CUDA device; use bfloat16 or float32 on CPU")
    return dtypes[cfg.dtype]


def train(cfg: TrainConfig) -> TrainResult:
    if not cfg.data_dir:
        raise ValueError("--data_dir is required (a directory written by llmvox-prepare)")
    device = resolve_device(cfg, DistInfo())
    info = init_distributed(device)
    device = resolve_device(cfg, info)
    try:
        result = _train(cfg, info, device)
        if info.enabled:
            # Rank 0 finishes later (evaluation, checkpoint): tearing the group down while a
            # peer still has collectives in flight aborts that peer's process at exit.
            dist.barrier()
        return result
    finally:
        if info.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, info: DistInfo, device_name: str) -> TrainResult:
    """nanoGPT's loop: at each eval_interval (and at the end) evaluate and checkpoint, then take
    one optimisation step; the steps themselves are `_Run`'s methods."""
    run = _Run(cfg, info, device_name)
    iter_num, best_val_loss = run.start_iter, run.start_best_val_loss
    result = TrainResult(iter_num=iter_num, best_val_loss=best_val_loss)
    tokens_done, train_seconds = 0, 0.0

    while True:
        lr = run.set_learning_rate(iter_num)
        last = iter_num >= cfg.max_iters
        evaluation: _Evaluation | None = None
        if iter_num % cfg.eval_interval == 0 or last:
            evaluation = run.evaluate()
            if evaluation.val is not None:
                result.val_losses[iter_num] = evaluation.val
            run.log_evaluation(iter_num, evaluation, lr)
            improved = evaluation.score < best_val_loss
            best_val_loss = min(best_val_loss, evaluation.score)
            if info.master and iter_num > 0 and (improved or cfg.always_save_checkpoint):
                result.checkpoint = run.save(iter_num, best_val_loss)
        if last or (iter_num == 0 and cfg.eval_only):
            run.log_final(iter_num, evaluation)
            break

        started = time.perf_counter()
        local_loss, local_tokens = run.optimisation_step(iter_num)
        # Timed before the all-reduces below: tokens/s measures the step, not the bookkeeping.
        train_seconds += time.perf_counter() - started
        step_loss = _all_mean(local_loss, info, run.device)
        tokens_done += int(_all_mean(float(local_tokens), info, run.device) * info.world_size)
        result.step_losses[iter_num] = step_loss
        run.log_step(iter_num, step_loss, lr, evaluation)
        iter_num += 1

    run.close()
    result.iter_num = iter_num
    result.best_val_loss = best_val_loss
    result.tokens_per_second = tokens_done / train_seconds if train_seconds > 0 else 0.0
    return result


@dataclass(frozen=True)
class _Evaluation:
    train: float
    val: float | None  # None without a validation split

    @property
    def score(self) -> float:
        """What "best" compares: the validation loss, the training loss without a split."""
        return self.val if self.val is not None else self.train


class _Run:
    """One run's model, optimiser, data and outputs, with its steps as methods. Set up in the
    original loop's order: the random draws, and so the results, depend on it."""

    def __init__(self, cfg: TrainConfig, info: DistInfo, device_name: str) -> None:
        self.cfg, self.info = cfg, info
        self.device = device = torch.device(device_name)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.accum_local = cfg.gradient_accumulation_steps // info.world_size
        if self.accum_local * info.world_size != cfg.gradient_accumulation_steps:
            raise ValueError(
                f"--gradient_accumulation_steps={cfg.gradient_accumulation_steps} must be a "
                f"multiple of the number of processes ({info.world_size})"
            )
        self.out_dir = Path(cfg.out_dir)
        if info.master:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_path = self.out_dir / cfg.checkpoint_filename
        # Same seed on every rank for the data order; dropout differs per rank as in nanoGPT.
        torch.manual_seed(cfg.seed + info.rank)
        dtype = resolve_dtype(cfg, device.type)

        checkpoint = _load_init_checkpoint(cfg)
        # A checkpoint's block_size wins over the flag: its position table has that many rows.
        block_size = (
            int(checkpoint["model_args"]["block_size"])
            if checkpoint is not None
            else cfg.block_size
        )
        self.data = PreparedData(cfg.data_dir, val_fraction=cfg.val_fraction, block_size=block_size)
        self.model_cfg, model, self.start_iter, self.start_best_val_loss = _build_model(
            cfg, self.data, checkpoint
        )
        model.to(device)
        self.optimizer = configure_optimizer(model, cfg, device.type)
        if checkpoint is not None and cfg.init_from == "resume":
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        del checkpoint  # free the memory before training

        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        self.autocast: contextlib.AbstractContextManager[Any] = (
            torch.autocast(device_type=device.type, dtype=dtype)
            if dtype != torch.float32
            else contextlib.nullcontext()
        )
        # `raw` evaluates and is saved (compiled keys and all); `net` (DDP around it) trains.
        self.raw: nn.Module = torch.compile(model) if cfg.compile else model  # type: ignore[assignment]
        self.net: nn.Module = self.raw
        if info.enabled:
            self.net = nn.parallel.DistributedDataParallel(
                self.raw, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.train_sampler = BucketedSampler(self.data.train.lengths, cfg.batch_size, cfg.seed)
        self.val_sampler = (
            BucketedSampler(self.data.val.lengths, cfg.batch_size, cfg.seed + 1)
            if self.data.val.items
            else None
        )

        if info.master:
            log.info(
                "data: %d train / %d val items; model %s, %.2f M parameters; global batch %d "
                "(%d per micro-step × %d micro-steps × %d processes); device %s, %s",
                len(self.data.train.items),
                len(self.data.val.items),
                self.model_cfg.to_model_args(),
                model.num_parameters() / 1e6,
                cfg.batch_size * cfg.gradient_accumulation_steps,
                cfg.batch_size,
                self.accum_local,
                info.world_size,
                device,
                dtype,
            )
        self.wandb_run = _start_wandb(cfg) if cfg.wandb_log and info.master else None
        self.loss_log = LossLog(self.out_dir, self.start_iter) if info.master else None
        self.progress = _progress(cfg, self.start_iter, info.master)

    # -- steps --------------------------------------------------------------------------------

    def set_learning_rate(self, iter_num: int) -> float:
        lr = get_lr(iter_num, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _batch(
        self, split_items: list[Any], sampler: BucketedSampler, index: int
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        batch = self.data.batch([split_items[i] for i in sampler.micro_batch(index)])
        return batch.x.to(self.device), batch.targets.to(self.device), batch.speech_tokens

    @torch.no_grad()
    def _estimate(self, split_items: list[Any], sampler: BucketedSampler) -> float:
        # Fixed micro-batches (from number 0) every time: evaluations compare like with like.
        self.raw.eval()
        losses = []
        for k in range(max(1, self.cfg.eval_iters // self.info.world_size)):
            x, y, _ = self._batch(split_items, sampler, k * self.info.world_size + self.info.rank)
            with self.autocast:
                _, loss = self.raw(x, y)
            losses.append(float(loss))
        self.raw.train()
        return _all_mean(sum(losses) / len(losses), self.info, self.device)

    def evaluate(self) -> _Evaluation:
        """Mean loss over the first eval_iters micro-batches of each split, on every rank."""
        train_loss = self._estimate(self.data.train.items, self.train_sampler)
        val_loss = (
            self._estimate(self.data.val.items, self.val_sampler) if self.val_sampler else None
        )
        return _Evaluation(train_loss, val_loss)

    def optimisation_step(self, iter_num: int) -> tuple[float, int]:
        """One optimiser step over this rank's micro-batches of step `iter_num`: this rank's
        loss (averaged over its micro-steps) and speech tokens."""
        step_loss = 0.0
        step_tokens = 0
        micro = rank_micro_batches(
            iter_num, self.cfg.gradient_accumulation_steps, self.info.rank, self.info.world_size
        )
        for k, index in enumerate(micro):
            x, y, tokens = self._batch(self.data.train.items, self.train_sampler, index)
            step_tokens += tokens
            # Gradients are all-reduced only on the last micro-step (DDP no_sync before).
            sync = k == len(micro) - 1
            with _no_sync(self.net, not sync), self.autocast:
                _, loss = self.net(x, y)
                loss = loss / self.accum_local
            self.scaler.scale(loss).backward()
            step_loss += float(loss.detach())
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.raw.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return step_loss, step_tokens

    def save(self, iter_num: int, best_val_loss: float) -> Path:
        """OUT/<checkpoint_filename> in the published layout (and OUT/ckpt_<iter>.pt with
        always_save_checkpoint); rank 0 only."""
        state = build_checkpoint(
            self.raw, self.optimizer, self.model_cfg, iter_num, best_val_loss, self.cfg
        )
        save_checkpoint(self.ckpt_path, state)
        if self.cfg.always_save_checkpoint:
            save_checkpoint(self.out_dir / f"ckpt_{iter_num}.pt", state)
        return self.ckpt_path

    # -- logging ------------------------------------------------------------------------------

    def log_evaluation(self, iter_num: int, evaluation: _Evaluation, lr: float) -> None:
        if not self.info.master:
            return
        log.info(
            "step %d: train loss %.4f, val loss %s",
            iter_num,
            evaluation.train,
            _fmt(evaluation.val),
        )
        if self.wandb_run is not None:
            self.wandb_run.log(
                {
                    "iter": iter_num,
                    "train/loss": evaluation.train,
                    "val/loss": evaluation.val,
                    "lr": lr,
                }
            )

    def log_step(
        self, iter_num: int, step_loss: float, lr: float, evaluation: _Evaluation | None
    ) -> None:
        """loss.csv gets the evaluation's row at eval steps, else the step loss every
        log_interval steps."""
        if self.loss_log is not None:
            if evaluation is not None:
                self.loss_log.add(iter_num, evaluation.train, evaluation.val)
            elif iter_num % self.cfg.log_interval == 0:
                self.loss_log.add(iter_num, step_loss, None)
            if self.wandb_run is not None and iter_num % self.cfg.log_interval == 0:
                self.wandb_run.log({"iter": iter_num, "train/step_loss": step_loss, "lr": lr})
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")

    def log_final(self, iter_num: int, evaluation: _Evaluation | None) -> None:
        if self.loss_log is None:
            return
        if evaluation is not None:
            self.loss_log.add(iter_num, evaluation.train, evaluation.val)
        self.loss_log.plot()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _load_init_checkpoint(cfg: TrainConfig) -> dict[str, Any] | None:
    if cfg.init_from == "scratch":
        return None
    path = (
        Path(cfg.out_dir) / cfg.checkpoint_filename
        if cfg.init_from == "resume"
        else Path(cfg.init_from)
    )
    if not path.is_file():
        raise FileNotFoundError(f"--init_from={cfg.init_from}: no checkpoint at {path}")
    checkpoint = load_trusted(path, map_location="cpu")
    if "model" not in checkpoint or "model_args" not in checkpoint:
        raise KeyError(f"{path} is not an LLMVoX checkpoint (no 'model' / 'model_args')")
    if cfg.init_from == "resume" and "optimizer" not in checkpoint:
        raise KeyError(f"{path} has no optimizer state to resume; fine-tune with --init_from=PATH")
    checkpoint["_path"] = str(path)
    return checkpoint


def _build_model(
    cfg: TrainConfig, data: PreparedData, checkpoint: dict[str, Any] | None
) -> tuple[GPTConfig, LLMVoXDecoder, int, float]:
    if checkpoint is None:
        model_cfg = resolve_model_config(cfg, data)
        model = LLMVoXDecoder(model_cfg)
        init_weights(model, cfg.seed)
        return model_cfg, model.train(), 0, math.inf
    source = checkpoint["_path"]
    args = dict(checkpoint["model_args"])
    if cfg.init_from != "resume":
        # Fine-tuning may change dropout; every size comes from the checkpoint.
        args["dropout"] = cfg.dropout
    model_cfg = GPTConfig.from_model_args(args)
    check_fits_tables(model_cfg, data, source)
    if cfg.n_embd is not None and cfg.n_embd != model_cfg.n_embd:
        raise ValueError(
            f"--n_embd={cfg.n_embd} conflicts with {source} (n_embd={model_cfg.n_embd})"
        )
    model = LLMVoXDecoder(model_cfg)
    model.load_state_dict(clean_decoder_state_dict(checkpoint["model"]))
    if cfg.init_from == "resume":
        best = float(checkpoint.get("best_val_loss", math.inf))
        return model_cfg, model.train(), int(checkpoint["iter_num"]), best
    return model_cfg, model.train(), 0, math.inf


@contextlib.contextmanager
def _no_sync(net: nn.Module, skip: bool) -> Iterator[None]:
    if skip and isinstance(net, nn.parallel.DistributedDataParallel):
        with net.no_sync():
            yield
    else:
        yield


def _progress(cfg: TrainConfig, start: int, master: bool) -> Any:
    if not (cfg.progress and master):
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.max_iters, initial=start, desc="train", unit="step", dynamic_ncols=True)


def _start_wandb(cfg: TrainConfig) -> Any:
    try:
        import wandb
    except ImportError as error:
        raise RuntimeError(
            "--wandb_log=True needs the wandb package: pip install wandb (or drop the flag)"
        ) from error
    return wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=asdict(cfg))
