"""One TTS replica engine at the published model size (random weights): sessions vs throughput,
and the audio error at chunk joins.

Measures, in one run on each available device, the model-serving part of the replica pool
(`ReplicaEngine`, in process: no Redis, no network):
- sessions vs throughput: N concurrent sessions each speak one fixed sentence, bounded to a
  fixed number of speech tokens (random weights never emit end-of-audio). Two modes:
  * batched: one `ReplicaEngine(max_batch=N)`, all N jobs added at once, stepped until done;
  * one-at-a-time: `ReplicaEngine(max_batch=1)` serving the N jobs in turn (upstream-like).
    For large N it is measured on the first min(N, --sequential-sample) jobs and extrapolated
    linearly from the median job (the jobs are identical); `sequential_extrapolated_from` says
    on how many.
  Each N runs the two modes in turn, `--repeats` rounds; each mode's fastest run is reported
  (every total is kept). Per mode: total wall time, aggregate real-time factor
  (compute seconds per second of audio produced), audio seconds per second, and time to first
  part (TTFP, mean and max over the sessions; one-at-a-time session i waits for the i jobs
  before it). Headlines, ratios measured in the same run: `speedup_32` (one-at-a-time total /
  batched total at N=32) and `ttfp_ratio_32` (one-at-a-time mean TTFP / batched mean TTFP).
- chunk joins: one sentence's tokens decoded through `ReplicaEngine(max_batch=1,
  context_tokens=c)` with the default chunk schedule, joined, and compared with the same tokens
  decoded in one call (`decode_whole`): SNR in dB (overall, per chunk, and over the token
  before and after each join), and the sample jump at each join.

Random weights: the audio is noise, the arithmetic is real.

    python bench/tts_pool.py            # table + JSON file under bench/results/
    python bench/tts_pool.py --json     # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import torch
from results_file import write_report

from llmvox_tts.constants import (
    DEFAULT_INITIAL_DUMP_SIZE_1,
    DEFAULT_MAX_DUMP_SIZE,
    HOP_LENGTH,
    SAMPLE_RATE,
)
from llmvox_tts.loading.bundle import ModelBundle, random_decoder
from llmvox_tts.model.byt5_tokenizer import ByT5Tokenizer
from llmvox_tts.model.gpt import GPTConfig
from llmvox_tts.model.wavtokenizer import WavTokenizer, WavTokenizerConfig
from llmvox_tts.model.wavtokenizer.random_init import random_wavtokenizer_state_dict
from llmvox_tts.streaming.sentence_stream import SynthesisLimits
from llmvox_tts.worker.engine import ReplicaEngine, decode_whole

PUBLISHED_GPT = GPTConfig(
    n_layer=4, n_head=8, n_embd=768, block_size=8192, bias=False, vocab_size=4096
)
SENTENCE = "The quick brown fox jumps over the lazy dog near the river."  # 59 characters


def build_models(device: torch.device) -> ModelBundle:
    decoder = random_decoder(PUBLISHED_GPT, seed=0)
    text_table = torch.randn(386, 256, generator=torch.Generator().manual_seed(1))
    wt_cfg = WavTokenizerConfig.published()
    wavtokenizer = WavTokenizer(wt_cfg)
    wavtokenizer.load_state_dict(random_wavtokenizer_state_dict(wt_cfg, seed=2))
    bundle = ModelBundle(
        tokenizer=ByT5Tokenizer(),
        text_table=text_table,
        decoder=decoder,
        wavtokenizer=wavtokenizer.eval(),
        untrained=True,
        description="random weights (benchmark)",
    )
    return bundle.to(device)


def fixed_length(tokens: int) -> SynthesisLimits:
    """Every sentence stops after exactly `tokens` speech tokens (none emits end-of-audio)."""
    return SynthesisLimits(max_tokens_per_text_id=0.0, min_token_budget=tokens)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def add_sentence(engine: ReplicaEngine, key: str, args: argparse.Namespace) -> None:
    engine.add(key, first_chunk=args.first_chunk, max_chunk=args.max_chunk)
    engine.push_text(key, SENTENCE)
    engine.close_text(key)


def run_until_done(
    engine: ReplicaEngine, start: float, keys: set[str]
) -> tuple[dict[str, float], dict[str, list]]:
    """Step until every job in `keys` has sent its last part; returns each job's first-part
    time (seconds since `start`) and its parts in order."""
    first: dict[str, float] = {}
    parts: dict[str, list] = {k: [] for k in keys}
    remaining = set(keys)
    while remaining:
        if not engine.has_work:
            raise RuntimeError(f"engine idle with jobs left: {sorted(remaining)}")
        for part in engine.step():
            first.setdefault(part.job, time.perf_counter() - start)
            parts[part.job].append(part)
            if part.last:
                engine.remove(part.job)
                remaining.discard(part.job)
    return first, parts


def job_tokens(parts: list) -> list[int]:
    return [t for p in parts for t in p.tokens]


def job_samples(parts: list) -> int:
    return sum(p.pcm.shape[0] for p in parts)


def run_batched(models: ModelBundle, n: int, args: argparse.Namespace) -> dict:
    engine = ReplicaEngine(
        models, max_batch=n, context_tokens=args.context_tokens, limits=fixed_length(args.tokens)
    )
    keys = {f"s{i}" for i in range(n)}
    sync(models.device)
    start = time.perf_counter()
    for key in sorted(keys):
        add_sentence(engine, key, args)
    first, parts = run_until_done(engine, start, keys)
    total = time.perf_counter() - start
    audio_s = sum(job_samples(p) for p in parts.values()) / SAMPLE_RATE
    ttfp = list(first.values())
    token_lists = [job_tokens(p) for p in parts.values()]
    return {
        "total_s": total,
        "audio_s": audio_s,
        "real_time_factor": total / audio_s,
        "audio_s_per_s": audio_s / total,
        "ttfp_mean_s": statistics.fmean(ttfp),
        "ttfp_max_s": max(ttfp),
        "decoder_s": engine.stats.step_seconds,
        "vocoder_s": engine.stats.vocoder_seconds,
        "vocoder_calls": engine.stats.decode_calls,
        "tokens_per_session": len(token_lists[0]),
        "same_tokens_all_sessions": all(t == token_lists[0] for t in token_lists),
        "_tokens": token_lists[0],
    }


def run_sequential(models: ModelBundle, n: int, args: argparse.Namespace) -> dict:
    """Serve min(n, sample) identical jobs one after another; extrapolate to n (linearly, from
    the median job)."""
    measured = min(n, args.sequential_sample)
    engine = ReplicaEngine(
        models, max_batch=1, context_tokens=args.context_tokens, limits=fixed_length(args.tokens)
    )
    job_s: list[float] = []
    first_s: list[float] = []
    samples: list[int] = []
    tokens: list[int] = []
    for i in range(measured):
        key = f"q{i}"
        sync(models.device)
        start = time.perf_counter()
        add_sentence(engine, key, args)
        first, parts = run_until_done(engine, start, {key})
        job_s.append(time.perf_counter() - start)
        first_s.append(first[key])
        samples.append(job_samples(parts[key]))
        tokens = job_tokens(parts[key])
    if measured == n:
        job_times, first_times = job_s, first_s
    else:
        # Extrapolated: every job takes the median measured time (one job slowed by other load
        # would otherwise be multiplied by n / measured).
        job_times = [statistics.median(job_s)] * n
        first_times = [statistics.median(first_s)] * n
    scale = n / measured
    # Session i's first part: the i jobs before it, then its own first part.
    ttfp = [sum(job_times[:i]) + first_times[i] for i in range(n)]
    total = sum(job_times)
    audio_s = statistics.fmean(samples) * n / SAMPLE_RATE
    return {
        "total_s": total,
        "audio_s": audio_s,
        "real_time_factor": total / audio_s,
        "audio_s_per_s": audio_s / total,
        "ttfp_mean_s": statistics.fmean(ttfp),
        "ttfp_max_s": max(ttfp),
        "job_s_measured": job_s,
        "job_first_part_s_measured": first_s,
        # The engine's split of the measured jobs' time, scaled to the total.
        "decoder_s": engine.stats.step_seconds * total / sum(job_s),
        "vocoder_s": engine.stats.vocoder_seconds * total / sum(job_s),
        "vocoder_calls": round(engine.stats.decode_calls * scale),
        "sequential_extrapolated_from": measured,
        "_tokens": tokens,
    }


def fastest_run(runs: list[dict]) -> dict:
    """The fastest run, with every run's total alongside: load from other processes only ever
    adds time, so the fastest run is the one least disturbed."""
    chosen = min(runs, key=lambda r: r["total_s"])
    return {**chosen, "total_s_runs": [r["total_s"] for r in runs]}


def snr_db(reference: torch.Tensor, other: torch.Tensor) -> float | None:
    """10·log10(Σref² / Σ(ref−other)²); None when the two are identical (infinite SNR)."""
    noise = float(((reference - other) ** 2).sum())
    signal = float((reference**2).sum())
    return None if noise == 0 else 10 * math.log10(signal / noise)


def chunk_joins(models: ModelBundle, args: argparse.Namespace) -> dict:
    """Decode one sentence as the serving path does, for each context size, against one call."""
    rows = []
    reference_tokens: list[int] | None = None
    reference: torch.Tensor | None = None
    # Left context alone, then hold-back (which mends chunk ends) on top of the largest context.
    settings = [(c, 0) for c in args.contexts]
    settings += [(max(args.contexts), h) for h in args.holdbacks if h > 0]
    for context, holdback in settings:
        engine = ReplicaEngine(
            models,
            max_batch=1,
            context_tokens=context,
            holdback_tokens=holdback,
            limits=fixed_length(args.join_tokens),
        )
        add_sentence(engine, "j", args)
        _, parts = run_until_done(engine, time.perf_counter(), {"j"})
        chunks = [len(p.tokens) for p in parts["j"]]
        tokens = job_tokens(parts["j"])
        if reference_tokens is None:
            reference_tokens = tokens
            reference = decode_whole(models, tokens)
        elif tokens != reference_tokens:
            raise RuntimeError("the decoder gave different tokens for the same sentence")
        assert reference is not None
        joined = torch.cat([p.pcm for p in parts["j"]])
        if joined.shape != reference.shape:
            raise RuntimeError(f"joined {tuple(joined.shape)} != whole {tuple(reference.shape)}")
        # Sample jumps across each join, and the whole decode's at the same places.
        joins = [HOP_LENGTH * sum(chunks[: i + 1]) for i in range(len(chunks) - 1)]
        jumps = [float((joined[b] - joined[b - 1]).abs()) for b in joins]
        ref_jumps = [float((reference[b] - reference[b - 1]).abs()) for b in joins]
        # Error within one token (HOP_LENGTH samples) before the joins (the tail of a chunk,
        # decoded without the tokens that follow it) and after them (the head of the next chunk,
        # which context can help).
        before = torch.zeros_like(reference, dtype=torch.bool)
        after = torch.zeros_like(reference, dtype=torch.bool)
        for b in joins:
            before[max(0, b - HOP_LENGTH) : b] = True
            after[b : b + HOP_LENGTH] = True
        bounds = [0, *joins, reference.shape[0]]
        per_chunk = [snr_db(reference[a:b], joined[a:b]) for a, b in pairwise(bounds)]
        rows.append(
            {
                "context_tokens": context,
                "holdback_tokens": holdback,
                "chunks": chunks,
                "snr_db": snr_db(reference, joined),
                "snr_per_chunk_db": per_chunk,
                "snr_before_joins_db": snr_db(reference[before], joined[before]) if joins else None,
                "snr_after_joins_db": snr_db(reference[after], joined[after]) if joins else None,
                # The first chunk has no context to use: the part context can improve.
                "snr_after_first_chunk_db": (
                    snr_db(reference[joins[0] :], joined[joins[0] :]) if joins else None
                ),
                "max_abs_error": float((reference - joined).abs().max()),
                "join_jumps": jumps,
                "reference_jumps": ref_jumps,
                "max_join_jump": max(jumps, default=0.0),
                "max_reference_jump": max(ref_jumps, default=0.0),
                "vocoder_s": engine.stats.vocoder_seconds,
            }
        )
    assert reference is not None
    return {
        "tokens": args.join_tokens,
        "reference_rms": float(reference.pow(2).mean().sqrt()),
        "reference_peak": float(reference.abs().max()),
        "rows": rows,
    }


def bench_device(device: torch.device, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    models = build_models(device)
    # Warm-up (allocator, kernels): two short sentences batched, one alone.
    warm = argparse.Namespace(**{**vars(args), "tokens": 40, "sequential_sample": 1})
    run_batched(models, 2, warm)
    run_sequential(models, 1, warm)

    result: dict = {
        "device": str(device),
        "sentence": SENTENCE,
        "tokens_per_session": args.tokens,
        "audio_s_per_session": args.tokens * HOP_LENGTH / SAMPLE_RATE,
        "repeats": args.repeats,
        "first_chunk": args.first_chunk,
        "max_chunk": args.max_chunk,
        "context_tokens": args.context_tokens,
        "sessions": [],
    }
    for n in args.sessions:
        # Rounds alternate the modes, so a burst of load elsewhere hits both alike.
        rounds = [
            (run_batched(models, n, args), run_sequential(models, n, args))
            for _ in range(args.repeats)
        ]
        batched = fastest_run([b for b, _ in rounds])
        sequential = fastest_run([q for _, q in rounds])
        same = all(b["_tokens"] == q["_tokens"] == batched["_tokens"] for b, q in rounds)
        batched.pop("_tokens")
        sequential.pop("_tokens")
        result["sessions"].append(
            {
                "sessions": n,
                "batched": batched,
                "one_at_a_time": sequential,
                "sequential_extrapolated_from": sequential["sequential_extrapolated_from"],
                "speedup": sequential["total_s"] / batched["total_s"],
                "ttfp_ratio": sequential["ttfp_mean_s"] / batched["ttfp_mean_s"],
                "ttfp_max_ratio": sequential["ttfp_max_s"] / batched["ttfp_max_s"],
                "same_tokens_batched_and_alone": same,
            }
        )
    result["chunk_joins"] = chunk_joins(models, args)

    def at(n: int, key: str) -> float | None:
        rows = [r for r in result["sessions"] if r["sessions"] == n]
        return rows[0][key] if rows else None

    result["speedups"] = {str(r["sessions"]): r["speedup"] for r in result["sessions"]}
    result["ttfp_ratios"] = {str(r["sessions"]): r["ttfp_ratio"] for r in result["sessions"]}
    result["speedup_32"] = at(32, "speedup")
    result["ttfp_ratio_32"] = at(32, "ttfp_ratio")
    return result


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(report: dict) -> None:
    for res in report["devices"]:
        print(
            f"\n== {res['device']}  (published size, random weights; each session: "
            f"{len(res['sentence'])}-character sentence, {res['tokens_per_session']} tokens = "
            f"{res['audio_s_per_session']:.2f} s of audio; chunks {res['first_chunk']}, x3, "
            f"cap {res['max_chunk']}; context {res['context_tokens']}; fastest of "
            f"{res['repeats']} runs)"
        )
        print(
            f"{'N':>4} {'mode':>13} {'total s':>9} {'RTF':>7} {'audio s/s':>10} "
            f"{'TTFP mean':>10} {'TTFP max':>9} {'decoder s':>10} {'vocoder s':>10}"
        )
        for row in res["sessions"]:
            for mode in ("batched", "one_at_a_time"):
                r = row[mode]
                label = mode.replace("_", "-")
                if mode == "one_at_a_time" and r["sequential_extrapolated_from"] < row["sessions"]:
                    label += "*"
                print(
                    f"{row['sessions']:>4} {label:>13} {r['total_s']:>9.2f} "
                    f"{r['real_time_factor']:>7.3f} {r['audio_s_per_s']:>10.2f} "
                    f"{r['ttfp_mean_s']:>10.3f} {r['ttfp_max_s']:>9.3f} "
                    f"{r['decoder_s']:>10.2f} {r['vocoder_s']:>10.2f}"
                )
            print(
                f"{'':>4} {'batched gain':>13} total {row['speedup']:.2f}x, TTFP mean "
                f"{row['ttfp_ratio']:.2f}x, TTFP max {row['ttfp_max_ratio']:.2f}x; same tokens "
                f"batched and alone: {row['same_tokens_batched_and_alone']}"
            )
        samples = {r["sequential_extrapolated_from"] for r in res["sessions"]}
        print(
            f"* one-at-a-time extrapolated linearly from the median of the first {max(samples)} "
            "jobs (identical jobs)"
        )
        joins = res["chunk_joins"]
        print(
            f"\nchunk joins: {joins['tokens']} tokens, joined chunks vs one decode "
            f"(reference RMS {joins['reference_rms']:.4f}, peak {joins['reference_peak']:.4f}); "
            "SNR in dB, tails/heads: the token before/after each join"
        )
        print(
            f"{'ctx/hold':>8} {'chunks':>14} {'SNR dB':>7} {'after 1st':>9} {'per chunk':>20} "
            f"{'tails':>6} {'heads':>6} {'max jump':>9} {'ref jump':>9} {'vocoder s':>10}"
        )
        for row in joins["rows"]:
            print(
                f"{str(row['context_tokens']) + '/' + str(row['holdback_tokens']):>8} "
                f"{','.join(map(str, row['chunks'])):>14} "
                f"{fmt(row['snr_db'], '.2f'):>7} "
                f"{fmt(row['snr_after_first_chunk_db'], '.2f'):>9} "
                f"{','.join(fmt(v, '.1f') for v in row['snr_per_chunk_db']):>20} "
                f"{fmt(row['snr_before_joins_db'], '.1f'):>6} "
                f"{fmt(row['snr_after_joins_db'], '.1f'):>6} "
                f"{row['max_join_jump']:>9.4f} {row['max_reference_jump']:>9.4f} "
                f"{row['vocoder_s']:>10.3f}"
            )
        print(
            f"speedup_32 = {fmt(res['speedup_32'], '.2f')}   "
            f"ttfp_ratio_32 = {fmt(res['ttfp_ratio_32'], '.2f')}   (one-at-a-time / batched)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument(
        "--tokens", type=int, default=150, help="speech tokens per sentence (75 = 1 s)"
    )
    parser.add_argument(
        "--sequential-sample",
        type=int,
        default=4,
        help="one-at-a-time mode runs at most this many jobs and extrapolates",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per mode and N; the fastest is reported"
    )
    parser.add_argument("--first-chunk", type=int, default=DEFAULT_INITIAL_DUMP_SIZE_1)
    parser.add_argument("--max-chunk", type=int, default=DEFAULT_MAX_DUMP_SIZE)
    parser.add_argument(
        "--context-tokens", type=int, default=0, help="chunk context of the sessions runs"
    )
    parser.add_argument("--contexts", type=int, nargs="+", default=[0, 8, 24, 48, 96])
    parser.add_argument(
        "--holdbacks",
        type=int,
        nargs="+",
        default=[2, 4, 8],
        help="hold-back sizes, each measured with the largest context",
    )
    parser.add_argument(
        "--join-tokens", type=int, default=300, help="tokens of the chunk-join sentence"
    )
    parser.add_argument(
        "--devices", nargs="+", default=None, help="default: cpu, and cuda when available"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's); 1 avoids OpenMP stalls on a busy machine",
    )
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    if min(args.sessions) < 1 or min(args.tokens, args.sequential_sample, args.repeats) < 1:
        parser.error("--sessions, --tokens, --sequential-sample and --repeats must be positive")
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    started = time.perf_counter()
    report = {
        "benchmark": "tts_pool",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        # Other processes slow a run down (OpenMP threads stall on a busy core): see the load.
        "load_avg_1min_start": os.getloadavg()[0],
        "devices": [bench_device(torch.device(d), args) for d in devices],
    }
    report["load_avg_1min_end"] = os.getloadavg()[0]
    report["wall_s"] = time.perf_counter() - started
    first = report["devices"][0]
    report["speedup_32"] = first["speedup_32"]
    report["ttfp_ratio_32"] = first["ttfp_ratio_32"]
    out = write_report("tts_pool", report, args.out_dir)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
        print(
            f"\n{report['threads']} threads on {report['cpus']} CPUs; 1-min load average "
            f"{report['load_avg_1min_start']:.2f} at start, {report['load_avg_1min_end']:.2f} "
            f"at end\nwrote {out} ({report['wall_s']:.0f} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
