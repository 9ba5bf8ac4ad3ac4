"""Write a corpus of hostile and broken GGUF files: each a small corruption of one valid tiny model.

    python tools/make_hostile_gguf.py --out DIR

DIR/base.gguf is the valid model (a one-layer `llama` spec model with Q8_0 matrices and an 8-token
vocabulary, about 9 KB); DIR/NAME.gguf is one case each; DIR/manifest.json lists every case with the
stage that must reject it ("reader": opening it with GGUFFile; "config" and "weights": tfb.load), the
tfb error class, a fragment of the expected message and the place it must name (byte offset, key or
tensor). The output is deterministic: the same bytes on every run.

The base file is re-encoded by a small GGUF writer of our own (checked to reproduce the `gguf` package's
bytes exactly), so that a case can change any count, length, type or offset independently of the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from gguf import GGMLQuantizationType, GGUFWriter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
from gguf_layout import Layout  # noqa: E402
from hostile_cases import CASES  # noqa: E402
from make_tiny_gguf import make  # noqa: E402

BASE_SIZES = {"hidden_size": 32, "n_layers": 1, "n_heads": 4, "n_kv_heads": 2, "head_dim": 8,
              "intermediate_size": 32, "context_length": 64}
TOKENS = ["<unk>", "<s>", "</s>", "\u2581a", "\u2581b", "a", "b", "c"]


def _write_vocab(path: Path) -> None:
    writer = GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS)
    writer.add_token_scores([-float(i) for i in range(len(TOKENS))])
    writer.add_token_types([2, 3, 3, 1, 1, 1, 1, 1])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def make_base(out: Path) -> bytes:
    """The valid tiny model, written by the `gguf` package; its bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.gguf"
        _write_vocab(vocab)
        make("llama", out, BASE_SIZES, GGMLQuantizationType.Q8_0, vocab, seed=0)
    return out.read_bytes()


def write_corpus(out: Path) -> list[dict[str, str]]:
    out.mkdir(parents=True, exist_ok=True)
    base_path = out / "base.gguf"
    raw = make_base(base_path)
    base = Layout.read(base_path)
    if base.to_bytes() != raw:
        raise SystemExit("the corpus writer does not reproduce the base file; fix tools/gguf_layout.py")
    entries = []
    for case in CASES:
        data = case.make(base.copy(), raw)
        (out / f"{case.name}.gguf").write_bytes(data)
        entries.append({"file": f"{case.name}.gguf", "stage": case.stage, "error": case.error,
                        "expect": case.expect, "place": case.place, "about": case.about})
    manifest = {"base": "base.gguf", "cases": entries}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory for the files and manifest.json")
    args = parser.parse_args(argv)
    entries = write_corpus(args.out)
    print(f"{len(entries)} cases in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
