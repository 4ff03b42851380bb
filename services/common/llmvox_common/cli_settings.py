"""Settings from a command line: the flags given over the environment over the defaults.

Every service's flags default to None, so an absent flag leaves pydantic-settings to read the
environment (env prefix) and then the field's default.
"""

from __future__ import annotations

import argparse
from typing import TypeVar

from pydantic_settings import BaseSettings

S = TypeVar("S", bound=BaseSettings)


def settings_from_args(settings_class: type[S], args: argparse.Namespace) -> S:
    given = {
        name: value
        for name, value in vars(args).items()
        if name in settings_class.model_fields and value is not None
    }
    return settings_class(**given)
