"""`llmvox-gateway`: serve the gateway, or check a running one's health.

Every `serve` flag is a setting and an environment variable (LLMVOX_GATEWAY_<NAME>); a flag given
on the command line wins. Flags keep the settings' names (`--api_port`, `--max_sessions`), which
are the original server's where it had the setting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, get_args, get_origin

from llmvox_common.cli_settings import settings_from_args as settings_from_namespace

from .settings import GatewaySettings


def _flag_type(annotation: Any) -> Any:
    """The argparse type of a settings field: the non-None member of an optional, str for lists."""
    if get_origin(annotation) is list:
        return str
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    if args and get_origin(annotation) is not None:
        annotation = args[0]
    if get_origin(annotation) is not None:  # Literal[...] and the like: validated by pydantic
        return str
    return annotation if annotation in (int, float, str) else str


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (each also env LLMVOX_GATEWAY_<NAME>)")
    for name, field in GatewaySettings.model_fields.items():
        # The settings' own names (the original server's style), and the dashed spelling the
        # other services' flags use.
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        help_text = field.description or ""
        if field.annotation is bool:
            group.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction)
        else:
            group.add_argument(
                *flags, dest=name, type=_flag_type(field.annotation), default=None, help=help_text
            )


def settings_from_args(args: argparse.Namespace) -> GatewaySettings:
    return settings_from_namespace(GatewaySettings, args)


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    try:
        settings = settings_from_args(args)
    except ValidationError as error:
        print(f"error: invalid settings:\n{error}", file=sys.stderr)
        return 2
    from .server import serve

    return serve(settings)


def _health(args: argparse.Namespace) -> int:
    """0 when `url` answers 200 within `--wait` seconds, else 1 (container health checks)."""
    deadline = time.monotonic() + args.wait
    while True:
        try:
            with urllib.request.urlopen(args.url, timeout=args.timeout) as response:
                body = response.read().decode("utf-8", "replace")
                print(body)
                return 0
        except (urllib.error.URLError, OSError) as error:
            detail = error
            if isinstance(error, urllib.error.HTTPError):
                detail = json.loads(error.read() or b"{}") or error
        if time.monotonic() >= deadline:
            print(f"unhealthy: {args.url}: {detail}", file=sys.stderr)
            return 1
        time.sleep(0.5)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmvox-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve HTTP, the WebSocket and the web page")
    add_settings_arguments(serve)
    serve.set_defaults(run=_serve)
    check = sub.add_parser("health", help="check a running gateway (exit 0 when healthy)")
    check.add_argument("--url", default="http://127.0.0.1:5003/readyz")
    check.add_argument("--timeout", type=float, default=5.0, help="seconds per try")
    check.add_argument("--wait", type=float, default=0.0, help="keep trying this many seconds")
    check.set_defaults(run=_health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
