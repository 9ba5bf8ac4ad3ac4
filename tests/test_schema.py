"""`tfb schema`: a JSON Schema of the spec language for editors. Every packaged spec validates against
it (shorthands included), and what `tfb validate` rejects for its shape the schema rejects too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tfb.authoring.json_schema import spec_json_schema
from tfb.spec.registry import all_spec_files, packaged_dir

ROOT = Path(__file__).resolve().parent.parent
PACKAGED = sorted(all_spec_files([packaged_dir()]).items())


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = spec_json_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.mark.parametrize(("name", "path"), PACKAGED, ids=[n for n, _ in PACKAGED])
def test_every_packaged_spec_validates(validator, name: str, path: Path) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert not errors, errors


@pytest.mark.parametrize("text", [
    "norm: layernorm", "norm: {kind: layernorm, bias: required}", "rope: none", "mixer: {rope: none}",
    "mixer: {bias: qkv, qk_norm: rmsnorm}", "mixer: {qk_norm: none}", "mixer: {bias: optional}",
    "hparams: {expert_weights_norm: true, rope_base: 1000000.0}",
    "hparams: {head_dim: {key: ['{arch}.a', '{arch}.b'], default: {quotient: [hidden_size, n_heads]}}}",
    "tensors: {global: {output: {name: output.weight, if_absent: token_embd}}, layer: {attn_q: 'blk.{i}.q.weight'}}",
    "mixer: {sliding_window: [true, false]}", "name: x", "extends: ../base.yaml",
])
def test_shorthands_are_accepted(validator, text: str) -> None:
    data = yaml.safe_load(text)
    if "rope" in data:  # `rope:` lives under attention; a top-level one is an unknown key
        assert not validator.is_valid(data)
    else:
        assert validator.is_valid(data), list(validator.iter_errors(data))


@pytest.mark.parametrize("text", [
    "norm: {kind: rmsnrom}", "nrom: rmsnorm", "mixer: {bias: qk}", "mixer: {qk_norm: {over: heads}}",
    "tensors: {layer: {attn_x: a}}", "hparams: {n_heads: {key: [1]}}", "hparams: {no_such_field: 1}",
    "ffn: {activation: swish}", "block: {residual: parallel, post_norm: yes please}", "match: qwen",
])
def test_shape_errors_are_rejected(validator, text: str) -> None:
    assert not validator.is_valid(yaml.safe_load(text))


def test_fields_carry_their_docs_for_hover() -> None:
    schema = spec_json_schema()
    hparams = schema["$defs"]["HParams"]["properties"]
    assert hparams["n_kv_heads"]["description"].startswith("key/value heads per layer")
    assert "pairing" in schema["$defs"]["Rope"]["anyOf"][1]["properties"]


def test_cli_prints_the_schema_without_torch() -> None:
    code = ("import sys, tfb.cli; rc = tfb.cli.main(['schema']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == spec_json_schema()
