"""Regenerate tfb/text/pre_hashes.json: the converter's table of BPE pre-tokenizer fingerprints.

llama.cpp's convert_hf_to_gguf.py names a BPE tokenizer's pre-tokenizer (`tokenizer.ggml.pre`) by encoding
one fixed text and hashing the token ids (sha256 of the ids' list as Python prints it); its table maps each
known hash to a name. This reads that table and the text, as data, from the pinned converter
(tools/llama_cpp.py) and writes them as JSON for tfb.sources.vocab.

    python tools/pre_hashes.py
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from llama_cpp import VERSION, llama_cpp_dir  # noqa: E402

OUT = ROOT / "tfb" / "text" / "pre_hashes.json"


def read_table(source: str) -> tuple[str, dict[str, str]]:
    tree = ast.parse(source)
    func = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "get_vocab_base_pre")
    text = ""
    table: dict[str, str] = {}
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "chktxt":
            text = ast.literal_eval(node.value)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) \
                and isinstance(node.test.left, ast.Name) and node.test.left.id == "chkhsh":
            digest = ast.literal_eval(node.test.comparators[0])
            for stmt in node.body:
                target = stmt.targets[0] if isinstance(stmt, ast.Assign) else None
                if isinstance(stmt, ast.Assign) and isinstance(target, ast.Name) and target.id == "res":
                    table.setdefault(digest, ast.literal_eval(stmt.value))
    return text, table


def main() -> None:
    source = (llama_cpp_dir() / "conversion" / "base.py").read_text(encoding="utf-8")
    text, table = read_table(source)
    OUT.write_text(json.dumps({"source": f"llama.cpp convert_hf_to_gguf.py (llama-cpp-python {VERSION})",
                               "text": text, "hashes": table}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(table)} hashes")


if __name__ == "__main__":
    main()
