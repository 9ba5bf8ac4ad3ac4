"""`tfb draft`: a spec proposed from a converted file alone (the family's own spec hidden) validates,
passes `tfb check`, and once the choices the file cannot settle are given, runs the file with exactly
the logits of the real spec."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import tfb
import tfb.authoring.draft_yaml as draft_yaml
import tfb.spec.registry as registry
from tfb.authoring.check import check
from tfb.authoring.draft_yaml import draft_spec
from tfb.errors import TfbError
from tfb.gguf.reader import GGUFFile
from tfb.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
BASE = "gguf-decoder"

# family -> what llama.cpp decides in code and the file cannot say (given as the CLI options would)
KNOWN: dict[str, dict[str, Any]] = {
    "llama": {"mixer.rope.pairing": "adjacent"},
    "llama_tied": {"mixer.rope.pairing": "adjacent"},
    "llama3": {"mixer.rope.pairing": "adjacent"},
    "qwen2": {"mixer.rope.pairing": "half"},
    "qwen3": {"mixer.rope.pairing": "half"},
    "starcoder2": {"mixer.rope.pairing": "half", "ffn.activation": "gelu_tanh"},
    "phi2": {"mixer.rope.pairing": "half", "ffn.activation": "gelu_tanh"},
    "phi3": {"mixer.rope.pairing": "half"},
    "phi3_longrope": {"mixer.rope.pairing": "half"},
    "qwen3moe": {"mixer.rope.pairing": "half", "hparams.expert_weights_norm": True},
    "mixtral": {"mixer.rope.pairing": "adjacent", "hparams.expert_weights_norm": True},
    "stablelm_qk_norm": {"mixer.rope.pairing": "half", "mixer.qk_norm.kind": "layernorm"},
    "mistral3": {"mixer.rope.pairing": "adjacent",
                 "hparams.attn_temperature_length": {"default": {"field": "rope_original_context"}}},
}


def tfb_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tfb.cli", *args], capture_output=True, text=True, cwd=cwd)


@contextlib.contextmanager
def only_the_base(tmp_path: Path) -> Iterator[Path]:
    """The packaged specs reduced to the abstract base: draft cannot peek at a family's spec."""
    hidden = tmp_path / "packaged"
    hidden.mkdir(exist_ok=True)
    shutil.copy(registry.packaged_dir() / f"{BASE}.yaml", hidden)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(registry, "packaged_dir", lambda: hidden)
        mp.setattr(draft_yaml, "packaged_dir", lambda: hidden)
        mp.delenv(registry.ENV_VAR, raising=False)
        yield hidden


def logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return model(ids)


@pytest.mark.parametrize("family", list(KNOWN))
def test_draft_runs_like_the_real_spec(tiny_model, tmp_path: Path, family: str) -> None:
    _, path = tiny_model(family, "f32")
    out = tmp_path / "draft.yaml"
    with only_the_base(tmp_path):
        with pytest.raises(TfbError, match="no spec serves architecture"):
            tfb.load(path)  # the family's spec is out of sight
        text, _ = draft_spec(path, given=KNOWN[family], out=out)
        out.write_text(text)
        spec = load_spec(out)
        report = check(path, out)
    assert report.ok, "\n".join(report.lines()) + "\n" + text
    with GGUFFile(path) as gguf:
        assert spec.extends == BASE and spec.match == [gguf.architecture]
    torch.testing.assert_close(logits(tfb.load(path, spec=out)), logits(tfb.load(path)), rtol=1e-6, atol=1e-6)


def test_assumptions_are_listed_with_their_options(tiny_model, tmp_path: Path) -> None:
    _, path = tiny_model("starcoder2", "f32")
    with only_the_base(tmp_path):
        text, draft = draft_spec(path)
    assumed = {d.path: d.value for d in draft.decisions if d.assumed}
    assert assumed == {"mixer.rope.pairing": "adjacent", "ffn.activation": "silu"}  # the base's values
    assert "#   mixer.rope.pairing = adjacent   (--rope-pairing)" in text
    assert "#   ffn.activation = silu   (--activation)" in text
    # evidence on the lines it decided
    assert "  norm_eps: {key: '{arch}.attention.layer_norm_epsilon'}  # the file has starcoder2.attention." \
           "layer_norm_epsilon" in text
    assert "  kind: layernorm  # the file has starcoder2.attention.layer_norm_epsilon" in text
    assert "  gated: false  # no blk.{i}.ffn_gate.weight in the file" in text


def test_cli_options_settle_the_assumptions(tiny_model, tmp_path: Path) -> None:
    _, path = tiny_model("phi2", "f32")
    out = tmp_path / "phi2-draft.yaml"
    result = tfb_cli("draft", str(path), "--rope-pairing", "half", "--activation", "gelu_tanh", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().endswith("it passes tfb check")
    text = out.read_text()
    assert "Not settled by the file" not in text  # nothing left to assume
    assert "  residual: parallel  # an attn_norm but no ffn_norm" in text
    assert "  pairing: half  # given on the command line" in text
    assert "output:\n  bias: required  # output.bias in the file" in text
    torch.testing.assert_close(logits(tfb.load(path, spec=out)), logits(tfb.load(path)), rtol=1e-6, atol=1e-6)


def test_draft_to_stdout_and_set_option(tiny_model) -> None:
    _, path = tiny_model("qwen3", "f32")
    result = tfb_cli("draft", str(path), "--set", "mixer.rope.pairing=half", "--set", "ffn.activation=silu")
    assert result.returncode == 0, result.stderr
    assert "match: [qwen3]" in result.stdout and "extends: gguf-decoder" in result.stdout
    assert "    over: head  # attn_q_norm.weight has 32 values: head_dim" in result.stdout
    assert not list(ROOT.glob(".tfb-draft-*"))  # the scratch copy for the check is gone
    bad = tfb_cli("draft", str(path), "--set", "no-equals-sign")
    assert bad.returncode == 1 and "give PATH=VALUE" in bad.stderr


def test_extends_writes_only_the_differences(tiny_model, tmp_path: Path) -> None:
    _, path = tiny_model("qwen3", "f32")
    out = tmp_path / "over-qwen2.yaml"
    result = tfb_cli("draft", str(path), "--extends", "qwen2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    body = [line for line in out.read_text().splitlines() if line and not line.startswith("#")]
    assert body[:3] == ["extends: qwen2", "description: qwen3 (Hf, drafted from model-f32.gguf)", "match: [qwen3]"]
    assert body[3:] == ["mixer:", "  qk_norm:",
                        "    kind: rmsnorm  # assumed (--set mixer.qk_norm.kind=...), see above",
                        "    over: head  # attn_q_norm.weight has 32 values: head_dim"]
    torch.testing.assert_close(logits(tfb.load(path, spec=out)), logits(tfb.load(path)), rtol=1e-6, atol=1e-6)


def test_a_draft_that_does_not_fit_says_so(tiny_model, tmp_path: Path) -> None:
    _, path = tiny_model("qwen3", "f32")
    out = tmp_path / "wrong.yaml"
    result = tfb_cli("draft", str(path), "--set", "mixer.bias.o=required", "--out", str(out))
    assert result.returncode == 1
    assert "error: tensor blk.{i}.attn_output.bias (all 2 layers): missing" in result.stderr
    assert "fails tfb check (1 problem above)" in result.stderr
