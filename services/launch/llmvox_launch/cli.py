"""`llmvox-launch`: run the whole LLMVoX platform on this machine.

Starts Redis (when none answers at --redis_url), the ASR and LLM servers, --tts_replicas TTS
replicas and the gateway as child processes, waits until each is ready, prefixes their output
with their names and prints the URL. A service that exits on its own is restarted with a growing
delay; one that keeps failing before it is ready stops everything. Ctrl-C stops everything.
The original server's flags keep their names; every flag is also an environment variable
LLMVOX_LAUNCH_<NAME>. Without model flags it runs offline: Whisper tiny.en, SmolLM2-135M-Instruct,
and the TTS's published weights from --checkpoint_dir when they are there, else its UNTRAINED tiny
profile (the audio is noise).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from llmvox_common.cli_settings import add_settings_arguments, new_parser
from llmvox_common.cli_settings import settings_from_args as settings_from_namespace

from .machine import LaunchError, free_port, probe
from .plan import Plan, PlanError, build_plan, resolve_ports
from .restart import RestartPolicy
from .settings import LaunchSettings
from .supervisor import LAUNCHER_LABEL, Supervisor


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("llmvox-launch", __doc__)
    add_settings_arguments(parser, LaunchSettings)
    parser.add_argument(
        "--print_plan",
        action="store_true",
        help="print the commands that would run, and exit",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> LaunchSettings:
    return settings_from_namespace(LaunchSettings, args)


def restart_policy(settings: LaunchSettings) -> RestartPolicy:
    defaults = RestartPolicy()
    return RestartPolicy(
        max_delay_s=max(settings.restart_max_delay_s, defaults.first_delay_s),
        crash_loop_failures=settings.crash_loop_failures,
        crash_loop_window_s=settings.crash_loop_window_s,
    )


def format_plan(plan: Plan) -> str:
    lines = []
    for stage in plan.stages():
        for child in stage:
            lines.append(f"# {child.name} (stage {child.stage}, ready: {child.ready})")
            for step in child.prepare:
                lines.append(f"#   first: {shlex.join(step.argv)}")
            # Keys (the external LLM's) are not printed: plans get pasted into bug reports.
            env = " ".join(
                f"{k}={'***' if k.endswith('_API_KEY') else shlex.quote(v)}"
                for k, v in sorted(child.env.items())
            )
            lines.append(f"{env} {shlex.join(child.argv)}".strip())
    lines.append(f"# URL: {plan.url}")
    lines.extend(f"# {notice}" for notice in plan.notices)
    return "\n".join(lines)


def _say(message: str) -> None:
    print(f"[{LAUNCHER_LABEL}] {message}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = resolve_ports(settings_from_args(args), free_port)
    except ValidationError as error:
        print(f"llmvox-launch: invalid settings:\n{error}", file=sys.stderr)
        return 2
    try:
        plan = build_plan(settings, probe(settings, say=_say, install=not args.print_plan))
    except (PlanError, LaunchError) as error:
        print(f"llmvox-launch: error: {error}", file=sys.stderr)
        return 2
    if args.print_plan:
        print(format_plan(plan))
        return 0
    if plan.notices:
        bar = "#" * 78
        print("\n".join([bar, *(f"#  {line}" for line in plan.notices), bar]), flush=True)
    supervisor = Supervisor(
        plan,
        ready_timeout_s=settings.ready_timeout_s,
        stop_timeout_s=settings.stop_timeout_s,
        restart=restart_policy(settings),
    )
    return asyncio.run(supervisor.run())


if __name__ == "__main__":
    raise SystemExit(main())
