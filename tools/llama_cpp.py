"""Fetch llama.cpp's own Python tools (convert_hf_to_gguf.py and its gguf-py) from the llama-cpp-python
sdist on PyPI, once, into a cache. They need no compiling; tests run the converter unchanged. Also the C
sources of ggml's block formats (ggml-quants.c and the headers it includes), for tools/ggml_quants.py, and
the model graphs (src/models/) with the architecture names, for the architecture map's tests.

    python tools/llama_cpp.py            # prints the directory holding convert_hf_to_gguf.py

The cache is $TFB_CACHE (default ~/.cache/tfb). The sdist is pinned by version and sha256.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
PREFIX = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
# what the converter needs, plus the ggml block layouts for reference
KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "ggml/src/ggml-common.h", "LICENSE")
# ggml's reference quantizers and dequantizers, and what they include
GGML_QUANTS = ("ggml/include/", "ggml/src/ggml-quants.c", "ggml/src/ggml-quants.h", "ggml/src/ggml-impl.h",
               "ggml/src/ggml-cpu/ggml-cpu-impl.h")
# one graph file per architecture, the architecture names, and which graph serves which architecture
MODEL_SOURCES = ("src/models/", "src/llama-arch.cpp", "src/llama-model.cpp")


def cache_dir() -> Path:
    return Path(os.environ.get("TFB_CACHE", Path.home() / ".cache" / "tfb"))


def _download(dest: Path) -> Path:
    archive = dest / SDIST
    if not archive.is_file():
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                            "--dest", tmp, f"llama-cpp-python=={VERSION}"], check=True)
            Path(tmp, SDIST).replace(archive)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != SHA256:
        archive.unlink()
        raise RuntimeError(f"{SDIST}: sha256 {digest} is not the pinned {SHA256}")
    return archive


def llama_cpp_dir() -> Path:
    """The directory holding convert_hf_to_gguf.py, conversion/ and gguf-py/ (downloaded on first use)."""
    target = cache_dir() / f"llama.cpp-{VERSION}"
    if not (target / "convert_hf_to_gguf.py").is_file():
        _extract(KEEP, target)
    return target


def ggml_quants_dir() -> Path:
    """The directory holding ggml/src/ggml-quants.c and the headers it includes (downloaded on first use)."""
    target = llama_cpp_dir()
    if not (target / "ggml" / "src" / "ggml-quants.c").is_file():
        _extract(GGML_QUANTS, target)
    return target


def model_sources_dir() -> Path:
    """The directory holding src/models/*.cpp, src/llama-arch.cpp and src/llama-model.cpp (downloaded on
    first use)."""
    target = llama_cpp_dir()
    if not (target / "src" / "llama-model.cpp").is_file():
        _extract(MODEL_SOURCES, target)
    return target


def _extract(keep: tuple[str, ...], target: Path) -> None:
    """The sdist's files under llama.cpp/ whose paths start with one of `keep`, into `target`."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    archive = _download(root)
    with tempfile.TemporaryDirectory(dir=root) as tmp, tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith(PREFIX) and m.name[len(PREFIX):].startswith(keep)
                   and (m.isfile() or m.isdir())]
        tar.extractall(tmp, members=members, filter="data")
        extracted = Path(tmp, PREFIX)
        if not target.exists():
            extracted.replace(target)
            return
        for path in sorted(extracted.rglob("*")):  # add to an existing cache without touching what it has
            if path.is_file():
                dest = target / path.relative_to(extracted)
                dest.parent.mkdir(parents=True, exist_ok=True)
                path.replace(dest)


if __name__ == "__main__":
    print(llama_cpp_dir())
