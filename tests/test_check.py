"""`tfb check SPEC MODEL.gguf`: clean on every packaged family's converted file; each problem named with
the tensor or key, expected and found, and the spec line that asked for it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

from tfb import load as tfb_load
from tfb.authoring.check import check
from tfb.errors import TfbError, TfbWarning

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from make_tiny_gguf import DEFAULT_VOCAB, make  # noqa: E402

FAMILIES = ["llama", "llama_tied", "llama3", "qwen2", "qwen3", "starcoder2", "phi2", "phi3", "phi3_longrope",
            "mistral3", "qwen3moe", "mixtral", "gemma", "gemma2", "gemma3", "granite", "olmo", "olmo2", "smollm3",
            "stablelm", "stablelm_parallel", "stablelm_qk_norm", "gpt2", "glm4", "phimoe", "gpt-oss"]
SIZES = {"hidden_size": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16, "intermediate_size": 128,
         "context_length": 256}


def tfb(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tfb.cli", *args], capture_output=True, text=True, cwd=ROOT)


def line_of(path: Path, text: str) -> int:
    """The 1-based line of `path` that holds `text`."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def rewrite(src: Path, dst: Path, meta: dict[str, tuple[object, GGUFValueType]], drop: tuple[str, ...] = ()) -> Path:
    """A copy of a GGUF file with some metadata values replaced, added or dropped; tensors kept as stored."""
    reader = GGUFReader(src)
    writer = GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in meta or key in drop:
            continue
        vtype = GGUFValueType(field.types[0])
        sub = GGUFValueType(field.types[-1]) if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    for key, (value, vtype) in meta.items():
        writer.add_key_value(key, value, vtype)
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        writer.add_tensor(t.name, np.asarray(t.data).reshape(shape), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("check") / "tiny-qwen3.gguf"
    make("qwen3", out, SIZES, GGMLQuantizationType.F32, DEFAULT_VOCAB)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_packaged_specs_fit_their_converted_files(tiny_model, family: str) -> None:
    _, path = tiny_model(family, "f32")
    report = check(path)
    assert report.ok, "\n".join(report.lines())
    assert report.tensors_checked > 0


def test_clean_check_exit_zero_and_summary(tiny_model) -> None:
    _, path = tiny_model("qwen3", "f32")
    result = tfb("check", "qwen3", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1].startswith("OK: spec qwen3 (specs/qwen3.yaml) on ")
    assert "25 tensors checked" in lines[-1]
    assert all(": error: " not in line for line in lines)
    assert "note: defaults for absent keys:" in result.stdout  # which keys were defaulted, and to what


def test_verbose_names_each_defaulted_key_and_its_rule_line(tiny_model) -> None:
    _, path = tiny_model("qwen3", "f32")
    result = tfb("check", "-v", str(path))
    base = ROOT / "specs" / "gguf-decoder.yaml"
    expected = (f"specs/gguf-decoder.yaml:{line_of(base, '  rope_dims:')}:3: note: key qwen3.rope.dimension_count: "
                "absent; `rope_dims` = 32 from `head_dim`")
    assert expected in result.stdout.splitlines()


def test_unused_tensors_point_at_the_switch(tiny_model) -> None:
    """qwen2's spec on a qwen3 file leaves the Q/K norm tensors unread."""
    _, path = tiny_model("qwen3", "f32")
    result = tfb("check", "qwen2", str(path))
    assert result.returncode == 1
    assert ("specs/qwen2.yaml: error: tensor blk.{i}.attn_q_norm.weight (all 2 layers): not read: it is slot "
            "`attn_q_norm`, which this spec and file leave unread (mixer.qk_norm is `none`); [32] F32 in the "
            "file") in result.stdout.splitlines()
    assert result.stdout.splitlines()[-1].startswith("2 problems: spec qwen2")


def test_load_warns_of_tensors_no_slot_reads(tiny_model) -> None:
    """tfb.load keeps going on such a file (the spec may be the one asked for) but says what it leaves out;
    the command line prints that as one line."""
    _, path = tiny_model("qwen3", "f32")
    unread = "blk.0.attn_k_norm.weight, blk.0.attn_q_norm.weight, blk.1.attn_k_norm.weight, blk.1.attn_q_norm.weight"
    with pytest.warns(TfbWarning) as caught:
        tfb_load(path, spec="qwen2")
    assert [str(w.message) for w in caught] == [
        f"{path}: spec `qwen2` reads no tensor named {unread}; the logits may not be the model's (`tfb check "
        f"{path}` says which switch would read them)"]
    result = tfb("run", str(path), "--spec", "qwen2", "-p", "hi", "-n", "1", "--temp", "0")
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "reads no tensor" in line]
    assert len(warned) == 1, result.stderr
    assert warned[0].startswith(f"tfb: warning: {path}: spec `qwen2` reads no tensor"), result.stderr
    assert "Traceback" not in result.stderr and "UserWarning" not in result.stderr


