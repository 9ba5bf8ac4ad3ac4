"""The seed plan's success table, measured: lines per family spec beside the lines of the shared
interpreter, next to mistral.rs's per-model Rust figures from the seed plan.

    python tools/line_counts.py          # prints a markdown table

A spec's lines are its own file's lines that are neither blank nor comments (what `extends` inherits is
counted once, in the base). The interpreter is every line of Python that runs a model, whatever the family.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# mistral.rs per-model Rust lines (seed plan); qwen2 was 566 before its own migration
SEED = {"qwen3": 248, "qwen2": 249, "starcoder2": 339, "phi2": 485, "phi3": 588, "mistral3": 1380, "qwen3moe": 644}
INTERPRETER = ["tfb/nn", "tfb/build.py", "tfb/config.py", "tfb/hparams.py", "tfb/spec/slots.py"]
# one module each, schema (tfb/spec/kinds) and torch (tfb/nn/mixers, tfb/nn/ffn): counted per kind, not shared
KIND_DIRS = ["tfb/spec/kinds", "tfb/nn/mixers", "tfb/nn/ffn"]


def code_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#"))


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def _is_kind(path: Path) -> bool:
    return any(path.is_relative_to(ROOT / d) and path.name != "__init__.py" for d in KIND_DIRS)


def interpreter_lines() -> dict[str, int]:
    """The shared interpreter: everything that runs a model except the kinds' own modules (the torch
    registry counts here; the spec language's schema, kinds' schemas included, does not)."""
    out = {}
    for entry in INTERPRETER:
        path = ROOT / entry
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        out[entry] = sum(_lines(f) for f in files if not _is_kind(f))
    return out


def kind_lines() -> dict[str, int]:
    """Each kind's lines: its schema module and its torch module (a leading `_` marks shared helpers)."""
    out: dict[str, int] = {}
    for d in KIND_DIRS:
        for f in sorted((ROOT / d).glob("*.py")):
            if f.name != "__init__.py":
                out[f.stem] = out.get(f.stem, 0) + _lines(f)
    return out


def table() -> str:
    specs = {p.stem: code_lines(p) for p in sorted((ROOT / "specs").glob("*.yaml"))}
    rows = ["| family | spec lines (tfb) | mistral.rs lines (seed) |", "|---|---:|---:|"]
    for name, lines in specs.items():
        seed = SEED.get(name)
        rows.append(f"| {name} | {lines} | {seed if seed is not None else ''} |")
    interp = interpreter_lines()
    seeded = [n for n in SEED if n in specs]
    rows.append(f"| **seed families, total** ({len(seeded)}) | {sum(specs[n] for n in seeded)} | "
                f"{sum(SEED[n] for n in seeded)} |")
    rows.append("")
    rows.append("| shared interpreter | lines |")
    rows.append("|---|---:|")
    rows += [f"| `{name}` | {n} |" for name, n in interp.items()]
    rows.append(f"| **total** | {sum(interp.values())} |")
    rows.append("")
    rows.append("| kind (schema + module) | lines |")
    rows.append("|---|---:|")
    rows += [f"| `{name}` | {n} |" for name, n in kind_lines().items()]
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
