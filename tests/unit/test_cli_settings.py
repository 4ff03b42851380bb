"""One way from settings to flags (llmvox_common.cli_settings) for every llmvox CLI: each field is
a snake_case flag of the command that uses the settings, flag over environment over default,
bools with `--no_<name>`, Literals as choices, and no flag anywhere spelt with dashes."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from typing import Literal

import pytest
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmvox_asr.cli import build_parser as asr_parser
from llmvox_asr.settings import AsrSettings
from llmvox_common.cli_settings import add_settings_arguments, new_parser, settings_from_args
from llmvox_gateway.cli import build_parser as gateway_parser
from llmvox_gateway.settings import GatewaySettings
from llmvox_launch.cli import build_parser as launch_parser
from llmvox_launch.settings import LaunchSettings
from llmvox_llm.cli import build_parser as llm_parser
from llmvox_llm.settings import LlmSettings
from llmvox_tts.cli import build_parser as tts_parser
from llmvox_tts.settings import ModelSettings
from llmvox_tts.worker.settings import WorkerSettings

pytestmark = pytest.mark.unit

CLIS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "llmvox-asr": asr_parser,
    "llmvox-llm": llm_parser,
    "llmvox-tts": tts_parser,
    "llmvox-gateway": gateway_parser,
    "llmvox-launch": launch_parser,
}
# (CLI, subcommand or None, settings class): every field is a flag there.
SETTINGS_COMMANDS = [
    ("llmvox-asr", "serve", AsrSettings),
    ("llmvox-llm", "serve", LlmSettings),
    ("llmvox-tts", "synth", ModelSettings),
    ("llmvox-tts", "worker", WorkerSettings),
    ("llmvox-gateway", "serve", GatewaySettings),
    ("llmvox-launch", None, LaunchSettings),
]


class DemoSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMVOX_DEMO_", extra="ignore")

    port: int = Field(7, description="a port")
    ratio: float | None = None
    mode: Literal["fast", "exact"] = "exact"
    verbose: bool = False
    tags: list[str] = Field(default_factory=list)


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and all its subcommands' parsers."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)


def command_parser(cli: str, command: str | None) -> argparse.ArgumentParser:
    parser = CLIS[cli]()
    if command is None:
        return parser
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[command]


@pytest.mark.parametrize("cli", CLIS)
def test_every_flag_is_snake_case(cli: str) -> None:
    flags = {
        option
        for parser in parsers(CLIS[cli]())
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--")
    }
    dashed = sorted(f for f in flags if "-" in f[2:])
    assert not dashed, f"{cli}: {dashed}"


@pytest.mark.parametrize(("cli", "command", "settings_class"), SETTINGS_COMMANDS)
def test_every_setting_is_a_flag_of_its_command(
    cli: str, command: str | None, settings_class: type[BaseSettings]
) -> None:
    parser = command_parser(cli, command)
    options = {o for action in parser._actions for o in action.option_strings}
    missing = [n for n in settings_class.model_fields if f"--{n}" not in options]
    assert not missing, f"{cli} {command}: {missing}"
    help_text = parser.format_help()
    assert "env LLMVOX_" in help_text  # each flag names its environment variable


def test_flag_over_environment_over_default(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = new_parser("demo", None)
    add_settings_arguments(parser, DemoSettings)
    monkeypatch.setenv("LLMVOX_DEMO_PORT", "8")
    monkeypatch.setenv("LLMVOX_DEMO_MODE", "fast")
    settings = settings_from_args(DemoSettings, parser.parse_args(["--port", "9"]))
    assert (settings.port, settings.mode, settings.ratio) == (9, "fast", None)
    settings = settings_from_args(DemoSettings, parser.parse_args([]))
    assert (settings.port, settings.verbose, settings.tags) == (8, False, [])


def test_bools_literals_and_optionals() -> None:
    parser = new_parser("demo", None)
    add_settings_arguments(parser, DemoSettings)
    assert settings_from_args(DemoSettings, parser.parse_args(["--verbose"])).verbose is True
    args = parser.parse_args(["--verbose", "--no_verbose", "--ratio", "0.5"])
    settings = settings_from_args(DemoSettings, args)
    assert (settings.verbose, settings.ratio) == (False, 0.5)
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "slow"])  # not one of the Literal's values
    help_text = parser.format_help()
    assert "a port (default: 7; env LLMVOX_DEMO_PORT)" in help_text
    assert "{fast,exact}" in help_text


def test_upstream_aliases_of_the_llm_server() -> None:
    args = llm_parser().parse_args(
        ["serve", "--llm_checkpoint", "/m", "--llm_temperature", "0", "--chat_type", "voice"]
    )
    settings = settings_from_args(LlmSettings, args)
    assert (settings.model, settings.temperature, settings.chat_type) == ("/m", 0.0, "text")
