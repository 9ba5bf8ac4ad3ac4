"""The spec language: packaged specs validate; bad specs fail with file:line:column, field, allowed
values and a near miss."""

from __future__ import annotations

from pathlib import Path

import pytest

from tfb.errors import SpecError
from tfb.spec import load_spec
from tfb.spec.registry import all_spec_files, packaged_dir

PACKAGED = sorted(all_spec_files([packaged_dir()]))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def error_of(path: Path, **kwargs: object) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_specs_validate(name: str) -> None:
    spec = load_spec(name)
    assert spec.name == name


def test_extends_inherits_and_overrides() -> None:
    qwen2, qwen3 = load_spec("qwen2"), load_spec("qwen3")
    assert qwen3.extends == "qwen2"
    assert qwen3.mixer[0].rope.pairing == qwen2.mixer[0].rope.pairing == "half"
    assert qwen2.mixer[0].qk_norm is None and qwen3.mixer[0].qk_norm is not None
    assert qwen3.match == ["qwen3"]  # match is not inherited
    assert qwen3.hparams.head_dim == qwen2.hparams.head_dim  # type: ignore[attr-defined]


def test_unknown_key_names_line_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, "x", "extends: llama\nmatch: [x]\nmixr:\n  bias: none\n")
    msg = error_of(path)
    assert f"{path}:3:1: mixr: unknown key `mixr` (did you mean `mixer`?)" in msg
    assert "allowed:" in msg and "ffn" in msg


def test_bad_enum_value_lists_allowed_values(tmp_path: Path) -> None:
    path = write(tmp_path, "x", "extends: llama\nmatch: [x]\nnorm: {kind: rmsnrom}\n")
    msg = error_of(path)
    assert f"{path}:3:8: norm.kind: `rmsnrom` is not allowed (did you mean `rmsnorm`?)" in msg
    assert "allowed: rmsnorm, layernorm" in msg


def test_nested_unknown_field_and_tensor_slot(tmp_path: Path) -> None:
    text = ("extends: llama\nmatch: [x]\nhparams:\n  hiden_size: {key: \"{arch}.x\"}\n"
            "tensors:\n  layer:\n    attn_qq: blk.{i}.q.weight\n")
    msg = error_of(write(tmp_path, "x", text))
    assert ":4:3: hparams.hiden_size: unknown key `hiden_size` (did you mean `hidden_size`?)" in msg
    assert ":7:5: tensors.layer.attn_qq: unknown key `attn_qq` (did you mean `attn_q`?)" in msg


def test_errors_point_into_the_file_that_set_the_value(tmp_path: Path) -> None:
    write(tmp_path, "base", "extends: llama\nabstract: true\nffn: {activation: gleu}\n")
    child = write(tmp_path, "child", "extends: base.yaml\nmatch: [x]\n")
    msg = error_of(child)
    assert f"{tmp_path / 'base.yaml'}:3:7: ffn.activation: `gleu` is not allowed" in msg


def test_extends_cycle_and_unknown_parent(tmp_path: Path) -> None:
    write(tmp_path, "a", "extends: b.yaml\n")
    write(tmp_path, "b", "extends: a.yaml\n")
    assert "cycle" in error_of(tmp_path / "a.yaml")
    msg = error_of(write(tmp_path, "c", "extends: lama\n"))
    assert "no spec named `lama` (did you mean `llama`?)" in msg and ":1:1: extends:" in msg


def test_anchors_and_deep_nesting_are_rejected_fast(tmp_path: Path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(20))
    assert "anchors and aliases are not allowed" in error_of(write(tmp_path, "bomb", bomb))
    deep = "x: " + "[" * 5000 + "]" * 5000 + "\n"
    assert "nesting deeper than" in error_of(write(tmp_path, "deep", deep))


def test_duplicate_keys_and_non_mapping(tmp_path: Path) -> None:
    assert "appears twice" in error_of(write(tmp_path, "d", "extends: llama\nextends: qwen2\n"))
    assert "a spec is a mapping" in error_of(write(tmp_path, "l", "- a\n- b\n"))


def test_derived_rules_are_checked(tmp_path: Path) -> None:
    text = ("extends: llama\nmatch: [x]\nhparams:\n"
            "  head_dim: {default: {quotient: [hidden_size, n_headz]}}\n"
            "  n_heads: {default: {field: n_kv_heads}}\n  n_kv_heads: {default: {field: n_heads}}\n")
    msg = error_of(write(tmp_path, "x", text))
    assert "unknown config field `n_headz` in a derived rule (did you mean `n_heads`?)" in msg
    assert "derived rules form a cycle" in msg


def test_contradictory_switches(tmp_path: Path) -> None:
    text = ("extends: llama\nmatch: [x]\nffn: {gated: false, gate_up: fused}\n"
            "block: {residual: parallel, post_norm: true}\n")
    msg = error_of(write(tmp_path, "x", text))
    assert "ffn.gate_up: a fused gate/up projection needs gated: true" in msg
    assert "block.post_norm: post-norms are not defined for a parallel residual" in msg


def test_a_switch_without_its_tensor_template(tmp_path: Path) -> None:
    text = "extends: llama\nmatch: [x]\nmixer: {qkv: separate}\ntensors:\n  layer:\n    attn_q: null\n"
    msg = error_of(write(tmp_path, "x", text))
    assert "the switches need tensor slot `attn_q` but it has no name template" in msg


def test_required_config_field_without_rule(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path, "x", "match: [x]\n"))
    assert "no rule for required config field `hidden_size`" in msg


def test_name_must_match_file(tmp_path: Path) -> None:
    assert "differs from the file name" in error_of(write(tmp_path, "x", "name: y\nextends: llama\n"))


def test_user_spec_overrides_and_extends_its_packaged_namesake(tmp_path: Path) -> None:
    write(tmp_path, "llama", "extends: llama\nmatch: [llama]\ndescription: my llama\n")
    spec = load_spec("llama", spec_dirs=[tmp_path])
    assert spec.description == "my llama"
    assert spec.mixer[0].rope.pairing == "adjacent"  # inherited from the packaged llama
