"""`tfb serve`: an OpenAI-compatible HTTP server for one model (tfb.serve; needs the `serve` extra)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from tfb.cli.common import safe
from tfb.cli.generate import CHATML, add_model_args, load_model
from tfb.errors import InputError


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from tfb.serve.app import ServeConfig, create_app
        from tfb.serve.engine import Engine
    except ImportError as e:
        raise InputError(f"tfb serve needs the serve extra ({e.name} is missing): pip install 'tfb[serve]'") \
            from None
    if args.parallel < 1:
        raise InputError("--parallel must be >= 1")
    if args.prompt_cache < 0:
        raise InputError("--prompt-cache must be >= 0")
    if args.max_body < 1:
        raise InputError("--max-body must be >= 1")
    if not 0 <= args.port < 65536:
        raise InputError("--port must be in 0..65535")
    api_key = args.api_key if args.api_key is not None else os.environ.get("TFB_API_KEY") or None
    model, tok = load_model(args)
    model_id = args.alias or args.model.name.removesuffix(".gguf")
    engine = Engine(model, tok, parallel=args.parallel, prompt_cache=int(args.prompt_cache * (1 << 20)))
    config = ServeConfig(model_id=model_id, api_key=api_key, max_body=args.max_body, chat_template_fallback=CHATML)
    if tok.chat_template is None:
        sys.stderr.write("tfb: the file has no chat template; chat completions use ChatML\n")
    app = create_app(engine, config)
    host = f"[{args.host}]" if ":" in args.host else args.host
    int8 = ", int8 activations" if args.int8_activations else ""
    sys.stderr.write(safe(f"tfb: serving {model_id} (context {engine.context}, {args.parallel} parallel{int8}) at "
                          f"http://{host}:{args.port}/v1 (Ctrl-C stops)\n"))
    sys.stderr.flush()
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                           timeout_graceful_shutdown=args.drain_timeout))
    server.run()
    return 0 if server.started else 1


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (chat, completions) with continuous batching")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--parallel", type=int, default=4, metavar="N", help="sequences decoded together at most")
    p.add_argument("--prompt-cache", type=float, default=1024, metavar="MIB",
                   help="memory for finished requests' caches, kept so that a prompt starting with the same tokens "
                        "(the next turn of a chat) computes only the rest (default 1024 MiB; 0: off)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require `Authorization: Bearer KEY` on /v1/ (default: $TFB_API_KEY, else none)")
    p.add_argument("--alias", default=None, help="the model's id in the API (default: the file name)")
    p.add_argument("--max-body", type=int, default=4 * 1024 * 1024, metavar="BYTES",
                   help="largest request body accepted (default 4 MiB)")
    p.add_argument("--drain-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="on Ctrl-C, how long running requests may take to finish")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (info: one line per request)")
    p.set_defaults(run=run_serve)
