"""llama.cpp's tokenizer test vectors: models/ggml-vocab-NAME.gguf.inp (texts separated by a marker line) and
NAME.gguf.out (llama.cpp's ids, one line per text)."""

from __future__ import annotations

from pathlib import Path

SEPARATOR = "\n__ggml_vocab_test__\n"


def vectors(directory: Path, name: str) -> list[tuple[str, list[int]]]:
    """Pairs (text, ids), the texts split exactly as llama.cpp's tests/test-tokenizer-0.cpp splits them."""
    raw = (directory / f"ggml-vocab-{name}.gguf.inp").read_bytes().decode("utf-8")
    texts, pos = [], 0
    while pos < len(raw):
        nxt = raw.find(SEPARATOR, pos)
        if nxt < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:nxt])
        pos = nxt + len(SEPARATOR)
    lines = (directory / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").splitlines()
    assert len(texts) == len(lines), "the .inp and .out files disagree on the number of tests"
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines, strict=True)]
