"""Decoder and vocoder speed at the published model size (random weights), with a baseline.

Measures, in one run on each available device:
- LLMVoX speech tokens/s of our batched KV-cache decoder at batch 1, 8, 32, 64 (aggregate over
  the batch), and of a baseline that mimics the original per-token loop (upstream_baseline.py);
- WavTokenizer decode real-time factor (compute seconds per second of audio) for chunk sizes
  the streaming schedule uses (38 = a first chunk of 10 behind 24 tokens of context, plus the
  4 held back), at batch 1 and 8, per vocoder precision, with the SNR of its audio against
  fp32's.
Our decoder runs in each precision (fp32 = the original numbers; bf16; int8 on CPUs, the
per-row batch-invariant `Int8Linear`); each row
reports the share of greedy tokens that agree with fp32 under teacher forcing. Speed-ups are
ratios against the baseline measured in the same run, since absolute numbers on shared machines
are noisy. Random weights: the tokens are meaningless, the arithmetic is real.

    python bench/decoder.py            # table + JSON file under bench/results/
    python bench/decoder.py --json     # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import write_report
from upstream_baseline import UpstreamStyleLoop

from llmvox_tts.constants import HOP_LENGTH, SAMPLE_RATE
from llmvox_tts.loading.bundle import random_decoder
from llmvox_tts.model.byt5_tokenizer import ByT5Tokenizer
from llmvox_tts.model.gpt import GPTConfig, LLMVoXDecoder
from llmvox_tts.model.inputs import InputBuilder
from llmvox_tts.model.precision import (
    PRECISIONS,
    VOCODER_PRECISIONS,
    wavtokenizer_with_precision,
    with_precision,
)
from llmvox_tts.model.speech_decoder import SpeechTokenDecoder
from llmvox_tts.model.wavtokenizer import WavTokenizer, WavTokenizerConfig
from llmvox_tts.model.wavtokenizer.random_init import random_wavtokenizer_state_dict

PUBLISHED_GPT = GPTConfig(
    n_layer=4, n_head=8, n_embd=768, block_size=8192, bias=False, vocab_size=4096
)
TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away."


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Median wall time of `repeats` runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def teacher_forced_agreement(
    reference: LLMVoXDecoder,
    other: torch.nn.Module,
    builder: InputBuilder,
    text_ids: list[int],
    tokens: list[int],
) -> float:
    """Share of steps where `other` picks the same greedy token as `reference`, both reading
    the reference's token history (so one early difference does not count twice)."""
    steps = len(tokens)
    ids = torch.tensor([text_ids[n] if n < len(text_ids) else 384 for n in range(steps)])
    prev = torch.tensor([builder.zero_row, *tokens[:-1]])
    x = builder.rows(ids.to(builder.codebook.device), prev.to(builder.codebook.device))[None]
    dummy = torch.zeros(1, steps, dtype=torch.long, device=x.device)
    ref, _ = reference(x, dummy)
    dtype = other.transformer.wpe.weight.dtype
    got, _ = other(x.to(dtype), dummy)
    return (ref.argmax(-1) == got.argmax(-1)).float().mean().item()


