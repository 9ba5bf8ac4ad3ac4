"""The command line: exit codes, one-line errors without tracebacks, and a torch-free `tfb validate`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tfb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tfb.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_validate_ok_lines_and_exit_zero() -> None:
    result = tfb("validate", "specs/llama.yaml", "specs/qwen3.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "OK specs/llama.yaml (llama: serves llama, extends gguf-decoder)",
        "OK specs/qwen3.yaml (qwen3: serves qwen3, extends qwen2)",
    ]


def test_validate_reports_errors_and_exit_one(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: llama\nnorm: {kind: rmsnrom}\n")
    result = tfb("validate", "specs/llama.yaml", str(bad))
    assert result.returncode == 1
    assert "OK specs/llama.yaml" in result.stdout
    assert f"{bad}:2:8: norm.kind: `rmsnrom` is not allowed" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_does_not_import_torch() -> None:
    code = ("import sys, tfb.cli; rc = tfb.cli.main(['validate', 'specs/qwen3.yaml']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("content", [b"", b"GGUF", b"NOPE" + bytes(100), b"GGUF\x03\x00\x00\x00" + b"\xff" * 16])
def test_inspect_bad_file_one_line_no_traceback(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    result = tfb("inspect", str(path))
    assert result.returncode == 1
    assert result.stderr.startswith("tfb: ") and len(result.stderr.strip().splitlines()) == 1
    assert str(path) in result.stderr


def test_inspect_converted_file(tiny_model) -> None:
    _, path = tiny_model("qwen3", "f32")
    result = tfb("inspect", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "architecture: qwen3" in out and "spec: qwen3 (extends qwen2)" in out
    assert "head_dim                   32" in out  # qwen3's key_length differs from hidden/heads here
    assert "blk.0: (" in out and "attn_q_norm.weight" in out and "blk.1: same tensors" in out
    assert "model: llama" in out  # the tokenizer summary
    # 2 layers x 11 tensors + embedding, output norm and output
    assert "weights: the 25 tensors the spec reads are present, of the planned shapes and supported types" in out
    assert "not read by the spec" not in out


def test_inspect_names_unread_tensors(tiny_model) -> None:
    _, path = tiny_model("qwen3", "f32")
    result = tfb("inspect", "--spec", "qwen2", str(path))
    assert result.returncode == 0, result.stderr
    assert ("  not read by the spec: blk.0.attn_k_norm.weight, blk.0.attn_q_norm.weight, blk.1.attn_k_norm.weight, "
            "blk.1.attn_q_norm.weight (a load warns; `tfb check` says which switch would read them)"
            in result.stdout.splitlines())
