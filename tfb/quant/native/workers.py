"""Which threads run the native kernels, and how many.

By default the kernels borrow torch's OpenMP team: the library has no OpenMP of its own, it is handed
the GOMP_parallel entry point of the runtime torch already loaded (Linux; torch's parallel backend must
be OpenMP). A second set of threads on the same cores does badly: after each parallel region torch's
OpenMP threads spin, waiting for more work, and the other threads have to fight them for the cores
(measured in docs/benchmarks.md). Where that runtime is not found, or TFB_THREADING=pool, the library
uses its own small pthread pool. TFB_THREADS sets the count (default: torch.get_num_threads()).
"""

from __future__ import annotations

import ctypes
import os

import torch

RUNTIME_NAMES = ("libgomp", "libiomp", "libomp")  # GCC's, Intel's and LLVM's OpenMP runtimes


def default_threads() -> int:
    value = os.environ.get("TFB_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else torch.get_num_threads()


def torch_uses_openmp() -> bool:
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def openmp_entry() -> int | None:
    """The address of GOMP_parallel in an OpenMP runtime this process has loaded, torch's first."""
    try:
        with open("/proc/self/maps") as maps:
            paths = [line.split(maxsplit=5)[5].strip() for line in maps if len(line.split(maxsplit=5)) == 6]
    except OSError:
        return None
    candidates = sorted({p for p in paths if os.path.basename(p).startswith(RUNTIME_NAMES)},
                        key=lambda p: not p.startswith(os.path.dirname(torch.__file__)))
    for path in candidates:
        try:
            runtime = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_NOW)  # only if already loaded
            return ctypes.cast(runtime.GOMP_parallel, ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
    return None


def configure(lib: ctypes.CDLL) -> None:
    """Choose the threads as the environment asks (once, when the library is first loaded)."""
    if os.environ.get("TFB_THREADING", "").strip().lower() != "pool":
        use_openmp(lib, True)
    lib.tfb_set_threads(default_threads())
    spin = os.environ.get("TFB_SPIN_US", "").strip()
    if spin.isdigit():
        lib.tfb_set_spin_us(int(spin))


def use_openmp(lib: ctypes.CDLL, enabled: bool) -> bool:
    """Borrow torch's OpenMP team (True) or use the library's own pool; whether OpenMP is in use."""
    entry = openmp_entry() if enabled and torch_uses_openmp() else None
    lib.tfb_use_openmp(entry)
    return bool(lib.tfb_uses_openmp())