def bench_device(device: torch.device, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = random_decoder(PUBLISHED_GPT, seed=0).to(device)
    gen = torch.Generator().manual_seed(1)
    text_table = torch.randn(386, 256, generator=gen).to(device)
    wt_cfg = WavTokenizerConfig.published()
    wavtokenizer = WavTokenizer(wt_cfg)
    wavtokenizer.load_state_dict(random_wavtokenizer_state_dict(wt_cfg, seed=2))
    wavtokenizer = wavtokenizer.to(device).eval()
    codebook = wavtokenizer.codebook
    text_ids = ByT5Tokenizer().encode_words(TEXT)
    steps = args.steps

    baseline = UpstreamStyleLoop(model, text_table, codebook)
    base_tokens: list[int] = []

    def run_baseline() -> None:
        base_tokens[:] = baseline.generate(text_ids, steps)

    base_s = best_of(run_baseline, args.repeats, device)
    base_rate = steps / base_s
    result: dict = {
        "device": str(device),
        "steps_per_sequence": steps,
        "baseline_tokens_per_s": base_rate,
        "decoder": [],
        "wavtokenizer": [],
    }

    precisions = [p for p in args.precisions if device.type == "cpu" or p != "int8"]
    builder = InputBuilder(text_table, codebook)
    for precision in precisions:
        variant = with_precision(model, precision)
        batches = args.batches if precision == "fp32" else [b for b in args.batches if b in (1, 32)]
        agreement = teacher_forced_agreement(model, variant, builder, text_ids, base_tokens)
        for batch in batches:
            dec = SpeechTokenDecoder(
                variant, text_table, codebook, num_slots=batch, initial_capacity=steps
            )
            slots = list(range(batch))
            first_row: list[int] = []

            def run_ours(
                dec: SpeechTokenDecoder = dec,
                slots: list[int] = slots,
                first_row: list[int] = first_row,
            ) -> None:
                for s in slots:
                    dec.start_segment(s)
                first_row.clear()
                for n in range(steps):
                    tid = text_ids[n] if n < len(text_ids) else 384
                    first_row.append(dec.step(slots, [tid] * len(slots))[0])

            seconds = best_of(run_ours, args.repeats, device)
            rate = batch * steps / seconds
            result["decoder"].append(
                {
                    "precision": precision,
                    "batch": batch,
                    "tokens_per_s": rate,
                    "step_ms": 1000 * seconds / steps,
                    "speedup": rate / base_rate,
                    "same_tokens_as_baseline": first_row == base_tokens,
                    "teacher_forced_token_agreement": agreement,
                }
            )

    vocoder_precisions = [p for p in args.vocoder_precisions if device.type == "cpu" or p != "int8"]
    vocoders = {p: wavtokenizer_with_precision(wavtokenizer, p) for p in vocoder_precisions}
    gen = torch.Generator().manual_seed(3)
    for batch, n_tokens in [(b, n) for b in args.vocoder_batches for n in args.chunks]:
        codes = torch.randint(0, codebook.shape[0], (batch, n_tokens), generator=gen).to(device)
        with torch.inference_mode():
            reference = wavtokenizer.decode(codes).float()
        for precision, vocoder in vocoders.items():

            def run_decode(codes: torch.Tensor = codes, vocoder: torch.nn.Module = vocoder) -> None:
                with torch.inference_mode():
                    vocoder.decode(codes)

            seconds = best_of(run_decode, args.repeats, device)
            audio_s = batch * n_tokens * HOP_LENGTH / SAMPLE_RATE
            with torch.inference_mode():
                error = (vocoder.decode(codes).float() - reference).square().sum()
            snr = 10 * math.log10(reference.square().sum().item() / max(error.item(), 1e-30))
            result["wavtokenizer"].append(
                {
                    "precision": precision,
                    "batch": batch,
                    "tokens": n_tokens,
                    "seconds": seconds,
                    "real_time_factor": seconds / audio_s,
                    "snr_db_vs_fp32": min(snr, 200.0),
                }
            )

    def speedup(precision: str, batch: int) -> float | None:
        rows = [r for r in result["decoder"] if (r["precision"], r["batch"]) == (precision, batch)]
        return rows[0]["speedup"] if rows else None

    result["speedups"] = {
        p: {"batch1": speedup(p, 1), "batch32_aggregate": speedup(p, 32)} for p in precisions
    }
    # Headline figures: exact fp32, and the fastest precision with its name.
    best1 = max(precisions, key=lambda p: speedup(p, 1) or 0.0)
    best32 = max(precisions, key=lambda p: speedup(p, 32) or 0.0)
    result["speedup_batch1_fp32"] = speedup("fp32", 1)
    result["speedup_batch32_aggregate_fp32"] = speedup("fp32", 32)
    result["speedup_batch1"] = speedup(best1, 1)
    result["speedup_batch1_precision"] = best1
    result["speedup_batch32_aggregate"] = speedup(best32, 32)
    result["speedup_batch32_aggregate_precision"] = best32
    return result


def print_table(report: dict) -> None:
    for res in report["devices"]:
        print(
            f"\n== {res['device']}  ({res['steps_per_sequence']} steps per sequence, "
            "published size, random weights)"
        )
        print(
            f"baseline (upstream-style loop, fp32, batch 1): "
            f"{res['baseline_tokens_per_s']:.1f} tok/s"
        )
        print(
            f"{'precision':>9} {'batch':>6} {'tokens/s':>10} {'step ms':>8} "
            f"{'x baseline':>11} {'same tokens':>12} {'agreement':>10}"
        )
        for row in res["decoder"]:
            print(
                f"{row['precision']:>9} {row['batch']:>6} {row['tokens_per_s']:>10.1f} "
                f"{row['step_ms']:>8.2f} {row['speedup']:>10.2f}x "
                f"{row['same_tokens_as_baseline']!s:>12} "
                f"{row['teacher_forced_token_agreement']:>10.3f}"
            )
        print(f"{'vocoder':>9} {'batch':>6} {'chunk':>6} {'decode s':>10} {'RTF':>8} {'SNR dB':>7}")
        for row in res["wavtokenizer"]:
            print(
                f"{row['precision']:>9} {row['batch']:>6} {row['tokens']:>6} "
                f"{row['seconds']:>10.4f} {row['real_time_factor']:>8.4f} "
                f"{row['snr_db_vs_fp32']:>7.1f}"
            )
        print(
            f"fp32 (exact): batch 1 {res['speedup_batch1_fp32']:.2f}x, batch 32 aggregate "
            f"{res['speedup_batch32_aggregate_fp32']:.2f}x"
        )
        print(
            f"speedup_batch1 = {res['speedup_batch1']:.2f}x ({res['speedup_batch1_precision']})"
            f"   speedup_batch32_aggregate = {res['speedup_batch32_aggregate']:.2f}x "
            f"({res['speedup_batch32_aggregate_precision']})"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--steps", type=int, default=150, help="decoder steps per sequence")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument(
        "--precisions", nargs="+", default=["fp32", "bf16", "int8"], choices=list(PRECISIONS)
    )
    parser.add_argument("--chunks", type=int, nargs="+", default=[10, 38, 75, 270])
    parser.add_argument(
        "--vocoder-precisions",
        nargs="+",
        default=["fp32", "bf16", "int8"],
        choices=list(VOCODER_PRECISIONS),
    )
    parser.add_argument("--vocoder-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--devices", nargs="+", default=None, help="default: cpu, and cuda when available"
    )
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    devices = args.devices or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    report = {
        "benchmark": "decoder",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "devices": [bench_device(torch.device(d), args) for d in devices],
    }
    first = report["devices"][0]
    for key in (
        "speedup_batch1",
        "speedup_batch1_precision",
        "speedup_batch32_aggregate",
        "speedup_batch32_aggregate_precision",
        "speedup_batch1_fp32",
        "speedup_batch32_aggregate_fp32",
    ):
        report[key] = first[key]
    out = write_report("decoder", report, args.out_dir)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
