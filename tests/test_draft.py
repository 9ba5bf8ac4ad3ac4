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
from compare import compare

import tfb
import tfb.authoring.draft_yaml as draft_yaml
import tfb.spec.registry as registry
from tfb.authoring.check import check
from tfb.authoring.draft_layout import Part, layout
from tfb.authoring.draft_yaml import draft_spec
from tfb.authoring.inventory import Inventory
from tfb.errors import TfbError
from tfb.gguf.reader import GGUFFile, MetaValue
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
    # recurrent and hybrid files: which layers are which, and the recurrent kinds, come from the tensors
    "mamba2": {},
    # llama.cpp's graph norms the output by token_embd_norm (src/models/lfm2.cpp)
    "lfm2": {"mixer.rope.pairing": "half", "tensors.global.output_norm": "token_embd_norm.weight"},
    "lfm2moe": {"mixer.rope.pairing": "half", "tensors.global.output_norm": "token_embd_norm.weight",
                "hparams.expert_weights_norm": True},
    # llama.cpp reads rope.scaling.finetuned as "rope on" for this family (src/models/granite-hybrid.cpp)
    "granitehybrid": {"mixer.rope.pairing": "adjacent", "hparams.expert_weights_norm": True,
                      "hparams.use_rope": {"key": "{arch}.rope.scaling.finetuned", "default": True},
                      "mixer.rope.layers": {"nonzero": "use_rope"}},
    "qwen3next": {"mixer.rope.pairing": "half", "hparams.expert_weights_norm": True},
    # the converter reorders these families' value heads (tiled); the shapes do not show it
    "qwen35": {"mixer.rope.pairing": "half", "mixer.value_heads": "tiled"},
    "qwen35moe": {"mixer.rope.pairing": "half", "hparams.expert_weights_norm": True, "mixer.value_heads": "tiled"},
    "falcon_h1": {"mixer.rope.pairing": "half"},
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


# ------------------------------------------------------------------------- sections chosen per layer

# what llama.cpp decides in code for these families (given as the CLI options would); the drafts are
# compared with transformers directly, as their own specs are not what the draft is tested against
MOE_KNOWN: dict[str, dict[str, Any]] = {
    "qwen2moe": {"mixer.rope.pairing": "half"},
    "glm4moe": {"mixer.rope.pairing": "half"},
    # llama.cpp divides this family's stored yarn_log_multiplier by 0.1 (src/models/deepseek2.cpp)
    "deepseek_v3": {"hparams.yarn_log_multiplier_stored": {"key": "{arch}.rope.scaling.yarn_log_multiplier"},
                    "hparams.yarn_log_multiplier": {"default": {"quotient": ["yarn_log_multiplier_stored", 0.1]}}},
}


def draft_against(tiny_model, tmp_path: Path, family: str) -> tuple[str, Path]:
    """The draft for a tiny family's file (only the base spec in sight), checked against the file, and its
    logits compared with transformers'."""
    reference, path = tiny_model(family, "f32")
    out = tmp_path / "draft.yaml"
    with only_the_base(tmp_path):
        text, _ = draft_spec(path, given=MOE_KNOWN[family], out=out)
        out.write_text(text)
        report = check(path, out)
    assert report.ok, "\n".join(report.lines()) + "\n" + text
    compare(tfb.load(path, spec=out), reference, [(1, 1), (2, 40)])
    return text, path


