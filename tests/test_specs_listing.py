"""`tfb specs` lists the specs on the search path with their switches; docs/support-matrix.md is the same
information for the packaged families and must be regenerated when a spec changes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tfb.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from support_matrix import OUTPUT, render  # noqa: E402


def tfb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tfb.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_support_matrix_is_current() -> None:
    assert OUTPUT.read_text() == render(), "docs/support-matrix.md is stale: run python tools/support_matrix.py"


def test_support_matrix_has_a_row_per_family() -> None:
    text = OUTPUT.read_text()
    switches = text.split("## llama.cpp architectures")[0]  # the architecture map's rows start alike
    rows = [line for line in switches.splitlines() if line.startswith("| `")]
    for path in sorted((ROOT / "specs").glob("*.yaml")):
        spec = load_spec(path)
        assert any(row.startswith(f"| `{spec.name}` |") for row in rows) != spec.abstract, spec.name
    assert "| `phi2` | `phi2` | `gguf-decoder` | layernorm+bias | parallel |" in text


def test_specs_lists_every_spec_without_torch(tmp_path: Path) -> None:
    (tmp_path / "qwen3.yaml").write_text("extends: qwen3\nmatch: [qwen3]\ndescription: my qwen3\n")
    code = (f"import sys, tfb.cli; rc = tfb.cli.main(['specs', '--spec-dir', {str(tmp_path)!r}]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "gguf-decoder: abstract base  (specs/gguf-decoder.yaml)" in lines
    assert any(line.startswith("phi3: serves phi3, extends gguf-decoder  (specs/phi3.yaml)") for line in lines)
    phi3 = ("  norm rmsnorm · block sequential · mixer attention · qkv auto · rope half · ffn gated silu fused · "
            "output norm tied?")
    assert phi3 in lines
    user = next(line for line in lines if line.startswith("qwen3: "))
    assert user == f"qwen3: serves qwen3, extends qwen3  ({tmp_path / 'qwen3.yaml'}); overrides specs/qwen3.yaml"


def test_a_broken_spec_is_reported_and_the_rest_listed(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("extends: llama\nnorm: {kind: rmsnrom}\n")
    result = tfb("specs", "--spec-dir", str(tmp_path))
    assert result.returncode == 1
    assert "bad.yaml:2:8: norm.kind: `rmsnrom` is not allowed" in result.stderr
    assert "llama: serves llama" in result.stdout
