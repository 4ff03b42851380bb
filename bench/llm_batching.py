"""LLM service under concurrent streams: continuous batching against one-at-a-time generation,
in the same run.

Starts `llmvox-llm serve` on SmolLM2-135M-Instruct twice: with continuous batching
(`--max_batch` = the largest stream count) and one call at a time (`--max_batch 1`, the others
queue: what the server did before batching). For each stream count K (`--streams`, default
1 4 16), K client threads each send `--rounds` greedy requests back to back (prompts asking for
long answers, `--max-tokens` tokens at most); all K start together. Reported per mode and K:
aggregate tokens/s (all completion tokens over the phase's wall time), and time to first token
(client: send to first delta) p50/p95. Then each batched figure against the one-at-a-time one
of the same K (machines are noisy, ratios less so).

    python bench/llm_batching.py              # table + JSON file under bench/results/
    python bench/llm_batching.py --json       # one JSON object on stdout
    python bench/llm_batching.py --streams 1 4 --rounds 1 --max-tokens 32
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from llmvox_common._proto.llmvox.llm.v1 import llm_pb2, llm_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asr_llm import REPO, free_port, server, smollm2
from results_file import write_report

PROMPTS = (
    "Write a long story about a lighthouse keeper and a storm.",
    "Explain in detail how bread is made, step by step.",
    "Describe a walk through a busy market in a big city.",
    "Tell me about the history of sailing ships, with many details.",
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def phase(stub: llm_pb2_grpc.LlmServiceStub, streams: int, rounds: int, max_tokens: int) -> dict:
    """K streams started together, each `rounds` requests back to back."""
    ttfts: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(streams + 1)

    def stream(index: int) -> None:
        start.wait()
        for round_ in range(rounds):
            prompt = PROMPTS[(index + round_) % len(PROMPTS)]
            request = llm_pb2.GenerateRequest(
                messages=[llm_pb2.Message(role=llm_pb2.ROLE_USER, text=prompt)],
                sampling=llm_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens),
            )
            sent = time.perf_counter()
            first: float | None = None
            try:
                for reply in stub.Generate(request, timeout=1800):
                    if reply.HasField("final"):
                        with lock:
                            tokens.append(reply.final.usage.completion_tokens)
                    elif first is None:
                        first = time.perf_counter() - sent
            except grpc.RpcError as error:
                with lock:
                    errors.append(f"{error.code().name}: {error.details()}")
                return
            if first is not None:
                with lock:
                    ttfts.append(first)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if errors:
        raise SystemExit(f"{len(errors)} calls failed: {errors[:3]}")
    return {
        "streams": streams,
        "requests": len(tokens),
        "wall_s": wall,
        "completion_tokens": sum(tokens),
        "aggregate_tokens_per_s": sum(tokens) / wall,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p95_s": percentile(ttfts, 0.95),
    }


def run_mode(
    model: Path, work: Path, name: str, max_batch: int, args: argparse.Namespace
) -> list[dict]:
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("llmvox-llm")),
        "serve",
        "--port",
        str(port),
        "--model",
        str(model),
        "--device",
        args.device,
        "--max_tokens",
        str(args.max_tokens),
        "--max_batch",
        str(max_batch),
        "--max_queue",
        str(max(args.streams) * 2),
    ]
    results = []
    with server(command, port, work / f"{name}.log") as channel:
        stub = llm_pb2_grpc.LlmServiceStub(channel)
        phase(stub, 1, 1, 4)  # warm the client and the server's first-call paths
        for streams in args.streams:
            result = phase(stub, streams, args.rounds, args.max_tokens)
            print(
                f"  {name:>8} K={streams:>2}: {result['aggregate_tokens_per_s']:6.1f} tokens/s, "
                f"TTFT p50 {result['ttft_p50_s']:.2f} s",
                file=sys.stderr,
            )
            results.append(result)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=1, help="requests per stream")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    model = smollm2()
    report: dict[str, Any] = {
        "benchmark": "llm_batching",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "llm_model": "SmolLM2-135M-Instruct (float32)",
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        report["batched"] = run_mode(model, work, "batched", max(args.streams), args)
        report["one_at_a_time"] = run_mode(model, work, "serial", 1, args)
    for batched, serial in zip(report["batched"], report["one_at_a_time"], strict=True):
        batched["tokens_per_s_vs_one_at_a_time"] = (
            batched["aggregate_tokens_per_s"] / serial["aggregate_tokens_per_s"]
        )
        batched["ttft_p50_vs_one_at_a_time"] = batched["ttft_p50_s"] / serial["ttft_p50_s"]
    out = write_report("llm_batching", report, args.out_dir)
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"\n== LLM service, {report['llm_model']}, greedy, up to {args.max_tokens} tokens, "
        f"{args.rounds} request(s) per stream"
    )
    print(
        f"{'streams':>7} | {'batched tok/s':>13} {'TTFT p50':>9} {'p95':>7} | "
        f"{'1-at-a-time tok/s':>17} {'TTFT p50':>9} {'p95':>7} | {'tok/s x':>7}"
    )
    for batched, serial in zip(report["batched"], report["one_at_a_time"], strict=True):
        print(
            f"{batched['streams']:>7} | {batched['aggregate_tokens_per_s']:>13.1f} "
            f"{batched['ttft_p50_s']:>8.2f}s {batched['ttft_p95_s']:>6.2f}s | "
            f"{serial['aggregate_tokens_per_s']:>17.1f} {serial['ttft_p50_s']:>8.2f}s "
            f"{serial['ttft_p95_s']:>6.2f}s | {batched['tokens_per_s_vs_one_at_a_time']:>7.2f}"
        )
    base = report["batched"][0]
    for row in report["batched"][1:]:
        print(
            f"batched, {row['streams']} streams: aggregate tokens/s "
            f"{row['aggregate_tokens_per_s'] / base['aggregate_tokens_per_s']:.1f}x the "
            f"1-stream figure; TTFT p50 {row['ttft_p50_s'] / base['ttft_p50_s']:.1f}x"
        )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
