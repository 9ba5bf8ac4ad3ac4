"""A new family added as YAML only, outside the package: a spec in a user directory (TFB_SPEC_PATH or
--spec-dir / spec_dirs=) serves a file of a new architecture through tfb.load and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType

import tfb
from tfb.errors import TfbError
from tfb.nn.mlp import MLP
from tfb.spec.registry import ENV_VAR

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from make_tiny_gguf import DEFAULT_VOCAB, make  # noqa: E402

# qwen3's attention (Q/K norms, half-split rope) with LayerNorms and a plain GELU (erf) MLP with biases
MYFAM = """\
extends: qwen3
description: my family, a spec outside the package
match: [myfam]

hparams:
  norm_eps: {key: "{arch}.attention.layer_norm_epsilon"}
norm: {kind: layernorm, bias: required}
ffn: {gated: false, activation: gelu_erf, bias: required}
"""
SIZES = {"hidden_size": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16, "intermediate_size": 96,
         "context_length": 256}


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("user-specs")
    (directory / "myfam.yaml").write_text(MYFAM)
    return directory


@pytest.fixture(scope="module")
def myfam_file(user_dir: Path) -> Path:
    out = user_dir.parent / "myfam.gguf"
    make("myfam", out, SIZES, GGMLQuantizationType.F32, DEFAULT_VOCAB, spec_dirs=[user_dir])
    return out


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != ENV_VAR} | (env or {})
    return subprocess.run([sys.executable, "-m", "tfb.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=full_env)


def logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(ids)


def test_the_new_architecture_needs_the_user_spec(myfam_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(TfbError, match="no spec serves architecture `myfam`"):
        tfb.load(myfam_file)


def test_load_with_spec_dirs_and_with_the_environment(myfam_file: Path, user_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    model = tfb.load(myfam_file, spec_dirs=(user_dir,))
    assert model.spec_name == "myfam"
    block = model.blocks[0]
    assert block.attn_norm.kind == "layernorm" and block.attn_norm.bias is not None  # the user's switches
    assert isinstance(block.ffn, MLP) and not block.ffn.gated and block.ffn.activation.kind == "gelu_erf"
    assert block.mixer.q_norm is not None  # inherited from the packaged spec it extends
    first = logits(model)
    assert first.shape == (2, 12, model.config.vocab_size) and torch.isfinite(first).all()

    monkeypatch.setenv(ENV_VAR, str(user_dir))
    torch.testing.assert_close(logits(tfb.load(myfam_file)), first, rtol=0, atol=0)


def test_make_tiny_gguf_honours_the_environment(user_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "env.gguf"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "make_tiny_gguf.py"), "--spec", "myfam",
                             "--out", str(out)], capture_output=True, text=True,
                            env=os.environ | {ENV_VAR: str(user_dir)})
    assert result.returncode == 0, result.stderr
    with_dir = tmp_path / "dir.gguf"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "make_tiny_gguf.py"), "--spec", "myfam",
                             "--spec-dir", str(user_dir), "--out", str(with_dir)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == with_dir.read_bytes()


def test_cli_inspect_check_validate_specs(myfam_file: Path, user_dir: Path) -> None:
    inspected = run_cli("inspect", str(myfam_file), "--spec-dir", str(user_dir))
    assert inspected.returncode == 0, inspected.stderr
    assert "architecture: myfam" in inspected.stdout and "spec: myfam (extends qwen3)" in inspected.stdout

    checked = run_cli("check", str(myfam_file), "--spec-dir", str(user_dir))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.splitlines()[-1].startswith(f"OK: spec myfam ({user_dir / 'myfam.yaml'}) on ")

    by_env = run_cli("check", "myfam", str(myfam_file), env={ENV_VAR: str(user_dir)})
    assert by_env.returncode == 0, by_env.stdout + by_env.stderr

    unknown = run_cli("check", str(myfam_file))
    assert unknown.returncode == 1 and "no spec serves architecture `myfam`" in unknown.stderr

    validated = run_cli("validate", "myfam", "--spec-dir", str(user_dir))
    assert validated.stdout.strip() == "OK myfam (myfam: serves myfam, extends qwen3)"

    listed = run_cli("specs", env={ENV_VAR: str(user_dir)})
    assert f"myfam: serves myfam, extends qwen3  ({user_dir / 'myfam.yaml'})" in listed.stdout.splitlines()


def test_draft_for_the_new_architecture_matches_the_user_spec(myfam_file: Path, user_dir: Path,
                                                              tmp_path: Path) -> None:
    """The file of a family no packaged spec serves: its draft, given the two choices the file cannot
    settle, computes what the user's spec computes."""
    out = tmp_path / "myfam-draft.yaml"
    result = run_cli("draft", str(myfam_file), "--rope-pairing", "half", "--activation", "gelu_erf", "--out", str(out))
    assert result.returncode == 0, result.stderr
    reference = tfb.load(myfam_file, spec_dirs=(user_dir,))
    torch.testing.assert_close(logits(tfb.load(myfam_file, spec=out)), logits(reference), rtol=1e-6, atol=1e-6)
