"""ASR settings ↔ CLI flags ↔ env vars, request options against what a model can do (with a
fake model: only its `is_multilingual` flag matters), and model-loading errors that need no hub."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from llmvox_asr.cli import build_parser
from llmvox_asr.settings import AsrSettings
from llmvox_asr.transcriber import DecodeOptions, ModelUnavailableError, Transcriber, load_whisper
from llmvox_common.cli_settings import settings_from_args
from llmvox_common.grpc_service import InvalidArgument

pytestmark = pytest.mark.unit


def fake_transcriber(*, multilingual: bool, name: str = "fake") -> Transcriber:
    """A Transcriber around a stand-in for faster_whisper.WhisperModel (named as a fake: these
    tests never decode)."""
    fake_model = SimpleNamespace(model=SimpleNamespace(is_multilingual=multilingual))
    return Transcriber(fake_model, name=name)  # type: ignore[arg-type]


def test_every_setting_is_a_flag_and_the_environment_fills_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLMVOX_ASR_BEAM_SIZE", "2")
    monkeypatch.setenv("LLMVOX_ASR_VAD", "true")
    monkeypatch.setenv("LLMVOX_ASR_ASR_MAX_AUDIO_LENGTH", "45")
    monkeypatch.setenv("LLMVOX_ASR_MODEL", "small")
    args = build_parser().parse_args(["serve", "--model", "/models/whisper"])
    assert set(AsrSettings.model_fields) <= set(vars(args))
    settings = settings_from_args(AsrSettings, args)
    assert (settings.beam_size, settings.vad, settings.asr_max_audio_length) == (2, True, 45.0)
    assert settings.model == "/models/whisper"  # a flag wins over the environment


def test_flags_use_the_setting_names() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--port=6001",
            "--device=cpu",
            "--compute_type=int8",
            "--no_vad",
            "--max_concurrency=3",
            "--metrics_port=9300",
            "--asr_max_audio_length=60",
            "--beam_size=1",
        ]
    )
    settings = settings_from_args(AsrSettings, args)
    assert settings.port == 6001
    assert (settings.device, settings.compute_type, settings.vad) == ("cpu", "int8", False)
    assert (settings.max_concurrency, settings.metrics_port) == (3, 9300)
    assert (settings.asr_max_audio_length, settings.beam_size) == (60.0, 1)


@pytest.mark.parametrize("language", ["", "auto", "AUTO", " auto "])
def test_auto_detects_on_multilingual_and_means_english_on_english_only(language: str) -> None:
    assert fake_transcriber(multilingual=True).options(language, "transcribe", "") == (
        DecodeOptions(language=None, task="transcribe")
    )
    assert fake_transcriber(multilingual=False).options(language, "transcribe", "") == (
        DecodeOptions(language="en", task="transcribe")
    )


def test_known_language_codes_pass_case_insensitively() -> None:
    options = fake_transcriber(multilingual=True).options("FR", "transcribe", "")
    assert options == DecodeOptions(language="fr", task="transcribe")
    assert fake_transcriber(multilingual=False).options("en", "transcribe", "").language == "en"


def test_unknown_language_code_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="unknown language code 'english'"):
        fake_transcriber(multilingual=True).options("English", "transcribe", "")


def test_english_only_model_refuses_other_languages_and_translation() -> None:
    english_only = fake_transcriber(multilingual=False, name="tiny.en")
    with pytest.raises(InvalidArgument, match=r"'tiny\.en' is English-only: language 'de'"):
        english_only.options("de", "transcribe", "")
    with pytest.raises(InvalidArgument, match="English-only and cannot translate"):
        english_only.options("en", "translate", "")


@pytest.mark.parametrize("target", ["", "en", "EN"])
def test_translate_into_english_on_a_multilingual_model(target: str) -> None:
    options = fake_transcriber(multilingual=True).options("de", "translate", target)
    assert options == DecodeOptions(language="de", task="translate")


def test_translate_into_another_language_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="translates into English only: target_language 'fr'"):
        fake_transcriber(multilingual=True).options("de", "translate", "fr")


def test_missing_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_whisper(f"{tmp_path}/no-such-model")


def test_unknown_size_name_fails_without_the_hub() -> None:
    with pytest.raises(ModelUnavailableError, match="unknown Whisper model 'huge-v9'"):
        load_whisper("huge-v9")


def test_directory_without_a_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="cannot load the CTranslate2 Whisper model"):
        load_whisper(str(tmp_path))
