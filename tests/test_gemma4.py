"""Gemma 4 (text): the spec against transformers' Gemma4ForCausalLM on tiny random models converted by llama.cpp's
converter (tests/tiny_hf.py: the dense model "gemma4"), decoding with the cache against the full pass, the switches
the family brought (per-layer input embeddings, shared keys and values, sliding layers with their own head width
and rope, frequency factors on the full layers only, an optional V projection, a value norm, a per-layer output
scale), and clear errors on files that contradict themselves.

The converter writes `tokenizer.ggml.model = gemma4`; the CLI checks run on a copy of the file whose tokenizer
is declared `llama` (the same SentencePiece pieces and scores), marked below, until tfb reads the gemma4 tokenizer.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from compare import assert_decoding_equals_full, assert_logits_match, compare, ids_for
from llama_reference import llama_cpp_logits

import tfb
from tfb.errors import ConfigError, TfbError
from tfb.nn.ffn.dense_and_routed import DenseAndExperts
from tfb.nn.mixers.attention import Attention

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [(1, 1), (2, 3), (2, 9), (1, 21)]  # 9 and 21 tokens cross the window of 4


# ------------------------------------------------------------------------------ the model against transformers


def test_logits_match_transformers_on_every_position(tiny_model) -> None:
    reference, path = tiny_model("gemma4", "f32")
    compare(tfb.load(path), reference, SHAPES)


def test_quantized_file(tiny_model) -> None:
    """Q8_0 from the converter itself; the reference holds the same rounded weights."""
    reference, path = tiny_model("gemma4", "q8_0")
    model = tfb.load(path)
    assert type(model.per_layer_inputs.token_embd.table).__name__ == "PackedTensor"  # it stays quantized
    compare(model, reference, SHAPES[1:3])


def test_decoding_with_the_cache_equals_the_full_pass(tiny_model) -> None:
    model = tfb.load(tiny_model("gemma4", "f32")[1])
    chunked, _ = assert_decoding_equals_full(model, length=20)
    # the shared layers keep nothing: their keys and values are layers 1 and 2's, stored once
    assert chunked.layers[3] is None and chunked.layers[4] is None
    assert all(state is not None for state in chunked.layers[:3])


def test_the_file_builds_what_the_spec_says(tiny_model) -> None:
    model = tfb.load(tiny_model("gemma4", "f32")[1])
    mixers = [b.mixer for b in model.blocks]
    assert all(isinstance(m, Attention) for m in mixers)
    assert [m.opts.window for m in mixers] == [4, 4, 0, 4, 0]
    assert [m.shape.head_dim for m in mixers] == [16, 16, 32, 16, 32]
    assert [m.shape.n_kv_heads for m in mixers] == [2, 2, 1, 2, 1]
    assert [m.opts.kv_from for m in mixers] == [None, None, None, 1, 2]
    assert [m.gives_kv for m in mixers] == [False, True, True, False, False]
    assert mixers[2].v.weight is None and mixers[0].v.weight is not None  # full layers: keys as values
    # the frequency factors (a quarter of each full head rotated) reach the full layers' rope only
    assert [m.rotary.freq_factors is not None for m in mixers] == [False, False, True, False, True]
    assert mixers[0].rotary.params.dims == 16 and mixers[2].rotary.params.dims == 32
    assert model.per_layer_inputs is not None and all(b.per_layer is not None for b in model.blocks)
    assert all(b.layer_output_scale.weight is not None for b in model.blocks)
    assert model.config.final_softcap == 5.0


@pytest.mark.parametrize("family", ["gemma4", "gemma4moe"])
def test_logits_match_llama_cpp(tiny_model, family: str) -> None:
    """llama.cpp itself on the same files: the shared layers' sources it hard-codes, the rope factors on the full
    layers only, the experts. Its GELU reads a float16 table (tests/test_llama_cpp_reference.py: GELU_REL)."""
    path = tiny_model(family, "f32")[1]
    model = tfb.load(path)
    ids = ids_for(model.config.vocab_size, 2, 21)
    with torch.no_grad():
        ours = model(ids)
    assert_logits_match(ours, llama_cpp_logits(path, ids), 5e-3)


# ------------------------------------------------------------------------------------- the variant with experts


def test_experts_variant_matches_transformers_on_every_position(tiny_model) -> None:
    reference, path = tiny_model("gemma4moe", "f32")
    compare(tfb.load(path), reference, SHAPES)


def test_experts_variant_decodes_as_the_full_pass(tiny_model) -> None:
    assert_decoding_equals_full(tfb.load(tiny_model("gemma4moe", "f32")[1]), length=15)


def test_experts_variant_builds_both_branches(tiny_model) -> None:
    model = tfb.load(tiny_model("gemma4moe", "f32")[1])
    for block in model.blocks:
        ffn = block.ffn
        assert isinstance(ffn, DenseAndExperts)
        assert block.ffn_norm is None and ffn.dense_norm.weight is not None  # the branch norms itself
        assert ffn.router_scale is not None and ffn.expert_scale is not None
        assert ffn.experts.fused and ffn.experts.top_k == 2 and ffn.experts.normalize
    assert model.per_layer_inputs is None  # this file has no per-layer embeddings (size 0)


# ---------------------------------------------------------------------------------------------- bad files


def _rewrite(source: Path, out: Path, metadata: dict | None = None, tensors: dict | None = None) -> Path:
    """A copy of a GGUF file with some metadata values and tensors replaced."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(source))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(out), arch)
    metadata, tensors = metadata or {}, tensors or {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = metadata.get(name, field.contents())
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(name, value, vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(name, value, vtype)
    for t in reader.tensors:
        data = tensors.get(t.name, np.asarray(t.data))
        writer.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def test_a_per_layer_embedding_of_the_wrong_size_is_refused(tiny_model, tmp_path: Path) -> None:
    import numpy as np

    path = tiny_model("gemma4", "f32")[1]
    wrong = np.zeros((320, 5 * 32 - 32), dtype=np.float32)  # one layer's slice short
    bad = _rewrite(path, tmp_path / "bad.gguf", tensors={"per_layer_token_embd.weight": wrong})
    with pytest.raises(TfbError) as info:
        tfb.load(bad)
    message = str(info.value)
    assert "per_layer_token_embd.weight" in message and "[320, 128]" in message and "[320, 160]" in message


@pytest.mark.parametrize("shared", [5, 7])
def test_as_many_shared_layers_as_layers_is_refused(tiny_model, tmp_path: Path, shared: int) -> None:
    path = tiny_model("gemma4", "f32")[1]
    bad = _rewrite(path, tmp_path / "bad.gguf", metadata={"gemma4.attention.shared_kv_layers": shared})
    with pytest.raises(ConfigError, match=f"shared_kv_layers` = {shared} must be less than `n_layers` = 5"):
        tfb.load(bad)


# ------------------------------------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def gemma4_file(tiny_model) -> Path:
    """The converted file as it is: its tokenizer is declared `gemma4`."""
    return tiny_model("gemma4", "f32")[1]


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tfb.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          input=stdin, timeout=300)


def test_inspect_describes_the_converted_file(tiny_model) -> None:
    result = _cli("inspect", str(tiny_model("gemma4", "f32")[1]))
    assert result.returncode == 0, result.stderr
    assert "spec: gemma4" in result.stdout and "final_softcap              5.0" in result.stdout
    assert "per_layer_embedding_size   32" in result.stdout
    assert "tensors the spec reads are present, of the planned shapes" in result.stdout


def test_run_completes_a_prompt(gemma4_file: Path) -> None:
    result = _cli("run", str(gemma4_file), "-p", "hello world", "-n", "6", "--temp", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("hello world") and "generation: 6 tokens" in result.stderr


def test_chat_uses_the_files_template(gemma4_file: Path) -> None:
    """The converter wrote Gemma 4's template (tokenizer.chat_template); `tfb chat` renders the conversation with
    it: the prompt is exactly that rendering's tokens."""
    from tfb.text.chat_template import render_chat_template

    tok = tfb.load_tokenizer(gemma4_file)
    template = (ROOT / "tests" / "data" / "chat_templates" / "google-gemma-4-31B-it.jinja").read_text(encoding="utf-8")
    assert tok.chat_template == template
    result = _cli("chat", str(gemma4_file), "-n", "3", "--temp", "0", "-v", stdin="hello\n\n")
    assert result.returncode == 0, result.stderr
    assert "ChatML" not in result.stderr
    rendered = render_chat_template(template, [{"role": "user", "content": "hello"}], True, bos_token="<s>",
                                    eos_token="</s>")
    assert rendered.startswith("<s><|turn>user\nhello<turn|>\n<|turn>model\n")
    prompt = int(result.stderr.split("prompt: ")[1].split(" ")[0])
    assert prompt == len(tok.encode(rendered, add_special=False, parse_special=True))


def test_a_shared_layer_whose_source_differs_is_refused(tiny_model, tmp_path: Path) -> None:
    """llama.cpp's rule names layer 1 for the shared sliding layer 3; a file where layer 1 is a full layer gives
    keys of another width and window, which layer 3 cannot read."""
    path = tiny_model("gemma4", "f32")[1]
    bad = _rewrite(path, tmp_path / "bad.gguf",
                   metadata={"gemma4.attention.sliding_window_pattern": [True, False, False, True, False]})
    with pytest.raises(ConfigError, match=r"layer 3 reads the keys and values of layer 1 \(kv_from\), whose KV heads"):
        tfb.load(bad)
