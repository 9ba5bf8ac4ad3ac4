"""Hostile and broken specs: safe YAML only, fast rejection, clear one-line errors with file:line:column.

tests/test_spec.py covers the everyday mistakes (unknown keys, enum typos, cycles, anchors, deep nesting,
contradictions); this file covers what a spec downloaded from the internet might try.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tfb
from tfb.errors import ConfigError, SpecError
from tfb.gguf.reader import MetaValue
from tfb.hparams import build_config
from tfb.spec import load_spec
from tfb.spec.yamlfile import MAX_BYTES

ROOT = Path(__file__).resolve().parent.parent
FAST_S = 0.5


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / f"{name}.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert time.perf_counter() - start < FAST_S, "rejection took too long"
    return str(info.value)


SPEC = "extends: llama\nmatch: [x]\n"

REJECTED = {
    # YAML features that build objects, share nodes or smuggle types
    "python_object": (SPEC + "description: !!python/object/apply:os.system ['touch /tmp/tfb-pwned']\n",
                      ":3:14: the YAML tag `!!python/object/apply:os.system` is not allowed"),
    "python_object_on_mapping": (SPEC + "norm: !!python/object:os.system {kind: rmsnorm}\n",
                                 ":3:7: the YAML tag `!!python/object:os.system` is not allowed"),
    "python_name": (SPEC + "description: !!python/name:os.system\n", "`!!python/name:os.system` is not allowed"),
    "custom_tag": (SPEC + "norm: !custom rmsnorm\n", "the YAML tag `!custom` is not allowed"),
    "set_tag": (SPEC + "match: !!set {x: null}\n", "the YAML tag `!!set` is not allowed"),
    "binary_tag": (SPEC + "description: !!binary aGVsbG8=\n", "the YAML tag `!!binary` is not allowed"),
    "merge_key": (SPEC + "norm:\n  <<: {kind: rmsnorm}\n", ":4:3: merge keys (<<) are not allowed"),
    "implicit_date": (SPEC + "description: 2024-01-01\n", "the YAML type `!!timestamp` is not allowed"),
    "alias": (SPEC + "norm: &n {kind: rmsnorm}\nqk: *n\n", "anchors and aliases are not allowed"),
    # text that is not YAML or not text
    "nul_byte": (SPEC + "description: a\x00b\n", ":3:15: invalid YAML: character U+0000 is not allowed"),
    "escape_sequence": (SPEC + "description: \x1b[2J\n", "character U+001B is not allowed"),
    "invalid_utf8": (SPEC.encode() + b"description: caf\xe9\n", "not UTF-8 text (invalid continuation byte at "
                     "byte 42)"),
    "binary_junk": (bytes(range(256)) * 4, "not UTF-8 text"),
    "utf16": ("extends: llama\n".encode("utf-16"), "not UTF-8 text"),
    "lone_surrogate_escape": (SPEC + 'description: "\\udcff"\n', "invalid YAML"),
    "two_documents": (SPEC + "---\nextends: qwen2\n", "invalid YAML: but found another document"),
    "tab_indentation": (SPEC + "norm:\n\tkind: rmsnorm\n", "invalid YAML"),
    # numbers
    "huge_integer": (SPEC + "hparams: {n_heads: " + "9" * 5000 + "}\n", "a number of 5000 characters"),
    "nan": (SPEC + "norm: {weight_offset: .nan}\n", ":3:23: .nan is not a finite number"),
    "infinity": (SPEC + "hparams: {norm_eps: -.inf}\n", "-.inf is not a finite number"),
    "negative_default": (SPEC + "hparams: {norm_eps: -1.0e-5}\n",
                         "hparams.norm_eps.default: -1e-05 is out of range: `norm_eps` must be positive"),
    "negative_heads_default": (SPEC + "hparams: {n_heads: {key: x.y, default: -1}}\n",
                               "`n_heads` must be nonnegative"),
    # structure
    "empty_layer_list": (SPEC + "mixer: {sliding_window: []}\n", "an empty list of layers"),
    "empty_rope_layers": (SPEC + "mixer: {rope: {layers: []}}\n", "mixer.rope.layers: an empty list"),
    "if_absent_unknown_slot": (SPEC + "tensors: {global: {output: {name: o.weight, if_absent: nosuch}}}\n",
                               "`nosuch` is not a slot of tensors.global"),
    # layer selectors
    "layer_rule_unknown_field": (SPEC + "ffn: [{kind: dense, layers: {below: leading_dense_blocks}}, {kind: dense}]\n",
                                 ":3:30: ffn.0.layers.below: `leading_dense_blocks` is not a config field (did "
                                 "you mean `leading_dense_block_count`?)"),
    "layer_rule_on_a_string_field": (SPEC + "mixer: {layers: {nonzero: rope_scaling}}\n",
                                     "mixer.layers.nonzero: `rope_scaling` is a str config field; a `nonzero` "
                                     "rule needs int or float or bool"),
    "layers_left_uncovered": (SPEC + "ffn:\n  - {kind: dense, layers: [true, false, false]}\n"
                              "  - {kind: dense, layers: [false, true]}\n",
                              ":3:1: ffn: no section covers layer 2 (the patterns repeat over the layers)"),
    "key_template_with_code": (SPEC + "hparams: {n_heads: {key: '{arch.__class__}'}}\n",
                               "only '{arch}' may be substituted"),
    "tensor_template_with_code": (SPEC + "tensors: {layer: {attn_q: 'blk.{i.__class__}.q'}}\n",
                                  "may only substitute '{i}'"),
    "extends_device": ("extends: /dev/zero\n", "spec file /dev/zero does not exist"),
    "extends_not_a_string": ("extends: {a: 1}\n", "extends: give a spec name or path"),
    "self_extends_only": ("extends: self_extends_only.yaml\n", "cycle"),
    "extends_name_too_long": ("extends: " + "l" * 5000 + "\n", "...` is not a spec name"),
    "extends_path_too_long": ('extends: "' + "x" * 5000 + '.yaml"\n', "... does not exist"),
    "extends_with_nul": ('extends: "a\\0b"\n', "is not a spec name"),
    "long_value_is_shortened": (SPEC + "norm: {kind: " + "r" * 100_000 + "}\n", "...` is not allowed"),
}


@pytest.mark.parametrize("name", REJECTED)
def test_rejected_with_a_clear_error(tmp_path: Path, name: str) -> None:
    text, expected = REJECTED[name]
    path = write(tmp_path, name, text)
    message = error_of(path)
    assert expected in message, message
    assert str(path) in message and len(message) < len(str(path)) + 300
    assert "\x1b" not in message and "Traceback" not in message


def test_python_tags_are_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = SPEC + f"description: !!python/object/apply:os.system ['touch {marker}']\n"
    error_of(write(tmp_path, "x", text))
    assert not marker.exists()


def test_billion_laughs_is_rejected_before_expanding(tmp_path: Path) -> None:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    message = error_of(write(tmp_path, "laughs", "\n".join(lines) + "\n"))
    assert ":1:5: YAML anchors and aliases are not allowed" in message


@pytest.mark.parametrize("text", ["x: " + "[" * 100_000, "x: " + "{a: " * 20_000, "".join(
    " " * i + f"k{i}:\n" for i in range(200))])
def test_deep_nesting_is_rejected_fast(tmp_path: Path, text: str) -> None:
    assert "nesting deeper than" in error_of(write(tmp_path, "deep", text))


def test_huge_files_are_not_read(tmp_path: Path) -> None:
    big = write(tmp_path, "big", SPEC + "# " + "x" * MAX_BYTES + "\n")
    assert f"over the {MAX_BYTES}-byte limit" in error_of(big)
    many = write(tmp_path, "many", "- [0]\n" * 20_000)
    assert "more than 20000 YAML nodes" in error_of(many)


def test_spec_paths_that_are_not_files(tmp_path: Path) -> None:
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "pipe.yaml"
        os.mkfifo(fifo)  # reading would wait for a writer forever
        child = write(tmp_path, "child", f"extends: {fifo}\n")
        assert "does not exist" in error_of(child) or "not a regular file" in error_of(child)
        from tfb.spec.yamlfile import read_yaml

        start = time.perf_counter()
        with pytest.raises(SpecError, match="not a regular file"):
            read_yaml(fifo)
        assert time.perf_counter() - start < FAST_S


def test_long_extends_chain(tmp_path: Path) -> None:
    write(tmp_path, "s0", "extends: llama\n")
    for i in range(1, 30):
        write(tmp_path, f"s{i}", f"extends: s{i - 1}.yaml\n")
    assert "`extends` chain deeper than" in error_of(tmp_path / "s29.yaml")


# -------------------------------------------------------------------------- configs that cannot be built


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(ROOT / "tools"))
    from make_hostile_gguf import make_base

    path = tmp_path_factory.mktemp("tiny") / "base.gguf"
    make_base(path)
    return path


UNBUILDABLE = {
    "heads_not_dividing_hidden": ("n_heads: {key: x.none, default: 3}\n  head_dim: {default: "
                                  "{quotient: [hidden_size, n_heads]}}\n  n_kv_heads: {default: 1}",
                                  "= hidden_size / n_heads = 32 / 3 is not a whole number"),
    "kv_heads_not_dividing_heads": ("n_kv_heads: {key: x.none, default: 3}", "n_heads = 4 is not a multiple of "
                                    "n_kv_heads = 3"),
    "rope_dims_odd": ("rope_dims: {key: x.none, default: 7}", "rope_dims = 7 must be even"),
    "rope_dims_over_head_dim": ("rope_dims: {key: x.none, default: 16}",
                                "rope_dims = 16 must be even and at most head_dim = 8"),
    "division_by_zero": ("head_dim: {key: x.none, default: {quotient: [hidden_size, 0]}}",
                         "`head_dim` = hidden_size / 0.0 divides by zero"),
    "sqrt_of_negative": ("attention_scale: {key: x.none, default: {inverse_sqrt: -4}}",
                         "`attention_scale` takes the square root of -4.0"),
    # these three once reached the modules as floats or raised OverflowError
    "fraction_for_an_integer": ("n_heads: {key: x.none, default: {product: [1.5, 3]}}",
                                "`n_heads` derives 4.5, not an integer"),
    "infinite_product": ("n_heads: {key: x.none, default: {product: [1.0e+308, 1.0e+308]}}",
                         "`n_heads` derives inf, not an integer"),
    "float_field_for_an_integer": ("n_heads: {key: x.none, default: {field: norm_eps}}",
                                   "`n_heads` derives 9.99"),
}


@pytest.mark.parametrize("name", UNBUILDABLE)
def test_config_that_cannot_be_built(tmp_path: Path, tiny_file: Path, name: str) -> None:
    rules, expected = UNBUILDABLE[name]
    spec = load_spec(write(tmp_path, name, SPEC + "hparams:\n  " + rules + "\n"))
    with pytest.raises(ConfigError) as info:
        tfb.load(tiny_file, spec=spec)
    assert expected in str(info.value) and str(tiny_file) in str(info.value)


def test_layers_no_rule_covers(tmp_path: Path, tiny_file: Path) -> None:
    """Rules on config fields are settled by the file: a layer no section covers is found at load."""
    text = SPEC + "ffn:\n  - {kind: routed, layers: {nonzero: expert_count}}\n" \
        "  - {kind: dense, layers: {below: leading_dense_block_count}}\n"
    spec = load_spec(write(tmp_path, "uncovered", text))
    with pytest.raises(ConfigError) as info:
        tfb.load(tiny_file, spec=spec)
    assert str(info.value) == (f"{tiny_file}: no ffn section of spec `uncovered` covers layer 0 (their layers: "
                               "nonzero: expert_count = 0; below: leading_dense_block_count = 0); end the ffn list "
                               "with a section for the other layers (`layers: all`, the default)")


def test_whole_numbers_derived_as_floats_are_integers(tmp_path: Path, tiny_file: Path) -> None:
    spec = load_spec(write(tmp_path, "x", SPEC + "hparams:\n  n_heads: {key: x.none, default: {sqrt: 16}}\n"))
    model = tfb.load(tiny_file, spec=spec)
    assert model.config.n_heads == 4 and isinstance(model.config.n_heads, int)


# ------------------------------------------------------------------------------- latent attention ranks

MLA_SPEC = """extends: gguf-decoder
match: [x]
mixer: {kind: latent_attention, query: low_rank}
hparams:
  q_lora_rank: {key: "{arch}.attention.q_lora_rank"}
  kv_lora_rank: {key: "{arch}.attention.kv_lora_rank"}
