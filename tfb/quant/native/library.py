"""Build, cache and load the native kernels: C sources shipped with the package, compiled on first use.

The library is built with the system C compiler ($CC, else `cc`) in a few seconds: kernels.c and int8.c once per
instruction set (AVX-512 with VNNI, AVX-512, AVX2, portable C), each pass with only its own -m flags, and
runtime.c and step.c (a planned decoding step) once; runtime.c picks the best set the CPU supports at run time,
or the one named by $TFB_ISA (no -march=native, so a cached build also runs on other machines of the same
architecture). The IQ codebooks
reach the C code as a header generated into the build directory from tfb/quant/grids.py (tables.py).
Builds are cached under $TFB_CACHE/native (default ~/.cache/tfb/native), keyed by a hash of the sources (the
generated header included), the flags and the compiler's identity; a build goes to a temporary name and is
renamed into place, so processes that build at the same time do not see each other's half-written files.

When anything fails (no compiler, a compile error, a library that does not load) `load()` returns None
and callers keep the torch path; TFB_NATIVE=0 asks for that explicitly.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tfb.quant.native import tables

SOURCE_DIR = Path(__file__).resolve().parent
SOURCES = ("formats.h", "simd.h", "unpack.h", "kernels.c", "int8.c", "runtime.c", "step.c")
PER_ISA_SOURCES = ("kernels.c", "int8.c")  # compiled once per instruction set
COMMON_SOURCES = ("runtime.c", "step.c")  # compiled once
COMMON_FLAGS = ["-O3", "-std=gnu11", "-fPIC", "-pthread", "-fvisibility=hidden", "-ffp-contract=off"]
X86_ISAS = {
    "avx512vnni": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mavx2", "-mfma", "-mf16c"],
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
}
OPTIONAL_ISAS = ("avx512vnni",)  # passes whose -m flags an older compiler lacks: the library is built without them
BUILD_SECONDS = 300  # generous: a loaded machine may be slow, but a hung compiler must not hang tfb

_lock = threading.Lock()
_state: dict[str, ctypes.CDLL | None] = {}


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def compiler() -> str:
    return os.environ.get("CC") or "cc"


def cache_dir() -> Path:
    root = os.environ.get("TFB_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "tfb") / "native"


def compile_commands(cc: str, out_dir: Path) -> tuple[list[list[str]], list[Path]]:
    """One compile command per object file, and the objects they make."""
    passes = dict(X86_ISAS) if is_x86() else {}
    passes["portable"] = []
    commands, objects = [], []
    for isa, flags in passes.items():
        for source in PER_ISA_SOURCES:
            obj = out_dir / f"{source.removesuffix('.c')}_{isa}.o"
            commands.append([cc, *COMMON_FLAGS, *flags, f"-DTFB_ISA_SYMBOL=tfb_kernels_{isa}", f"-I{out_dir}", "-c",
                             str(SOURCE_DIR / source), "-o", str(obj)])
            objects.append(obj)
    for source in COMMON_SOURCES:
        obj = out_dir / f"{source.removesuffix('.c')}.o"
        commands.append([cc, *COMMON_FLAGS, "-c", str(SOURCE_DIR / source), "-o", str(obj)])
        objects.append(obj)
    return commands, objects


def generated_sources() -> dict[str, str]:
    """Headers written into the build directory before compiling: name -> text."""
    return {tables.HEADER_NAME: tables.grid_header()}


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_SECONDS, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:1] + command[-3:])} failed: {result.stderr.strip()[-2000:]}")


def _attempt(command: list[str]) -> RuntimeError | None:
    try:
        _run(command)
    except RuntimeError as error:
        return error
    return None


def _compile(commands: list[list[str]], objects: list[Path]) -> list[Path]:
    """Run the compile commands (one per object); the objects to link. An optional pass that fails is left
    out (runtime.c then never picks it); any other failure raises."""
    with ThreadPoolExecutor(len(commands)) as executor:
        errors = list(executor.map(_attempt, commands))
    dropped = set()
    for obj, error in zip(objects, errors, strict=True):
        if error is None:
            continue
        optional = [isa for isa in OPTIONAL_ISAS if obj.stem.endswith(f"_{isa}")]
        if not optional:
            raise error
        dropped.update(optional)
    return [obj for obj in objects if not any(obj.stem.endswith(f"_{isa}") for isa in dropped)]


def _identity(cc: str) -> str:
    """What makes a build reusable: sources, flags, the compiler (path and version), the machine."""
    path = shutil.which(cc)
    if path is None:
        raise RuntimeError(f"no C compiler: {cc!r} not found (set CC to one)")
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60, check=False).stdout
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes() + b"\0")
    for name, text in generated_sources().items():
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    digest.update(repr((COMMON_FLAGS, X86_ISAS, path, version, platform.machine(), platform.system())).encode())
    return digest.hexdigest()[:20]


def build() -> Path:
    """The cached library, built first if needed. Raises RuntimeError (or OSError) when it cannot be."""
    cc = compiler()
    target = cache_dir() / f"libtfb_native-{_identity(cc)}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        out_dir = Path(tmp)
        for name, text in generated_sources().items():
            (out_dir / name).write_text(text)
        commands, objects = compile_commands(cc, out_dir)
        objects = _compile(commands, objects)
        linked = out_dir / target.name
        _run([cc, "-shared", "-pthread", *map(str, objects), "-lm", "-o", str(linked)])
        os.replace(linked, target)  # atomic: a concurrent build of the same sources wrote the same bytes
    return target


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    signatures = {
        "tfb_matmul": (ctypes.c_int, [ctypes.c_int, ptr, i64, i64, i64, ptr, i64, ptr]),
        "tfb_matmul_int8": (ctypes.c_int, [ctypes.c_int, ptr, i64, i64, i64, ptr, i64, ptr]),
        "tfb_matmul_experts": (ctypes.c_int, [ctypes.c_int, ptr, i64, i64, i64, i64, i64, ctypes.c_int, ptr, i64,
                                              ptr, i64, ptr]),
        "tfb_dequantize": (ctypes.c_int, [ctypes.c_int, ptr, i64, ptr]),
        "tfb_attend": (ctypes.c_int, [ptr, i64, i64, i64, i64, ptr, i64, i64, ptr, i64, i64, i64, i64,
                                      ctypes.c_int, ctypes.c_float, ctypes.c_float, ptr, ptr]),
        "tfb_rms_norm": (ctypes.c_int, [ptr, i64, i64, ptr, ctypes.c_float, ptr]),
        "tfb_rope": (ctypes.c_int, [ptr, i64, i64, i64, i64, ptr, ptr, ctypes.c_int, ptr]),
        "tfb_step": (ctypes.c_int, [ptr, i64, i64, ptr, ptr, i64]),
        "tfb_supports": (ctypes.c_int, [ctypes.c_int]),
        "tfb_supports_int8": (ctypes.c_int, [ctypes.c_int]),
        "tfb_int8_rows": (ctypes.c_int, [ctypes.c_int]),
        "tfb_set_isa": (ctypes.c_int, [ctypes.c_char_p]),
        "tfb_isa": (ctypes.c_char_p, []),
        "tfb_set_threads": (ctypes.c_int, [ctypes.c_int]),
        "tfb_threads": (ctypes.c_int, []),
        "tfb_set_spin_us": (None, [ctypes.c_int]),
        "tfb_use_openmp": (ctypes.c_int, [ptr]),
        "tfb_uses_openmp": (ctypes.c_int, []),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def disabled() -> bool:
    return os.environ.get("TFB_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def load() -> ctypes.CDLL | None:
    """The native library, built on first call; None (after one warning) where it cannot be had."""
    with _lock:
        if "lib" not in _state:
            _state["lib"] = None if disabled() else _try_load()
        return _state["lib"]


def _try_load() -> ctypes.CDLL | None:
    try:
        return _declare(ctypes.CDLL(str(build())))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(f"tfb: native kernels unavailable, using the slower torch path ({error})",
                      RuntimeWarning, stacklevel=3)
        return None
