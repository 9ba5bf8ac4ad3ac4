"""Fetch llama.cpp's own Python tools (convert_hf_to_gguf.py and its gguf-py) from the llama-cpp-python
sdist on PyPI, once, into a cache. They need no compiling; tests run the converter unchanged. Also the C
sources of ggml's block formats (ggml-quants.c and the headers it includes), for tools/ggml_quants.py, and
the model graphs (src/models/) with the architecture names, for the architecture map's tests; the
vocabulary files with their tokenizer test vectors (models/ggml-vocab-*), for the tokenizer's tests; and
llama-cpp-python itself built from the same sdist (`llama_cpp_python_dir`), the second reference of the tests.

    python tools/llama_cpp.py            # prints the directory holding convert_hf_to_gguf.py
    python tools/llama_cpp.py --build    # builds llama-cpp-python (once) and prints the directory to import it from

The cache is $TFB_CACHE (default ~/.cache/tfb). The sdist is pinned by version and sha256.
"""

from __future__ import annotations

import hashlib
import os
import shutil
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
# llama.cpp's vocabulary-only files with the test vectors of its tests/test-tokenizer-0 (NAME.gguf.inp/.out)
VOCABS = ("models/ggml-vocab-",)


# what a CPU build of the llama library needs: its CMake project, ggml and the vendored headers, and the
# Python package (ctypes bindings) that loads it
BUILD_KEEP = ("CMakeLists.txt", "cmake/", "ggml/", "src/", "include/", "vendor/", "licenses/", "LICENSE")
PACKAGE = f"llama_cpp_python-{VERSION}/llama_cpp/"
# llama-cpp-python's one import outside the standard library and tfb's own dependencies (numpy, jinja2,
# typing-extensions), pinned; installed next to the package
DISKCACHE = "diskcache==5.6.3"
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DGGML_NATIVE=ON",
    # only the library: no common utilities, tools, server, examples or tests (what llama-cpp-python's own
    # CMakeLists forces on, the common library, doubles the build time and is not loaded by the bindings)
    "-DLLAMA_BUILD_COMMON=OFF", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF",
    # the libraries find each other next to themselves once moved into the package
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON", "-DCMAKE_INSTALL_RPATH=$ORIGIN",
)


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


def vocab_dir() -> Path:
    """The directory holding llama.cpp's models/ggml-vocab-*.gguf and their .inp/.out test vectors
    (downloaded on first use)."""
    target = llama_cpp_dir()
    if not (target / "models" / "ggml-vocab-gpt-2.gguf.out").is_file():
        _extract(VOCABS, target)
    return target / "models"


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


def llama_cpp_python_dir() -> Path:
    """A directory to put on sys.path (or PYTHONPATH) to import llama-cpp-python, built on first use from the
    pinned sdist for this machine's CPU (`-DGGML_NATIVE=ON`), only the llama library and the ggml ones it
    loads (a few minutes on two cores). Needs CMake (from PyPI when there is none) and a C++ compiler.

    The package is importable as `llama_cpp`, a name that tools/llama_cpp.py (this module) shadows for any
    script run from tools/: import it in a process whose path does not start with tools/.

    Safe to call from several processes at once: one builds under a lock, into a temporary directory renamed
    into place when complete; the others wait and find it built."""
    root = cache_dir()
    target = root / f"llama-cpp-python-{VERSION}"
    if _built(target):
        return target
    import fcntl  # POSIX, as the build is; imported here so that the converter's users need not be

    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"llama-cpp-python-{VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _built(target):
            _build(target)
    return target


def _built(target: Path) -> bool:
    return (target / "llama_cpp" / "lib" / "libllama.so").exists() and (target / "diskcache").is_dir()


def _build(target: Path) -> None:
    root = cache_dir()
    archive = _download(root)
    with tempfile.TemporaryDirectory(dir=root) as tmp, tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers()
                   if (m.name.startswith(PACKAGE)
                       or (m.name.startswith(PREFIX) and m.name[len(PREFIX):].startswith(BUILD_KEEP)))
                   and (m.isfile() or m.isdir() or m.issym())]
        tar.extractall(tmp, members=members, filter="data")
        source, build, out = Path(tmp, PREFIX), Path(tmp, "build"), Path(tmp, "out")
        cmake = _cmake(Path(tmp))
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        _run([cmake, "-S", str(source), "-B", str(build), *generator, *CMAKE_OPTIONS])
        _run([cmake, "--build", str(build), "--target", "llama", "--parallel", str(os.cpu_count() or 2)])
        shutil.copytree(Path(tmp, PACKAGE), out / "llama_cpp", ignore=shutil.ignore_patterns("server"))
        lib = out / "llama_cpp" / "lib"
        lib.mkdir()
        for path in sorted((build / "bin").glob("lib*.so*")):  # the libraries and their version links
            shutil.copy2(path, lib / path.name, follow_symlinks=False)
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(out), DISKCACHE])
        if target.exists():  # a broken earlier build (a crash between these two lines cannot leave one)
            shutil.rmtree(target)
        out.replace(target)


def _cmake(tmp: Path) -> str:
    """The system's cmake, else the one on PyPI installed into `tmp`."""
    found = shutil.which("cmake")
    if found:
        return found
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(tmp / "cmake"), "cmake"])
    return str(tmp / "cmake" / "cmake" / "data" / "bin" / "cmake")  # the binary, not the wrapper script


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])}... failed:\n{(result.stdout + result.stderr)[-4000:]}")


if __name__ == "__main__":
    print(llama_cpp_python_dir() if sys.argv[1:] == ["--build"] else llama_cpp_dir())