"""


def mla_metadata(**ranks: int) -> dict[str, MetaValue]:
    """A one-layer latent attention model's metadata (64 wide, 4 heads of 16 + 8 rope dimensions)."""
    sizes = {"vocab_size": 8, "context_length": 64, "embedding_length": 64, "block_count": 1,
             "feed_forward_length": 32, "attention.head_count": 4, "attention.key_length": 24,
             "attention.value_length": 16, "rope.dimension_count": 8, **ranks}
    meta = {f"x.{k.replace('__', '.')}": MetaValue(v, "uint32") for k, v in sizes.items()}
    return {**meta, "x.attention.layer_norm_rms_epsilon": MetaValue(1e-6, "float32")}


@pytest.mark.parametrize("key", ["attention.kv_lora_rank"])
def test_latent_rank_wider_than_the_model(tmp_path: Path, key: str) -> None:
    """A low-rank latent wider than the residual stream is no low rank: one error naming the field and both
    values, before any weight is read."""
    spec = load_spec(write(tmp_path, "mla", MLA_SPEC))
    ranks = {"attention__q_lora_rank": 32, "attention__kv_lora_rank": 32}
    build_config(spec, mla_metadata(**ranks), [], arch="x", where="model.gguf")  # ranks below the width pass
    with pytest.raises(ConfigError) as info:
        build_config(spec, mla_metadata(**{**ranks, key.replace(".", "__"): 128}), [], arch="x", where="model.gguf")
    field = key.removeprefix("attention.")
    assert f"{field} = 128" in str(info.value) and "hidden_size = 64" in str(info.value), info.value


# ------------------------------------------------------------------------------------------ command line


def test_validate_prints_one_line_per_problem(tmp_path: Path) -> None:
    paths = [write(tmp_path, name, REJECTED[name][0]) for name in ("python_object", "nul_byte", "binary_junk")]
    result = subprocess.run([sys.executable, "-m", "tfb.cli", "validate", *map(str, paths)], capture_output=True,
                            text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith(str(p)) for line, p in zip(lines, paths, strict=True))
