"""Commands for spec authors: check a spec against a file, draft a spec from a file, list the specs,
print the spec language's JSON Schema. `specs` and `schema` do not import torch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tfb.cli.common import EXIT_INVALID, add_spec_dirs, safe
from tfb.errors import InputError


def run_check(args: argparse.Namespace) -> int:
    from tfb.authoring.check import check

    if len(args.paths) > 2:
        raise InputError("tfb check takes [SPEC] MODEL.gguf")
    spec, model = (None, args.paths[0]) if len(args.paths) == 1 else args.paths
    report = check(model, spec, args.spec_dir)
    for line in report.lines(verbose=args.verbose):
        print(safe(line))
    return 0 if report.ok else EXIT_INVALID


# named options for what a file cannot settle: option -> (spec path, allowed values)
DRAFT_CHOICES: dict[str, tuple[str, tuple[str, ...]]] = {
    "rope_pairing": ("mixer.rope.pairing", ("adjacent", "half")),
    "activation": ("ffn.activation", ("silu", "gelu_tanh", "gelu_erf", "relu", "relu_squared")),
    "residual": ("block.residual", ("sequential", "parallel")),
    "expert_gating": ("ffn.gating", ("softmax", "sigmoid", "softmax_selected")),
    "expert_weights_norm": ("hparams.expert_weights_norm", ("true", "false")),
    "sliding_window": ("mixer.sliding_window", ("all", "none")),
}


def _given(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    given: dict[str, Any] = {}
    for option, (path, _) in DRAFT_CHOICES.items():
        value = getattr(args, option)
        if value is not None:
            given[path] = {"true": True, "false": False}.get(value, value)
    for item in args.set:
        path, sep, text = item.partition("=")
        if not sep or not path.strip():
            raise InputError(f"--set {item!r}: give PATH=VALUE, e.g. --set ffn.activation=gelu_erf")
        try:
            given[path.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise InputError(f"--set {item!r}: the value is not YAML ({e})") from None
    return given


def _scratch_copy(text: str) -> Path:
    """The draft in a file to check: in the working directory, where a relative `extends:` path points
    from, or in the temporary directory when that is not writable."""
    import tempfile

    for directory in (".", None):
        try:
            with tempfile.NamedTemporaryFile("w", prefix=".tfb-draft-", suffix=".yaml", dir=directory,
                                             delete=False, encoding="utf-8") as tmp:
                tmp.write(text)
            return Path(tmp.name)
        except OSError:
            continue
    raise InputError("no writable directory to check the draft in")


def run_draft(args: argparse.Namespace) -> int:
    import sys

    from tfb.authoring.check import check
    from tfb.authoring.draft_yaml import draft_spec

    text, _ = draft_spec(args.model, args.extends, args.spec_dir, _given(args), args.out)
    if args.out is not None:
        try:
            args.out.write_text(text, encoding="utf-8")
        except OSError as e:
            raise InputError(f"{args.out}: cannot write the draft ({e.strerror})") from None
        target = args.out
    else:
        sys.stdout.write(text)
        target = _scratch_copy(text)
    try:
        report = check(args.model, target, args.spec_dir)
    finally:
        if args.out is None:
            target.unlink()
    for finding in report.problems:
        print(safe(finding), file=sys.stderr)
    n = len(report.problems)
    verdict = "passes tfb check" if report.ok else f"fails tfb check ({n} problem{'s' * (n != 1)} above)"
    print(f"draft {'written to ' + str(args.out) if args.out else 'printed'}; it {verdict}", file=sys.stderr)
    return 0 if report.ok else EXIT_INVALID


def run_specs(args: argparse.Namespace) -> int:
    import sys

    from tfb.authoring.findings import show_path
    from tfb.authoring.summary import listing
    from tfb.errors import TfbError
    from tfb.spec.loader import load_spec
    from tfb.spec.registry import search_dirs

    dirs = search_dirs(args.spec_dir)
    seen: dict[str, Path] = {}
    failed = 0
    for directory in dirs:
        for path in sorted(directory.glob("*.yaml")) if directory.is_dir() else []:
            if path.stem in seen:
                continue  # hidden by a spec of the same name earlier on the search path
            seen[path.stem] = path
            try:
                spec = load_spec(path, args.spec_dir)
            except TfbError as e:
                failed += 1
                print(safe(e), file=sys.stderr)
                continue
            shadowed = [d / path.name for d in dirs if d != directory and (d / path.name).is_file()]
            lines = listing(spec, show_path(str(path)))
            if shadowed:
                lines[0] += f"; overrides {', '.join(show_path(str(p)) for p in shadowed)}"
            print(safe("\n".join(lines)))
    return EXIT_INVALID if failed else 0


def run_schema(args: argparse.Namespace) -> int:
    import json

    from tfb.authoring.json_schema import spec_json_schema

    print(json.dumps(spec_json_schema(), indent=2))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("check", help="check a spec against a GGUF file: tensors, shapes, storage types, "
                       "metadata keys, config; one line per problem, exit 1 on any")
    p.add_argument("paths", nargs="+", metavar="[SPEC] MODEL", help="spec name or path (default: the spec "
                   "serving the file's general.architecture), then a .gguf file or a checkpoint directory")
    p.add_argument("-v", "--verbose", action="store_true", help="one note per absent key, with its rule's line")
    add_spec_dirs(p)
    p.set_defaults(run=run_check)

    p = sub.add_parser("draft", help="propose a spec for a GGUF file from its metadata and tensors; lists what "
                       "it had to assume")
    p.add_argument("model", type=Path, help="a .gguf file")
    p.add_argument("--extends", metavar="SPEC", help="base spec to extend (default: the packaged abstract base); "
                   "the draft holds only the differences from it")
    p.add_argument("--out", type=Path, help="write the draft here (default: standard output)")
    for option, (path, allowed) in DRAFT_CHOICES.items():
        p.add_argument(f"--{option.replace('_', '-')}", choices=allowed, help=f"set {path} (not in the file)")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="set any spec value, e.g. --set hparams.attn_temperature_length='{default: 8192}' "
                   "(repeatable; VALUE is YAML)")
    add_spec_dirs(p)
    p.set_defaults(run=run_draft)

    p = sub.add_parser("specs", help="list the specs on the search path: what each serves, its base, its switches")
    add_spec_dirs(p)
    p.set_defaults(run=run_specs)

    p = sub.add_parser("schema", help="print the spec language as a JSON Schema, for editors "
                       "(tfb schema > tfb-spec.schema.json)")
    p.set_defaults(run=run_schema)
