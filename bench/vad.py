"""CPU cost of `/v1/realtime`'s server-side turn detection, per second of input audio.

Streams audio through what a hands-free session runs on every append: the input decoder
(PCM16 24 kHz → float32 16 kHz, soxr) and the Silero VAD (onnxruntime, one thread, one 512-sample
window per run, its state carried), in appends of `--chunk-ms`, and measures process CPU time
(not wall time: other processes share the cores). Speech-like input: espeak-ng sentences with
silence between them when espeak-ng is installed, else noise (the model's cost does not depend on
the content).

    python bench/vad.py            # table + JSON file under bench/results/
    python bench/vad.py --json     # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import soxr
from results_file import write_report

from llmvox_common.audio import float_to_pcm16, read_wav
from llmvox_gateway.realtime_audio import InputDecoder
from llmvox_gateway.vad import SileroVad, WindowBuffer, silero_model_path

REPO = Path(__file__).resolve().parents[1]
RATE = 24_000


def test_audio(seconds: float) -> tuple[bytes, str]:
    """PCM16 at 24 kHz: espeak-ng speech with 1 s pauses, repeated to `seconds`, or noise."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        rng = np.random.default_rng(0)
        noise = rng.standard_normal(int(seconds * RATE)).astype(np.float32) * 0.1
        return float_to_pcm16(noise).tobytes(), "noise"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "speech.wav"
        text = "What is the capital of France? Tell me about the weather tomorrow."
        subprocess.run([espeak, "-w", str(path), text], check=True, capture_output=True)
        samples, rate = read_wav(path)
    speech = soxr.resample(samples, rate, RATE).astype(np.float32)
    unit = np.concatenate([speech, np.zeros(RATE, dtype=np.float32)])
    audio = np.tile(unit, int(np.ceil(seconds * RATE / len(unit))))[: int(seconds * RATE)]
    return float_to_pcm16(audio).tobytes(), "espeak-ng speech with 1 s pauses"


def measure(pcm: bytes, chunk_ms: int, with_vad: bool) -> float:
    """CPU seconds for the whole stream."""
    decoder = InputDecoder("audio/pcm")
    model = SileroVad() if with_vad else None
    windows = WindowBuffer()
    step = RATE * chunk_ms // 1000 * 2
    start = time.process_time()
    for offset in range(0, len(pcm), step):
        samples = decoder.decode(pcm[offset : offset + step])
        if model is not None:
            model.probabilities(windows.push(samples))
    return time.process_time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="audio streamed per run")
    parser.add_argument("--chunk-ms", type=int, default=40, help="one append (the web page: 40)")
    parser.add_argument("--repeats", type=int, default=3, help="runs; the median is reported")
    parser.add_argument("--json", action="store_true", help="print one JSON object, write none")
    parser.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()

    pcm, content = test_audio(args.seconds)
    SileroVad()  # load the model once before timing
    resample = sorted(measure(pcm, args.chunk_ms, False) for _ in range(args.repeats))
    total = sorted(measure(pcm, args.chunk_ms, True) for _ in range(args.repeats))
    per_second = 1000.0 / args.seconds  # CPU s per stream → CPU ms per audio second
    result = {
        "benchmark": "vad",
        "time": datetime.now(UTC).isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "model": silero_model_path().name,
        "content": content,
        "seconds": args.seconds,
        "chunk_ms": args.chunk_ms,
        "resample_cpu_ms_per_audio_s": round(resample[len(resample) // 2] * per_second, 3),
        "resample_and_vad_cpu_ms_per_audio_s": round(total[len(total) // 2] * per_second, 3),
    }
    result["vad_cpu_ms_per_audio_s"] = round(
        result["resample_and_vad_cpu_ms_per_audio_s"] - result["resample_cpu_ms_per_audio_s"], 3
    )
    result["sessions_per_core"] = int(
        1000 / max(result["resample_and_vad_cpu_ms_per_audio_s"], 1e-6)
    )
    if args.json:
        json.dump(result, sys.stdout)
        print()
        return 0
    print(f"{content}, {args.seconds:g} s in {args.chunk_ms} ms appends (CPU ms per audio second):")
    for key in (
        "resample_cpu_ms_per_audio_s",
        "vad_cpu_ms_per_audio_s",
        "resample_and_vad_cpu_ms_per_audio_s",
    ):
        print(f"  {key:40s} {result[key]:8.3f}")
    print(f"  hands-free sessions per core            {result['sessions_per_core']:8d}")
    path = write_report("vad", result, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
