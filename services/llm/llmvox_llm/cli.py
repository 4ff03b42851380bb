"""`llmvox-llm`: serve a model over gRPC, chat with a server, check its health, convert GGUF.

Every `serve` flag is also an environment variable (LLMVOX_LLM_<NAME>, e.g. LLMVOX_LLM_MAX_TOKENS);
a flag given on the command line wins. The original LLMVoX server's flag names (--llm_checkpoint,
--llm_temperature, --chat_type, ...) are accepted as aliases."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

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


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # SUPPRESS: a flag not given stays out of the namespace, so the environment (read by
    # pydantic-settings) or the built-in default applies.
    p = sub.add_parser(
        "serve",
        help="serve a model over gRPC (llmvox.llm.v1.LlmService)",
        argument_default=argparse.SUPPRESS,
        description="Each flag is also an env var: LLMVOX_LLM_<FLAG NAME IN CAPITALS>.",
    )
    p.add_argument("--host", help="listen address (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="gRPC port (default 50052)")
    p.add_argument(
        "--model",
        "--llm_checkpoint",
        dest="model",
        help="hub id, model directory, or path of a .gguf file",
    )
    p.add_argument("--gguf-file", dest="gguf_file", help="GGUF file inside --model")
    p.add_argument(
        "--trust-remote-code",
        dest="trust_remote_code",
        action="store_true",
        help="run the model repository's own Python code (some multimodal models need it)",
    )
    p.add_argument(
        "--device", "--llm_device", dest="device", help="auto (default), cpu, cuda, cuda:1 …"
    )
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument(
        "--chat-type",
        "--chat_type",
        dest="chat_type",
        choices=["text", "voice", "visual_speech", "multimodal"],
        help="model adapter: text (voice = text), visual_speech (Qwen-VL), multimodal (LLaVA)",
    )
    p.add_argument(
        "--eos-token",
        "--eos_token",
        dest="eos_token",
        help="end-of-turn token to stop on, besides the model's own (<|eot_id|>, <|end|> …)",
    )
    p.add_argument(
        "--system-prompt",
        "--system_prompt",
        dest="system_prompt",
        help="used when a conversation has no system message ('' for none)",
    )
    p.add_argument("--temperature", "--llm_temperature", dest="temperature", type=float)
    p.add_argument("--top-p", "--llm_top_p", dest="top_p", type=float)
    p.add_argument("--top-k", "--llm_top_k", dest="top_k", type=int)
    p.add_argument(
        "--max-tokens",
        "--llm_max_tokens",
        dest="max_tokens",
        type=int,
        help="default and upper limit of new tokens per call (default 1000)",
    )
    p.add_argument(
        "--max-prompt-tokens",
        dest="max_prompt_tokens",
        type=int,
        help="longest prompt accepted (default 0 = the model's context length)",
    )
    p.add_argument(
        "--max-concurrency",
        dest="max_concurrency",
        type=int,
        help="calls admitted at once; more get RESOURCE_EXHAUSTED (default 4)",
    )
    p.add_argument("--metrics-port", dest="metrics_port", type=int, help="Prometheus port")
    p.add_argument("--drain-seconds", dest="drain_seconds", type=float)
    p.set_defaults(func=_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmvox-llm", description=__doc__)
    parser.add_argument(
        "--log-level", default=DEFAULT_LOG_LEVEL, help="env LLMVOX_LLM_LOG_LEVEL (default INFO)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)

    c = sub.add_parser("chat", help="stream an answer from a server to the terminal")
    c.add_argument("prompt", nargs="?", help="the question (default: read standard input)")
    c.add_argument("--addr", default=DEFAULT_ADDR, help="server HOST:PORT (env LLMVOX_LLM_ADDR)")
    c.add_argument("--system", help="system prompt (default: the server's)")
    c.add_argument("--max-tokens", dest="max_tokens", type=int)
    c.add_argument("--temperature", type=float, help="0 = greedy")
    c.add_argument("--top-p", dest="top_p", type=float)
    c.add_argument("--top-k", dest="top_k", type=int)
    c.add_argument("--stop", action="append", help="stop string (repeatable)")
    c.add_argument("--seed", type=int)
    c.add_argument("--image", action="append", help="image file to send (repeatable)")
    c.add_argument("--audio", action="append", help="16-bit PCM WAV file to send (repeatable)")
    c.add_argument("--timeout", type=float, help="deadline in seconds")
    c.set_defaults(func=_chat)

    h = sub.add_parser("health", help="standard gRPC health check; exit 0 when SERVING")
    h.add_argument("--addr", default=DEFAULT_ADDR, help="env LLMVOX_LLM_ADDR")
    h.add_argument("--service", default="", help="service name ('' = the whole server)")
    h.add_argument("--timeout", type=float, default=5.0)
    h.set_defaults(func=_health)

    g = sub.add_parser("convert-gguf", help="convert a GGUF model once to safetensors")
    g.add_argument("--model", required=True, help="directory or hub id holding the GGUF file")
    g.add_argument("--gguf-file", dest="gguf_file", help="file name inside --model")
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
