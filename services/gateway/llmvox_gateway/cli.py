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

from llmvox_common.cli_settings import (
    add_command,
    add_settings_arguments,
    new_parser,
)
from llmvox_common.cli_settings import settings_from_args as settings_from_namespace

from .settings import GatewaySettings


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
    parser = new_parser("llmvox-gateway", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = add_command(sub, "serve", "serve HTTP, the WebSocket and the web page")
    add_settings_arguments(serve, GatewaySettings)
    serve.set_defaults(run=_serve)
    check = add_command(sub, "health", "check a running gateway (exit 0 when healthy)")
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
