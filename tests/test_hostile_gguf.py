"""Hostile and broken GGUF files: each gives exactly one tfb error naming the file and the place, quickly and
in little memory, through GGUFFile, tfb.load and `tfb inspect`.

The corpus comes from tools/make_hostile_gguf.py: a valid tiny model and one corruption of it per case.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from tfb import errors
from tfb.build import load  # imported here, so that no timed call pays for the import
from tfb.cli import main as cli_main
from tfb.errors import GGUFError, TfbError
from tfb.gguf.reader import GGUFFile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from gguf_layout import Layout, array, scalar  # noqa: E402
from hostile_cases import CASES, Case  # noqa: E402
from make_hostile_gguf import write_corpus  # noqa: E402

OPEN_LIMIT_S = 0.1  # parsing a 9 KB file, broken or not
LOAD_LIMIT_S = 1.0  # tfb.load, spec lookup included
BY_NAME = {c.name: c for c in CASES}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hostile")
    write_corpus(out)
    return out


def timed(fn: Callable[[], Any], limit: float) -> Any:
    start = time.perf_counter()
    try:
        return fn()
    finally:
        elapsed = time.perf_counter() - start
        assert elapsed < limit, f"took {elapsed:.2f} s, limit {limit} s"


def one_error(fn: Callable[[], Any], limit: float) -> TfbError | None:
    """The tfb error `fn` raises (anything else fails the test), checked to be a single line; None if
    it succeeds. Warnings count as failures too: a rejected file gets one error and nothing else."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            timed(fn, limit)
        except TfbError as e:
            assert "\n" not in str(e), f"multi-line message: {e}"
            return e
    return None


def assert_names_place(message: str, path: Path, case: Case) -> None:
    assert str(path) in message, f"the message does not name the file: {message}"
    assert case.expect in message, f"expected {case.expect!r} in: {message}"
    assert case.place in message, f"the message does not point at {case.place!r}: {message}"


# ------------------------------------------------------------------------------------------------ corpus


