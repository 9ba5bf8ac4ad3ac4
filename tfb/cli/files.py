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


def run_convert(args: argparse.Namespace) -> int:
    from tfb.cli.generate import ProgressBar
    from tfb.sources.convert import convert

    out = convert(args.checkpoint, args.out, args.outtype, vocab_pre=args.vocab_pre, spec_dirs=tuple(args.spec_dir),
                  progress=ProgressBar("converting"))
    print(safe(f"wrote {out}"))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("inspect", help="show a GGUF file: architecture, matching spec, config, tokenizer, tensors")
    p.add_argument("model", type=Path, help="a .gguf file or a checkpoint directory (config.json + *.safetensors)")
    p.add_argument("--spec", help="spec name or path (default: the one serving general.architecture)")
    p.add_argument("--all-layers", action="store_true", help="list every layer's tensors, not only the first")
    add_spec_dirs(p)
    p.set_defaults(run=run_inspect)

    p = sub.add_parser("convert", help="write a checkpoint directory as llama.cpp's convert_hf_to_gguf.py would")
    p.add_argument("checkpoint", type=Path, help="checkpoint directory: config.json, *.safetensors, tokenizer.json")
    p.add_argument("out", type=Path, help="the .gguf file to write")
    p.add_argument("--outtype", choices=["f32", "f16", "bf16", "q8_0"], default="f16",
                   help="storage type of the matrices (vectors and norms stay f32, as the converter does)")
    p.add_argument("--vocab-pre", metavar="NAME", help="tokenizer.ggml.pre for a BPE tokenizer whose pre-tokenizer "
                   "the converter's fingerprint table does not know")
    add_spec_dirs(p)
    p.set_defaults(run=run_convert)