def test_draft_of_a_latent_attention_file_with_leading_dense_layers(tiny_model, tmp_path: Path) -> None:
    text, _ = draft_against(tiny_model, tmp_path, "deepseek_v3")
    body = text[text.index("mixer:"):text.index("# Keys in the file")].strip().splitlines()
    assert body == [
        "mixer:",
        "  kind: latent_attention  # blk.{i}.attn_q_a.weight, blk.{i}.attn_q_a_norm.weight in every layer",
        "  query: low_rank  # blk.{i}.attn_q_a.weight in every layer",
        "ffn:",
        "  - kind: dense  # blk.{i}.ffn_gate.weight, blk.{i}.ffn_up.weight in layer 0",
        "    layers: {below: leading_dense_block_count}  # deepseek2.leading_dense_block_count = 1: layer 0",
        "  - kind: routed  # blk.{i}.ffn_gate_inp.weight, blk.{i}.exp_probs_b.bias in layers 1, 2",
        "    gating: sigmoid  # deepseek2.expert_gating_func = 2",
        "    selection_bias: required  # blk.{i}.exp_probs_b.bias in every layer with experts",
        "    shared:",
        "      gate: none  # blk.{i}.ffn_up_shexp.weight in every layer with experts; no "
        "blk.{i}.ffn_gate_inp_shexp.weight in the file"]
    # no width key for the shared experts: their count times an expert's width, as the tensors show
    assert "  expert_shared_intermediate_size: {default: {product: [expert_intermediate_size, " \
           "expert_shared_count]}}  # no deepseek2.expert_shared_feed_forward_length; ffn_up_shexp has 32 rows = " \
           "deepseek2.expert_shared_count (1) x deepseek2.expert_feed_forward_length (32)" in text
    assert "  head_dim: {key: '{arch}.attention.key_length_mla'}" in text  # one head's size, not the cache's
    # grouped top-k: the base reads the group keys already; the draft adds no rule of its own for them
    assert "expert_group_count" not in text


def test_draft_of_a_gated_shared_expert(tiny_model, tmp_path: Path) -> None:
    text, _ = draft_against(tiny_model, tmp_path, "qwen2moe")
    assert "ffn:\n  kind: routed  # blk.{i}.ffn_gate_inp.weight, blk.{i}.ffn_gate_exps.weight in every layer\n" \
           "  shared:\n    gate: sigmoid  # blk.{i}.ffn_up_shexp.weight in every layer; " \
           "blk.{i}.ffn_gate_inp_shexp.weight in every layer\n" in text


def test_draft_of_a_file_with_a_next_token_prediction_block(tiny_model, tmp_path: Path) -> None:
    """GLM-4.5: the file's last block predicts further tokens (built by neither llama.cpp nor transformers'
    causal LM), and the norm before the feed-forward is stored as post_attention_norm."""
    text, _ = draft_against(tiny_model, tmp_path, "glm4moe")
    assert "  n_layers: {key: null, default: {difference: [block_count, nextn_predict_layers]}}  # " \
           "glm4moe.nextn_predict_layers = 1: the file's last blocks predict further tokens" in text
    assert "  unread: ['blk.{i}.*']  # the blocks past n_layers (glm4moe.nextn_predict_layers)" in text
    assert "    ffn_norm: blk.{i}.post_attention_norm.weight  # no ffn_norm, and a post_attention_norm without " \
           "post_ffw_norm" in text
    # the dense layer and the routed ones are told apart on the three built layers, not the fourth block
    assert "    layers: {below: leading_dense_block_count}  # glm4moe.leading_dense_block_count = 1: layer 0" in text
    assert "  - kind: routed  # blk.{i}.ffn_gate_inp.weight, blk.{i}.exp_probs_b.bias in layers 1, 2" in text


def inventory(n_layers: int, per_layer: dict[str, list[int]], metadata: dict[str, int | list[int]]) -> Inventory:
    """An inventory of a file with these per-layer tensors and integer keys (only names are read)."""
    tensors: dict[str, Any] = {f"blk.{i}.{name}.weight": None for name, layers in per_layer.items() for i in layers}
    meta = {f"x.{k}": MetaValue(v, "uint32") for k, v in metadata.items()}
    return Inventory("x.gguf", "x", meta, tensors, n_layers)


INTERLEAVED = {"ffn_gate_inp": [1, 3], "ffn_up_exps": [1, 3], "ffn_up": [0, 2], "ffn_down": [0, 2]}


def test_layout_interleaved_experts() -> None:
    """Experts on every second layer: the routed section first, on the layers its step rule selects."""
    parts = layout(inventory(4, INTERLEAVED, {"interleave_moe_layer_step": 2}), "ffn")
    assert [(p.kind, p.layers, sorted(p.members)) for p in parts] == [
        ("routed", {"every": "moe_layer_step"}, [1, 3]), ("dense", "all", [0, 2])]
    assert parts[0].why == "x.interleave_moe_layer_step = 2: layers 1, 3"