def test_corpus_is_deterministic(corpus: Path, tmp_path: Path) -> None:
    write_corpus(tmp_path)
    names = sorted(p.name for p in corpus.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir())
    for name in names:
        assert (corpus / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_manifest_lists_every_case(corpus: Path) -> None:
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert [c["file"] for c in manifest["cases"]] == [f"{c.name}.gguf" for c in CASES]
    assert all(hasattr(errors, c["error"]) for c in manifest["cases"])


def test_base_file_is_valid(corpus: Path) -> None:
    import tfb

    assert tfb.load is load  # the public entry point is the one tested here
    model = timed(lambda: load(corpus / "base.gguf"), LOAD_LIMIT_S)
    logits = model(torch.tensor([[1, 3, 4]]))
    assert logits.shape == (1, 3, 8) and torch.isfinite(logits).all()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_reader(corpus: Path, case: Case) -> None:
    path = corpus / f"{case.name}.gguf"

    def open_and_close() -> None:
        GGUFFile(path).close()

    error = one_error(open_and_close, OPEN_LIMIT_S)
    if case.stage == "reader":
        assert type(error) is GGUFError, f"{case.name}: expected GGUFError, got {error!r}"
        assert_names_place(str(error), path, case)
    else:
        assert error is None, f"{case.name}: the reader should accept it and tfb.load reject it: {error}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_load(corpus: Path, case: Case) -> None:
    path = corpus / f"{case.name}.gguf"
    error = one_error(lambda: load(path), LOAD_LIMIT_S)
    assert error is not None, f"{case.name}: tfb.load accepted a broken file"
    assert type(error).__name__ == case.error, f"{case.name}: expected {case.error}, got {error!r}"
    assert_names_place(str(error), path, case)


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(list(args))
    return rc, out.getvalue(), err.getvalue()


def expected_inspect_status(case: Case) -> int:
    return 1  # inspect checks the tensors as a load does (missing, shape, type) and says why a file cannot run


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_inspect_in_process(corpus: Path, case: Case) -> None:
    path = corpus / f"{case.name}.gguf"
    rc, out, err = timed(lambda: run_cli("inspect", str(path)), LOAD_LIMIT_S)
    assert rc == expected_inspect_status(case), err
    if rc:
        assert err.startswith("tfb: ") and err.count("\n") == 1, err
        assert_names_place(err, path, case)
    assert "\x1b" not in out + err


def test_inspect_command_line(corpus: Path) -> None:
    """Every case through `python -m tfb.cli inspect`: the exit status, one line on stderr, no traceback."""

    def inspect(case: Case) -> tuple[Case, subprocess.CompletedProcess[str]]:
        path = corpus / f"{case.name}.gguf"
        return case, subprocess.run([sys.executable, "-m", "tfb.cli", "inspect", str(path)], capture_output=True,
                                    text=True, cwd=ROOT, timeout=60)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = list(pool.map(inspect, CASES))
    failures = []
    for case, result in results:
        ok = result.returncode == expected_inspect_status(case) and "Traceback" not in result.stderr
        if result.returncode:
            ok = ok and result.stderr.startswith("tfb: ") and result.stderr.count("\n") == 1 \
                and case.expect in result.stderr
        if not ok:
            failures.append(f"{case.name}: rc={result.returncode} {result.stderr.strip()[:300]}")
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------------------- truncation


@pytest.fixture
def cut_file(corpus: Path, tmp_path: Path) -> Iterator[tuple[Path, int, int]]:
    """A copy of the base file to truncate in place, its size, and where its header ends."""
    path = tmp_path / "cut.gguf"
    raw = (corpus / "base.gguf").read_bytes()
    path.write_bytes(raw)
    with GGUFFile(path) as f:
        end = max(t.offset + t.nbytes for t in f.tensors.values())
        header_end = f.data_offset
    assert end == len(raw), "the base file must end with tensor data, so that every cut loses something"
    yield path, len(raw), header_end


def test_truncated_at_every_byte(cut_file: tuple[Path, int, int]) -> None:
    path, size, header_end = cut_file
    start = time.perf_counter()
    for n in range(size - 1, -1, -1):  # cutting in place: no file is rewritten
        os.truncate(path, n)
        for attempt in (lambda: GGUFFile(path).close(), lambda: load(path)):
            error = one_error(attempt, OPEN_LIMIT_S)
            assert isinstance(error, GGUFError), f"cut at {n}: {error!r}"
            assert str(path) in str(error)
        if n < header_end or n % 61 == 0:  # the command line on every header cut and a stride of the data
            rc, _, err = run_cli("inspect", str(path))
            assert rc == 1 and err.startswith("tfb: ") and err.count("\n") == 1, f"cut at {n}: {err}"
    assert time.perf_counter() - start < 60


# ------------------------------------------------------------------------------------------ resources


@pytest.mark.parametrize("name", ["numeric_array_count_1e9", "string_array_count_huge", "tensor_count_huge",
                                  "kv_count_huge", "string_length_huge", "size_past_end"])
def test_claimed_sizes_allocate_nothing(corpus: Path, name: str) -> None:
    """A file claiming 10**9 elements (or 2**64 tensors) is refused before anything of that size exists."""
    path = corpus / f"{name}.gguf"
    tracemalloc.start()
    try:
        with pytest.raises(GGUFError):
            GGUFFile(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024, f"peak {peak} bytes while reading a 9 KB file"


def test_rejected_load_releases_the_file(corpus: Path) -> None:
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc")
    before = len(list(fds.iterdir()))
    for case in CASES:
        with contextlib.suppress(TfbError):
            load(corpus / f"{case.name}.gguf")
    assert len(list(fds.iterdir())) <= before


def test_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFFile(tmp_path / "absent.gguf")
    with pytest.raises(GGUFError, match=r"not a regular file|cannot open"):
        GGUFFile(tmp_path)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "pipe.gguf"
        os.mkfifo(fifo)  # opening a FIFO for reading would wait for a writer forever
        with pytest.raises(GGUFError, match="not a regular file"):
            timed(lambda: GGUFFile(fifo), OPEN_LIMIT_S)
    if Path("/dev/zero").exists():
        with pytest.raises(GGUFError, match="not a regular file"):
            timed(lambda: GGUFFile("/dev/zero"), OPEN_LIMIT_S)


# ---------------------------------------------------------------------------- odd but harmless metadata


def write_variant(corpus: Path, tmp_path: Path, change: Callable[[Layout], object]) -> Path:
    layout = Layout.read(corpus / "base.gguf")
    change(layout)
    path = tmp_path / "variant.gguf"
    path.write_bytes(layout.to_bytes())
    return path


def test_inspect_shows_wrongly_typed_tokenizer_metadata(corpus: Path, tmp_path: Path) -> None:
    def change(f: Layout) -> None:
        f.set("tokenizer.ggml.tokens", scalar("uint32", 5))
        f.set("tokenizer.ggml.merges", array("uint8", [1, 2]))
        f.set("tokenizer.chat_template", scalar("int32", -1))
        f.set("tokenizer.ggml.bos_token_id", scalar("string", "1"))
        f.set("general.name", scalar("string", "evil\x1b]0;title\x07\nname\u202e"))
        f.set("llama.vocab_size", scalar("uint32", 8))

    path = write_variant(corpus, tmp_path, change)
    rc, out, err = run_cli("inspect", str(path))
    assert rc == 0, err
    assert "tokens: ? (a uint32, not an array)" in out and "chat template: ? (a int32, not text)" in out
    assert "\x1b" not in out and "\u202e" not in out and "evil\\x1b]0;title\\x07\\nname" in out


def test_invalid_utf8_strings_are_kept_and_printable(corpus: Path, tmp_path: Path) -> None:
    path = write_variant(corpus, tmp_path, lambda f: f.set("general.name", scalar("string", b"caf\xe9 \xff")))
    with GGUFFile(path) as f:
        name = f.metadata["general.name"].value
    assert name.encode("utf-8", "surrogateescape") == b"caf\xe9 \xff"
    rc, out, _ = run_cli("inspect", str(path))
    assert rc == 0 and "caf\\udce9 \\udcff" in out


@pytest.mark.parametrize("name", [b"blk." + b"9" * 5000 + b".x", b"blk.1.x\nforged line", b"blk.0.\x1b[31mred"])
def test_inspect_survives_odd_tensor_names(corpus: Path, tmp_path: Path, name: bytes) -> None:
    """A 5000-digit layer index once made `int()` raise in inspect; names print on one line, escaped. The
    renamed tensor is missing, so the file cannot run: the report, then one line on stderr."""
    path = write_variant(corpus, tmp_path, lambda f: setattr(f.tensor("output_norm.weight"), "name", name))
    rc, out, err = run_cli("inspect", str(path))
    assert rc == 1 and err.count("\n") == 1 and "needs tensors the file lacks: output_norm.weight" in err, err
    assert "\x1b" not in out + err and "\nforged line" not in out
