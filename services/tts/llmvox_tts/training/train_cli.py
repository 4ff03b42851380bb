"""`llmvox-train`: train the LLMVoX decoder on a directory written by `llmvox-prepare`.

Flags and defaults follow the original train.py (`--n_layer=4` and `--n_layer 4` both work;
booleans take True/False/1/0, a bare `--compile` means True). Distributed:

    torchrun --standalone --nproc_per_node=4 -m llmvox_tts.training.train_cli --data_dir ...

`--batch_size` is per process and micro-step; `--gradient_accumulation_steps` is the total over
all processes (divided by their number, as nanoGPT does), so the global batch per optimizer step
is batch_size × gradient_accumulation_steps whatever the number of processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from typing import Any

from .trainer import TrainConfig, train


def str2bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"true", "1", "yes", "y", "on"}:
        return True
    if value in {"false", "0", "no", "n", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


HELP = {
    "data_dir": "prepared directory (llmvox-prepare --out_dir)",
    "out_dir": "checkpoints, loss.csv and loss.png go here",
    "n_embd": "optional: must equal text width + codebook width of the prepared tables",
    "batch_size": "items per micro-step and process",
    "gradient_accumulation_steps": "micro-steps per optimizer step, total over all processes",
    "init_from": "scratch, resume (OUT/<checkpoint_filename>) or a checkpoint path to fine-tune",
    "val_fraction": "share of items (by hashed id) held out for validation",
    "device": "auto, cpu, cuda, cuda:N",
    "dtype": "auto (bf16 on CUDA if supported, else fp16; fp32 on CPU), float32, bfloat16, float16",
    "progress": "show a progress bar on rank 0",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmvox-train",
        description="Train the LLMVoX decoder (nanoGPT-style) on prepared data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in dataclasses.fields(TrainConfig):
        default: Any = f.default
        kwargs: dict[str, Any] = {"default": default, "help": HELP.get(f.name, " ")}
        if isinstance(default, bool):
            kwargs.update(type=str2bool, nargs="?", const=True, metavar="BOOL")
        elif f.name == "n_embd":
            kwargs.update(type=int)
        else:
            kwargs.update(type=type(default))
        if f.name == "data_dir":
            kwargs.update(required=True)
        parser.add_argument(f"--{f.name}", **kwargs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = TrainConfig(**vars(args))
    try:
        result = train(cfg)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as error:
        print(f"llmvox-train: error: {error}", file=sys.stderr)
        return 2
    logging.getLogger(__name__).info(
        "done at iter %d, best val loss %.4f, %.0f speech tokens/s; checkpoint %s",
        result.iter_num,
        result.best_val_loss,
        result.tokens_per_second,
        result.checkpoint,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
