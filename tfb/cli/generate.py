"""`tfb run` (complete a prompt) and `tfb chat` (talk with the file's chat template)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from tfb.cli.common import EXIT_INTERRUPTED, add_spec_dirs, safe
from tfb.errors import InputError

# ChatML, for files without a chat template (llama.cpp falls back to it as well)
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class ProgressBar:
    """A loading bar on a terminal; silent when stderr is not one."""

    def __init__(self, label: str, stream: TextIO = sys.stderr) -> None:
        self.label, self.stream = label, stream
        self.enabled = stream.isatty()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        width = 30
        filled = width * done // max(total, 1)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                          f"{done / 2**20:,.0f}/{total / 2**20:,.0f} MiB")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="a .gguf file or a checkpoint directory (config.json + *.safetensors)")
    p.add_argument("--spec", help="spec name or path (default: the one serving general.architecture)")
    p.add_argument("-c", "--ctx-size", type=int, default=None, help="context to run with (default: the file's)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="compute dtype")
    p.add_argument("--expand", action="store_true",
                   help="expand quantized weights at load (more memory; faster only for types without native kernels)")
    p.add_argument("--cache-type", choices=["float32", "bfloat16", "float16"], default=None,
                   help="KV cache element type (default: the compute dtype); float16 as llama.cpp's default cache")
    p.add_argument("--int8-activations", action="store_true",
                   help="round activations to 8 bits in the decoding steps' products with quantized weights, as "
                        "llama.cpp does (faster; default: exact float32 products)")
    add_spec_dirs(p)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--n-predict", type=int, default=256, help="tokens to generate at most")
    p.add_argument("--temp", type=float, default=0.8, help="temperature (0: greedy)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--repeat-last-n", type=int, default=64)
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")


def load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    from tfb.build import load
    from tfb.text import load_tokenizer

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    model = load(args.model, spec=args.spec, dtype=dtypes[args.dtype], context_length=args.ctx_size,
                 spec_dirs=tuple(args.spec_dir), expand=args.expand,
                 cache_dtype=dtypes[args.cache_type] if args.cache_type else None,
                 int8_activations=args.int8_activations, progress=ProgressBar("loading"))
    return model, load_tokenizer(args.model)


def sampling_from(args: argparse.Namespace) -> Any:
    from tfb.text.sampling import Sampling

    return Sampling(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                    repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n, seed=args.seed)


def report(stats: Any, stream: TextIO = sys.stderr) -> None:
    stream.write(f"\nprompt: {stats.prompt_tokens} tokens, {stats.prompt_tokens_per_second:.1f} tok/s | "
                 f"generation: {stats.generated_tokens} tokens, {stats.generate_tokens_per_second:.1f} tok/s | "
                 f"stop: {stats.stop_reason}\n")


def run_run(args: argparse.Namespace) -> int:
    from tfb.text.generate import Generation

    if args.n_predict < 0:
        raise InputError("-n must be >= 0")
    model, tok = load_model(args)
    gen = Generation(model, tok, args.prompt, max_tokens=args.n_predict, sampling=sampling_from(args),
                     stop=args.stop, add_special=not args.no_special)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    status = 0
    try:
        for piece in gen:
            sys.stdout.write(safe(piece))
            sys.stdout.flush()
    except KeyboardInterrupt:
        gen.stats.stop_reason = "interrupted"
        status = EXIT_INTERRUPTED
    sys.stdout.write("\n")
    report(gen.stats)
    return status


def run_chat(args: argparse.Namespace) -> int:
    from tfb.text.generate import Generation, Session

    model, tok = load_model(args)
    if tok.chat_template is None:
        sys.stderr.write("tfb: the file has no chat template; using ChatML\n")
        tok.chat_template = CHATML
    messages: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    session = Session(model.new_cache())
    sampling = sampling_from(args)
    sys.stderr.write("chat: an empty line or Ctrl-D ends it; Ctrl-C stops a reply\n")
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            sys.stdout.write("\n")
            return 0
        if not line.strip():
            return 0
        messages.append({"role": "user", "content": line})
        ids = tok.encode_chat(messages, add_generation_prompt=True)
        gen = Generation(model, tok, ids, max_tokens=args.n_predict, sampling=sampling, stop=args.stop,
                         session=session)
        reply = []
        try:
            for piece in gen:
                reply.append(piece)
                sys.stdout.write(safe(piece))
                sys.stdout.flush()
        except KeyboardInterrupt:
            gen.stats.stop_reason = "interrupted"
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
        if args.verbose:
            report(gen.stats)


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="complete a prompt, streaming the text, then print tokens/s")
    add_model_args(p)
    p.add_argument("-p", "--prompt", required=True, help="the text to continue")
    p.add_argument("--no-special", action="store_true", help="do not add BOS/EOS to the prompt")
    add_sampling_args(p)
    p.set_defaults(run=run_run)

    p = sub.add_parser("chat", help="an interactive chat with the file's chat template")
    add_model_args(p)
    p.add_argument("--system", default="", help="system message")
    p.add_argument("-v", "--verbose", action="store_true", help="print tokens/s after each reply")
    add_sampling_args(p)
    p.set_defaults(run=run_chat)
