"""Build a tiny transformers family from tests/tiny_hf.py, convert it with llama.cpp's converter and print
what the GGUF file holds: every metadata key with its value, every tensor with its shape and type.

    python tools/dump_family.py deepseek_v3               # F32 file in a temporary directory
    python tools/dump_family.py llama4 --type q4_k --keep out/

Shapes are printed twice: in ggml order (ne[0] first, as gguf and llama.cpp's create_tensor list them)
and in torch order (the reverse, as the tensor reads in numpy/torch). Token lists are summarised.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from gguf import GGUFReader, GGUFValueType
from gguf.gguf_reader import ReaderField

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from tiny_hf import FAMILIES, build_hf, convert, preround  # noqa: E402

LONG = 16  # arrays longer than this are summarised


def _value(field: ReaderField) -> str:
    vtype = GGUFValueType(field.types[0])
    value = field.contents()
    if vtype == GGUFValueType.ARRAY:
        sub = GGUFValueType(field.types[-1]).name.lower()
        if len(value) > LONG:
            return f"[{len(value)} x {sub}] {value[:3]!r}..."
        return f"[{sub}] {value!r}"
    return f"({vtype.name.lower()}) {value!r}"


def dump(path: Path) -> str:
    reader = GGUFReader(path)
    lines = ["# metadata"]
    for key, field in reader.fields.items():
        if not key.startswith("GGUF."):
            lines.append(f"{key} = {_value(field)}")
    lines.append(f"# tensors ({len(reader.tensors)})")
    for t in reader.tensors:
        ggml = str([int(d) for d in t.shape])
        torch_order = str([int(d) for d in reversed(t.shape)])
        lines.append(f"{t.name:40s} ggml {ggml:22s} torch {torch_order:22s} {t.tensor_type.name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=sorted(FAMILIES))
    parser.add_argument("--type", default="f32", help="f32, f16, bf16, q8_0 (the converter) or a ggml type name")
    parser.add_argument("--keep", type=Path, help="directory to keep the checkpoint and the GGUF file in")
    args = parser.parse_args(argv)
    model, family = build_hf(args.family)
    preround(model, args.type, family.keep_f32, family.transposed)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        path = convert(model, family, args.type, workdir)
        print(f"# {args.family}: {family.model_class} -> {path.name}")
        print(dump(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