def test_layout_without_a_field_that_says_which_layers() -> None:
    """No key selects the layers (or its value selects others): the file's own layers, as a pattern."""
    for metadata in ({}, {"interleave_moe_layer_step": 3}, {"leading_dense_block_count": 2}):
        parts = layout(inventory(4, INTERLEAVED, metadata), "ffn")
        assert [(p.kind, p.layers) for p in parts] == [("dense", [True, False, True, False]), ("routed", "all")]
        assert "no config field says which layers" in parts[0].why


def test_layout_of_uniform_files() -> None:
    dense = inventory(2, {"ffn_up": [0, 1], "ffn_down": [0, 1], "attn_q": [0, 1], "attn_kv_a_mqa": [0, 1]}, {})
    assert layout(dense, "ffn") == [Part("dense", "all", frozenset({0, 1}),
                                         "blk.{i}.ffn_up.weight, blk.{i}.ffn_down.weight in every layer")]
    assert [p.kind for p in layout(dense, "mixer")] == ["latent_attention"]
    # layers with dense and expert tensors alike run both side by side (the kind whose slots cover them all)
    both = inventory(2, {"ffn_up": [0, 1], "ffn_gate_inp": [0, 1], "ffn_up_exps": [0, 1]}, {})
    assert [p.kind for p in layout(both, "ffn")] == ["dense_and_routed"]


HYBRID = {"attn_q": [1, 3], "attn_k": [1, 3], "attn_v": [1, 3], "attn_output": [1, 3],
          "ssm_in": [0, 2], "ssm_conv1d": [0, 2], "ssm_out": [0, 2], "ssm_norm": [0, 2]}


def test_layout_of_a_hybrid_by_a_per_layer_array() -> None:
    """head_count_kv 0 in the recurrent layers: the rule reads the per-layer array."""
    inv = inventory(4, HYBRID, {"attention.head_count_kv": [0, 2, 0, 2]})
    parts = layout(inv, "mixer")
    assert [(p.kind, p.layers, sorted(p.members)) for p in parts] == [
        ("ssd", {"zero": "n_kv_heads"}, [0, 2]), ("attention", "all", [1, 3])]
    assert parts[0].why == "x.attention.head_count_kv = [0, 2, 0, 2]: layers 0, 2"
    assert parts[0].evidence == "blk.{i}.ssm_in.weight, blk.{i}.ssm_conv1d.weight in layers 0, 2"
    # no feed-forward tensors anywhere: the kind without any
    assert [p.kind for p in layout(inv, "ffn")] == ["none"]


def test_layout_of_two_mixers_in_one_layer() -> None:
    """Attention and state space tensors in the same layers: one section running both side by side; the
    delta-net's own tensors make a delta-net layer, not a parallel one, though it shares some ssm_* names."""
    both = {name: [0, 1] for name in HYBRID}
    assert [(p.kind, p.branches) for p in layout(inventory(2, both, {}), "mixer")] == [
        ("parallel", ("attention", "ssd"))]
    delta = {name: [0, 1] for name in ("attn_qkv", "attn_gate", "ssm_ba", "ssm_conv1d", "ssm_out", "ssm_norm")}
    assert [(p.kind, p.branches) for p in layout(inventory(2, delta, {}), "mixer")] == [("gated_delta_net", ())]


def test_draft_of_attention_beside_a_state_space_layer(tiny_model, tmp_path: Path) -> None:
    _, path = tiny_model("falcon_h1", "f32")
    with only_the_base(tmp_path):
        text, _ = draft_spec(path, given=KNOWN["falcon_h1"])
    assert "mixer:\n  kind: parallel  # blk.{i}.attn_q.weight, blk.{i}.attn_k.weight in every layer; " \
           "blk.{i}.ssm_in.weight, blk.{i}.ssm_conv1d.weight in every layer\n  branches:" in text
    assert "    - kind: attention\n      rope:\n        pairing: half  # given on the command line\n" \
           "    - kind: ssd\n" in text
    # the converter writes this norm without its .weight suffix
    assert "    ffn_norm: {name: 'blk.{i}.ffn_norm'}  # the file has blk.{i}.ffn_norm" in text
