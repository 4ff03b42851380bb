"""Command-line flags from a pydantic-settings class: the one bridge every `llmvox-*` CLI uses.

Each field `name` becomes the flag `--name`: snake_case, the field's own name, which is also the
original LLMVoX server's spelling where it had the setting (`--api_port`, `--chat_type`). A bool
field gets `--name` and `--no_name`. Every flag defaults to None, so an absent flag leaves
pydantic-settings to read the environment (the class's env prefix) and then the field's default:
flag over environment over default, one precedence for every service.

argparse (not pydantic-settings' own CLI source) because the CLIs mix settings with client
subcommands (`transcribe`, `chat`, `health`) that have no settings class, and argparse's help
prints an optional field as `--llm_top_k LLM_TOP_K` rather than as a `{int,null}` choice.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal, TypeVar

from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)

# Every parser and subcommand of the llmvox CLIs: the module docstring printed as written.
HELP_FORMATTER = argparse.RawDescriptionHelpFormatter


def new_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    """A top-level parser in the shape every llmvox CLI's `--help` shares."""
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=HELP_FORMATTER
    )


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand whose `--help` starts with what it does (its one-line help by default)."""
    return commands.add_parser(
        name, help=help_text, description=description or help_text, formatter_class=HELP_FORMATTER
    )


def flag(name: str) -> str:
    """The command-line spelling of a settings field."""
    return f"--{name}"


def env_prefix(settings_class: type[BaseSettings]) -> str:
    return str(settings_class.model_config.get("env_prefix", ""))


def _members(annotation: Any) -> list[Any]:
    """The non-None members of a union (`int | None` → [int]); the annotation itself otherwise."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or isinstance(annotation, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    return [annotation]


def _type_and_choices(annotation: Any) -> tuple[Any, list[str] | None]:
    """argparse type and choices of a field. Only plain int/float and single Literals are
    checked here; anything else is passed on as text for pydantic to validate (lists are
    comma-separated by the settings' own validators)."""
    members = _members(annotation)
    if len(members) != 1:
        return str, None
    (member,) = members
    if typing.get_origin(member) is Literal:
        return str, [str(choice) for choice in typing.get_args(member)]
    if member in (int, float):
        return member, None
    return str, None


def _is_bool(annotation: Any) -> bool:
    return _members(annotation) == [bool]


def _shown_default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, list | tuple | set | dict) and not value:
        return "empty"
    return repr(value) if value == "" else str(value)


def env_names(settings_class: type[BaseSettings], name: str) -> list[str]:
    """The environment variables of a field: prefix + NAME, or those its validation alias names
    (pydantic-settings then ignores the prefix), e.g. a variable shared by several services."""
    alias = settings_class.model_fields[name].validation_alias
    if alias is None:
        return [env_prefix(settings_class) + name.upper()]
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
    return [c.upper() for c in choices if isinstance(c, str) and c != name] or [name.upper()]


def _help(settings_class: type[BaseSettings], name: str, field: FieldInfo) -> str:
    # %% survives argparse's %-formatting of help strings.
    description = (field.description or "").replace("%", "%%")
    env = " or ".join(env_names(settings_class, name))
    tail = f"default: {_shown_default(field)}; env {env}".replace("%", "%%")
    return f"{description} ({tail})".lstrip()


def add_settings_arguments(
    parser: argparse.ArgumentParser,
    settings_class: type[BaseSettings],
    *,
    title: str | None = None,
    only: Collection[str] | None = None,
    exclude: Collection[str] = (),
    aliases: Mapping[str, Sequence[str]] | None = None,
    choices: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """One flag per field of `settings_class` (or of the fields in `only`, minus `exclude`).

    `aliases` adds other names for a field (the upstream `--llm_checkpoint` for the LLM server's
    `--model`); they are snake_case too and set the same setting. `choices` replaces the values
    a field's Literal allows on the command line (values its validator maps to allowed ones).
    """
    prefix = env_prefix(settings_class)
    group = parser.add_argument_group(title or f"settings (each also env {prefix}<NAME>)")
    aliases = aliases or {}
    for name, field in settings_class.model_fields.items():
        if (only is not None and name not in only) or name in exclude:
            continue
        names = [flag(name), *(flag(alias) for alias in aliases.get(name, ()))]
        help_text = _help(settings_class, name, field)
        if _is_bool(field.annotation):
            group.add_argument(
                *names, dest=name, action="store_const", const=True, default=None, help=help_text
            )
            group.add_argument(
                flag(f"no_{name}"),
                dest=name,
                action="store_const",
                const=False,
                default=None,
                help=f"turn {flag(name)} off",
            )
            continue
        kind, allowed = _type_and_choices(field.annotation)
        if choices and name in choices:
            allowed = list(choices[name])
        group.add_argument(
            *names,
            dest=name,
            type=kind,
            choices=allowed,
            default=None,
            help=help_text,
        )


def settings_from_args(settings_class: type[S], args: argparse.Namespace, **overrides: object) -> S:
    """The settings: flags given on the command line (and `overrides`) over the environment
    over the defaults. Raises pydantic's ValidationError for a bad value."""
    given: dict[str, object] = {
        name: value
        for name, value in vars(args).items()
        if name in settings_class.model_fields and value is not None
    }
    given.update(overrides)
    return settings_class(**given)
