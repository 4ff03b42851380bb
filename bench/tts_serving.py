"""CPU serving at the published size: concurrent real-time streams of one replica, exact fp32
against the default numerics, in one run.

The benchmark writes random-weight checkpoints in the published layouts itself (an LLMVoX
`ckpt_english_tiny.pt`, a Lightning `wavtokenizer_large_speech_320_24k.ckpt`, a ByT5
`model.safetensors` with a 256-wide input table) and loads them with `load_published`, the
loaders' real code paths, once per numerics (`--numerics`, decoder/vocoder precision; default
`fp32/fp32`, the exact mode, and the CPU default of `ModelSettings`). Then one replica engine
(`ReplicaEngine`, in process, the worker's defaults: max batch 32, context 24, hold-back 4,
chunks 10 ×3 up to the cap) serves N sessions (`--sessions`, default 1 4 8 16). Session i
arrives at i · `--arrival-spread` / N seconds with a whole sentence (a verbatim turn), which is
stopped after `--tokens` speech tokens (random weights never emit end-of-audio).

Each session plays its audio in real time, starting `--playout-buffer` seconds after its first
part arrives (a client's jitter buffer): a part that arrives after the audio before it has
finished playing is an underrun. The first parts are short (10 tokens less the hold-back) and
the next ones three times longer, so without any buffer the second part would have to be decoded
five times faster than real time. Reported per N: p50 / p95 of the time to first audio (from the
session's arrival to its first part, nearest rank; the buffer comes on top where a client keeps
one), how many sessions played through without an underrun ("streams at real time"), each
session's worst stall with no buffer at all (the buffer it would need), and the real-time factor
(compute seconds per second of audio produced, decoder and vocoder split).

Random weights: the tokens are meaningless, the arithmetic is real.

    python bench/tts_serving.py            # table + JSON file under bench/results/
    python bench/tts_serving.py --json     # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from results_file import write_report
from safetensors.torch import save_file

from llmvox_tts.constants import DEFAULT_INITIAL_DUMP_SIZE_1, DEFAULT_MAX_DUMP_SIZE, SAMPLE_RATE
from llmvox_tts.loading.bundle import ModelBundle, load_published, random_decoder
from llmvox_tts.loading.hub import LLMVOX_DECODER_FILE, WAVTOKENIZER_FILE
from llmvox_tts.model.gpt import GPTConfig
from llmvox_tts.model.wavtokenizer import WavTokenizerConfig, random_wavtokenizer_state_dict
from llmvox_tts.settings import ModelSettings
from llmvox_tts.streaming.sentence_stream import SynthesisLimits
from llmvox_tts.worker.engine import ReplicaEngine
from llmvox_tts.worker.settings import WorkerSettings

PUBLISHED_GPT = GPTConfig(
    n_layer=4, n_head=8, n_embd=768, block_size=8192, bias=False, vocab_size=4096
)
TEXT_WIDTH = 256
SENTENCE = "The quick brown fox jumps over the lazy dog near the river, and then it rests."


def write_published_layout(root: Path) -> tuple[Path, Path, Path]:
    """Random weights in the three published file layouts; returns (decoder dir, WavTokenizer
    dir, text model dir)."""
    decoder = random_decoder(PUBLISHED_GPT, seed=0)
    torch.save(
        {"model": decoder.state_dict(), "model_args": PUBLISHED_GPT.to_model_args()},
        root / LLMVOX_DECODER_FILE,
    )
    wt_state = random_wavtokenizer_state_dict(WavTokenizerConfig.published(), seed=2)
    torch.save({"state_dict": wt_state}, root / WAVTOKENIZER_FILE)
    text_dir = root / "charsiu"
    text_dir.mkdir()
    table = torch.randn(384, TEXT_WIDTH, generator=torch.Generator().manual_seed(1))
    save_file({"shared.weight": table}, str(text_dir / "model.safetensors"))
    return root, root, text_dir


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def serve(models: ModelBundle, n: int, args: argparse.Namespace) -> dict:
    worker = WorkerSettings()
    engine = ReplicaEngine(
        models,
        max_batch=max(worker.max_batch, n),
        context_tokens=worker.context_tokens,
        holdback_tokens=worker.holdback_tokens,
        limits=SynthesisLimits(max_tokens_per_text_id=0.0, min_token_budget=args.tokens),
    )
    arrivals = {f"s{i}": i * args.arrival_spread / n for i in range(n)}
    waiting = sorted(arrivals, key=arrivals.__getitem__)
    parts: dict[str, list[tuple[float, float]]] = {k: [] for k in arrivals}  # (at, seconds)
    remaining = set(arrivals)
    start = time.perf_counter()
    while remaining:
        now = time.perf_counter() - start
        while waiting and arrivals[waiting[0]] <= now:
            key = waiting.pop(0)
            engine.add(
                key, first_chunk=DEFAULT_INITIAL_DUMP_SIZE_1, max_chunk=DEFAULT_MAX_DUMP_SIZE
            )
            engine.push_text(key, SENTENCE)
            engine.close_text(key)
        if not engine.has_work:
            if waiting:
                time.sleep(max(0.0, arrivals[waiting[0]] - (time.perf_counter() - start)))
                continue
            raise RuntimeError(f"engine idle with sessions left: {sorted(remaining)}")
        for part in engine.step():
            at = time.perf_counter() - start
            parts[part.job].append((at, part.pcm.shape[0] / SAMPLE_RATE))
            if part.last:
                engine.remove(part.job)
                remaining.discard(part.job)
    wall = time.perf_counter() - start
    first_audio, stalls = [], []
    for key, got in parts.items():
        first_audio.append(got[0][0] - arrivals[key])
        # Stalls with no buffer: playback starts with the first part; each later part is due
        # when the audio before it has played.
        due, stall = got[0][0], 0.0
        for at, seconds in got:
            stall = max(stall, at - due)
            due = max(due, at) + seconds
        stalls.append(stall)
    audio_s = sum(s for got in parts.values() for _, s in got)
    compute_s = engine.stats.step_seconds + engine.stats.vocoder_seconds
    return {
        "sessions": n,
        "wall_s": wall,
        "audio_s": audio_s,
        "real_time_factor": compute_s / audio_s,
        "decoder_s": engine.stats.step_seconds,
        "vocoder_s": engine.stats.vocoder_seconds,
        "vocoder_calls": engine.stats.decode_calls,
        "first_audio_p50_s": nearest_rank(first_audio, 0.5),
        "first_audio_p95_s": nearest_rank(first_audio, 0.95),
        "streams_real_time": sum(s <= args.playout_buffer for s in stalls),
        "streams_real_time_without_buffer": sum(s <= 0.0 for s in stalls),
        "worst_stall_s": max(stalls),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default = ModelSettings()
    default.resolve_numerics()
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument(
        "--numerics",
        nargs="+",
        default=["fp32/fp32", f"{default.precision}/{default.vocoder_precision}"],
        help="decoder/vocoder precision pairs",
    )
    parser.add_argument("--tokens", type=int, default=300, help="speech tokens per session")
    parser.add_argument(
        "--arrival-spread", type=float, default=1.0, help="sessions arrive over this many s"
    )
    parser.add_argument(
        "--playout-buffer", type=float, default=0.2, help="client buffer before playback, s"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    report: dict = {
        "benchmark": "tts_serving",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "out_dir")},
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_published_layout(Path(tmp))
        for numerics in args.numerics:
            precision, vocoder = numerics.split("/")
            models = load_published(
                llmvox=paths[0],
                wavtokenizer=paths[1],
                text_model=paths[2],
                precision=precision,
                vocoder_precision=vocoder,
            )
            serve(models, 1, argparse.Namespace(**{**vars(args), "tokens": 20}))  # warm-up
            rows = []
            for n in args.sessions:
                rows.append(serve(models, n, args))
                if not args.json:
                    r = rows[-1]
                    print(
                        f"{numerics:>10} N={n:<3} RTF {r['real_time_factor']:.3f} "
                        f"(decoder {r['decoder_s']:.1f} s, vocoder {r['vocoder_s']:.1f} s)  "
                        f"first audio p50 {r['first_audio_p50_s'] * 1000:.0f} ms "
                        f"p95 {r['first_audio_p95_s'] * 1000:.0f} ms  real time "
                        f"{r['streams_real_time']}/{n}  worst stall {r['worst_stall_s']:.2f} s",
                        flush=True,
                    )
            report["runs"][numerics] = rows
    out = write_report("tts_serving", report, args.out_dir)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
