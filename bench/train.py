"""Training throughput of the LLMVoX decoder at the published size (random init).

Speech tokens per second of one optimizer step (forward + backward + clip + AdamW) at batch 2 ×
~300 decoder steps, as `llmvox-train` runs it: fp32 on CPU; on CUDA bf16 autocast, optionally
compiled (`--compile`). Random inputs: the arithmetic is the real one, the data does not matter.

    python bench/train.py            # table + JSON file under bench/results/
    python bench/train.py --json     # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from results_file import write_report

from llmvox_tts.model.gpt import GPTConfig, LLMVoXDecoder
from llmvox_tts.training.trainer import TrainConfig, configure_optimizer, init_weights

PUBLISHED_GPT = GPTConfig(
    n_layer=4, n_head=8, n_embd=768, block_size=8192, bias=False, vocab_size=4096
)


def bench_device(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    model = LLMVoXDecoder(PUBLISHED_GPT)
    init_weights(model, seed=0)
    model.to(device).train()
    optimizer = configure_optimizer(model, TrainConfig(), device.type)
    net: Any = torch.compile(model) if args.compile and device.type == "cuda" else model
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    autocast = (
        torch.autocast(device_type=device.type, dtype=dtype)
        if dtype != torch.float32
        else contextlib.nullcontext()
    )
    generator = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(args.batch_size, args.seq_len, 768, generator=generator), dim=-1)
    y = torch.randint(0, 4096, (args.batch_size, args.seq_len), generator=generator)
    x, y = x.to(device), y.to(device)

    def step() -> None:
        with autocast:
            _, loss = net(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "device": str(device),
        "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "compiled": bool(args.compile and device.type == "cuda"),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "step_seconds_median": median,
        "tokens_per_second": args.batch_size * args.seq_len / median,
        "parameters_m": model.num_parameters() / 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=300)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile on CUDA")
    parser.add_argument(
        "--devices", nargs="+", default=None, help="default: cpu, and cuda when available"
    )
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    devices = args.devices or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    report = {
        "benchmark": "train",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "devices": [bench_device(torch.device(d), args) for d in devices],
    }
    out = write_report("train", report, args.out_dir)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{'device':<10} {'dtype':<9} {'batch×seq':>10} {'step s':>8} {'tokens/s':>10}")
        for d in report["devices"]:
            shape = f"{d['batch_size']}×{d['seq_len']}"
            print(
                f"{d['device']:<10} {d['dtype']:<9} {shape:>10} "
                f"{d['step_seconds_median']:>8.3f} {d['tokens_per_second']:>10.0f}"
            )
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