def test_missing_tensor_and_wrong_shape_name_the_template_line(tmp_path: Path, tiny_qwen3: Path) -> None:
    spec = tmp_path / "mine.yaml"
    spec.write_text("extends: qwen3\nmatch: [qwen3]\nhparams:\n  head_dim: {key: '{arch}.nokey', default: 8}\n"
                    "mixer:\n  bias: {o: required}\n")
    report = check(tiny_qwen3, spec)
    base = ROOT / "specs" / "gguf-decoder.yaml"
    lines = report.lines()
    assert (f"specs/gguf-decoder.yaml:{line_of(base, 'attn_output_bias:')}:5: error: tensor "
            "blk.{i}.attn_output.bias (all 2 layers): missing (slot `attn_output_bias`, required, shape [64])") in lines
    assert (f"specs/gguf-decoder.yaml:{line_of(base, 'attn_q: ')}:5: error: tensor blk.{{i}}.attn_q.weight "
            "(all 2 layers): shape [64, 64] in the file, expected [32, 64] from the config (slot `attn_q`)") in lines
    assert not report.ok


def test_missing_required_key_names_the_rule_line(tmp_path: Path, tiny_qwen3: Path) -> None:
    spec = tmp_path / "mine.yaml"
    spec.write_text("extends: qwen3\nmatch: [qwen3]\nhparams:\n  norm_eps: {key: '{arch}.norm_epsilon'}\n")
    report = check(tiny_qwen3, spec)
    assert [str(p) for p in report.problems] == [
        f"{spec}:4:3: error: key qwen3.norm_epsilon: missing, and the rule for `norm_eps` gives no default "
        "(epsilon of every norm); add `default:` to the rule or fix the key"]
    assert any("tensors: not checked" in line for line in report.lines())


def test_bad_metadata_values_are_each_reported(tmp_path: Path, tiny_qwen3: Path) -> None:
    bad = rewrite(tiny_qwen3, tmp_path / "bad.gguf", {
        "qwen3.attention.head_count": ("four", GGUFValueType.STRING),
        "qwen3.context_length": (0, GGUFValueType.UINT32),
    })
    report = check(bad)
    base = ROOT / "specs" / "gguf-decoder.yaml"
    problems = [str(p) for p in report.problems]
    assert (f"specs/gguf-decoder.yaml:{line_of(base, '  n_heads:')}:3: error: key qwen3.attention.head_count: "
            "metadata qwen3.attention.head_count is string 'four', expected an integer for `n_heads` (query heads "
            "per layer)") in problems
    assert any("`context_length` = 0" in p and "must be positive" in p for p in problems)
    assert len(problems) == 2, problems


def test_inconsistent_head_counts(tmp_path: Path, tiny_qwen3: Path) -> None:
    bad = rewrite(tiny_qwen3, tmp_path / "bad.gguf", {"qwen3.attention.head_count_kv": (3, GGUFValueType.UINT32)})
    result = tfb("check", str(bad))
    assert result.returncode == 1
    assert "error: config: n_heads = 4 is not a multiple of n_kv_heads = 3" in result.stdout


def test_unsupported_storage_type(tmp_path: Path) -> None:
    path = tmp_path / "i32.gguf"  # an integer type: never a weight's storage
    make("qwen2", path, SIZES, GGMLQuantizationType.I32, DEFAULT_VOCAB)
    report = check(path)
    messages = [p.message for p in report.problems]
    assert messages and all(m.startswith("storage type I32 is not supported for weights (supported: ")
                            for m in messages)
    assert any(p.subject == "tensor blk.{i}.attn_q.weight (all 2 layers)" for p in report.problems)


def test_abstract_spec_and_unknown_architecture(tmp_path: Path, tiny_qwen3: Path) -> None:
    assert not check(tiny_qwen3, "gguf-decoder").ok
    other = rewrite(tiny_qwen3, tmp_path / "x.gguf", {"general.architecture": ("nosuch", GGUFValueType.STRING)})
    with pytest.raises(TfbError, match="no spec serves architecture `nosuch`"):
        check(other)
    result = tfb("check", str(other))
    assert result.returncode == 1 and result.stderr.startswith("tfb: ") and "Traceback" not in result.stderr
