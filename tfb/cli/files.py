"""Commands that read GGUF files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tfb.cli.common import add_spec_dirs, safe


def run_inspect(args: argparse.Namespace) -> int:
    from tfb.authoring.inspect import inspect_file

    text, problem = inspect_file(args.model, spec=args.spec, spec_dirs=tuple(args.spec_dir),
                                 all_layers=args.all_layers)
    print(safe(text))
    if problem is not None:  # the report is still useful; the exit status says the file cannot run
        raise problem
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("inspect", help="show a GGUF file: architecture, matching spec, config, tokenizer, tensors")
    p.add_argument("model", type=Path, help="a .gguf file or a checkpoint directory (config.json + *.safetensors)")
    p.add_argument("--spec", help="spec name or path (default: the one serving general.architecture)")
    p.add_argument("--all-layers", action="store_true", help="list every layer's tensors, not only the first")
    add_spec_dirs(p)
    p.set_defaults(run=run_inspect)
