"""`llmvox-llm`: serve a model over gRPC, chat with a server, check its health, convert GGUF.

Every `serve` flag is also an environment variable (LLMVOX_LLM_<NAME>, e.g. LLMVOX_LLM_MAX_TOKENS);
a flag given on the command line wins. The original LLMVoX server's names for the LLM's settings
(--llm_checkpoint, --llm_device, --llm_temperature, --llm_top_p, --llm_top_k, --llm_max_tokens)
are accepted beside the settings' own (--model, --device, --temperature, ...)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, get_args

if TYPE_CHECKING:
    from .settings import LlmSettings

# The client commands and the log level read the same prefix as the server's settings.
DEFAULT_ADDR = os.environ.get("LLMVOX_LLM_ADDR", "127.0.0.1:50052")
DEFAULT_LOG_LEVEL = os.environ.get("LLMVOX_LLM_LOG_LEVEL", "INFO")


def settings_from_args(args: argparse.Namespace) -> LlmSettings:
    """Flags given on the command line over the environment over the defaults."""
    from llmvox_common.cli_settings import settings_from_args as settings_from_namespace

    from .settings import LlmSettings

    return settings_from_namespace(LlmSettings, args)


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from pydantic import ValidationError

    try:
        settings = settings_from_args(args)
    except ValidationError as error:
        print(f"error: invalid settings:\n{error}", file=sys.stderr)
        return 2
    if not settings.model:
        print("error: no model: pass --model (or set LLMVOX_LLM_MODEL)", file=sys.stderr)
        return 2

    import torch

    from .service import serve

    torch.set_grad_enabled(False)
    asyncio.run(serve(settings))
    return 0


def _chat(args: argparse.Namespace) -> int:
    from .client import build_request, chat

    prompt = args.prompt if args.prompt not in (None, "-") else sys.stdin.read()
    request = build_request(
        prompt,
        system=args.system,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        stop=args.stop or (),
        seed=args.seed,
        images=[Path(p) for p in args.image or ()],
        audios=[Path(p) for p in args.audio or ()],
    )
    return chat(args.addr, request, timeout=args.timeout)


def _health(args: argparse.Namespace) -> int:
    from .client import health

    return health(args.addr, args.service, timeout=args.timeout)


def _convert(args: argparse.Namespace) -> int:
    from .gguf import convert_gguf

    out = convert_gguf(args.model, args.gguf_file, args.out, force=args.force)
    print(out)
    return 0


# The original LLMVoX server's names for the LLM's settings, accepted beside the settings' own.
UPSTREAM_ALIASES = {
    "model": ("llm_checkpoint",),
    "device": ("llm_device",),
    "temperature": ("llm_temperature",),
    "top_p": ("llm_top_p",),
    "top_k": ("llm_top_k",),
    "max_tokens": ("llm_max_tokens",),
}


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from llmvox_common.cli_settings import add_command, add_settings_arguments

    from .settings import CHAT_TYPE_ALIASES, ChatType, LlmSettings

    p = add_command(sub, "serve", "serve a model over gRPC (llmvox.llm.v1.LlmService)")
    chat_types = [*get_args(ChatType), *CHAT_TYPE_ALIASES]
    add_settings_arguments(
        p, LlmSettings, aliases=UPSTREAM_ALIASES, choices={"chat_type": chat_types}
    )
    p.set_defaults(func=_serve)


def build_parser() -> argparse.ArgumentParser:
    from llmvox_common.cli_settings import add_command, new_parser

    parser = new_parser("llmvox-llm", __doc__)
    parser.add_argument(
        "--log_level", default=DEFAULT_LOG_LEVEL, help="(default: INFO; env LLMVOX_LLM_LOG_LEVEL)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)

    c = add_command(sub, "chat", "stream an answer from a server to the terminal")
    c.add_argument("prompt", nargs="?", help="the question (default: read standard input)")
    c.add_argument("--addr", default=DEFAULT_ADDR, help="server HOST:PORT (env LLMVOX_LLM_ADDR)")
    c.add_argument("--system", help="system prompt (default: the server's)")
    c.add_argument("--max_tokens", type=int)
    c.add_argument("--temperature", type=float, help="0 = greedy")
    c.add_argument("--top_p", type=float)
    c.add_argument("--top_k", type=int)
    c.add_argument("--stop", action="append", help="stop string (repeatable)")
    c.add_argument("--seed", type=int)
    c.add_argument("--image", action="append", help="image file to send (repeatable)")
    c.add_argument("--audio", action="append", help="WAV file to send (repeatable)")
    c.add_argument("--timeout", type=float, help="deadline in seconds")
    c.set_defaults(func=_chat)

    h = add_command(sub, "health", "standard gRPC health check; exit 0 when SERVING")
    h.add_argument("--addr", default=DEFAULT_ADDR, help="env LLMVOX_LLM_ADDR")
    h.add_argument("--service", default="", help="service name ('' = the whole server)")
    h.add_argument("--timeout", type=float, default=5.0)
    h.set_defaults(func=_health)

    g = add_command(sub, "convert-gguf", "convert a GGUF model once to safetensors")
    g.add_argument("--model", required=True, help="directory or hub id holding the GGUF file")
    g.add_argument("--gguf_file", help="file name inside --model")
    g.add_argument("--out", required=True, help="directory to write")
    g.add_argument("--force", action="store_true", help="redo an existing conversion")
    g.set_defaults(func=_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
