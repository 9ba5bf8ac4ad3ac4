"""`tfb convert` writes what llama.cpp's convert_hf_to_gguf.py writes from the same checkpoint: every metadata key
with its type and value (general.* provenance aside), every tensor with its name, shape, storage type and bytes;
its Q8_0 blocks are ggml's own reference quantizer's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tfb.gguf.reader import GGUFFile
from tfb.sources.checkpoint import CheckpointSource
from tfb.sources.convert import convert

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from llama_cpp import llama_cpp_dir  # noqa: E402

PROVENANCE = ("general.name", "general.size_label", "general.basename", "general.finetune", "general.version")
# every family with a checkpoint naming table, with a byte-level BPE tokenizer.json or a SentencePiece
# tokenizer.model as tests/tiny_hf.py gives it
FAMILIES = ["llama", "llama_tied", "qwen2", "qwen3", "gemma", "gemma2", "starcoder2", "mistral", "mixtral", "qwen3moe",
            "gpt2", "deepseek_v3", "deepseek_v2", "qwen2moe", "olmoe", "olmo2", "granite", "granitemoe", "smollm3",
            "glm4", "olmo", "phi2", "stablelm", "llama3",
            "lfm2", "lfm2moe", "mamba2", "granitehybrid", "falcon_h1", "falcon_h1_no_norm", "falcon_h1_tied",
            "nemotron_h", "nemotron_h_moe", "nemotron_h_moe_latent"]
FAMILIES += ["phi3", "phi3_window", "phi3_longrope", "phi3_longrope_32", "phimoe"]
FAMILIES += ["mistral3", "gemma3", "stablelm_parallel", "stablelm_qk_norm", "gpt-oss", "deepseek_v3_lite",
             "deepseek_v3_wide", "granitemoe_shared", "gemma3_vision", "mistral3_vision"]
FAMILIES += ["ernie4_5_moe", "ernie4_5_moe_interleaved", "glm4moe", "llama4", "qwen3next", "qwen35", "qwen35moe",
             "qwen3next_mtp", "qwen35_vl", "llama4_vl"]
FAMILIES += ["gemma4", "gemma4moe", "llama_wide"]
FAMILIES += ["gemma4_vl", "qwen35moe_vl"]


def reference_file(directory: Path, outtype: str, out: Path) -> Path:
    result = subprocess.run([sys.executable, str(llama_cpp_dir() / "convert_hf_to_gguf.py"), str(directory),
                             "--outfile", str(out), "--outtype", outtype], cwd=llama_cpp_dir(),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def assert_same_gguf(ours: Path, theirs: Path) -> None:
    with GGUFFile(ours) as a, GGUFFile(theirs) as b:
        keys_a = {k for k in a.metadata if k not in PROVENANCE}
        keys_b = {k for k in b.metadata if k not in PROVENANCE}
        assert keys_a == keys_b, (sorted(keys_a - keys_b), sorted(keys_b - keys_a))
        for key in keys_b:
            x, y = a.metadata[key], b.metadata[key]
            assert x.type == y.type, key
            assert np.array_equal(np.asarray(x.value), np.asarray(y.value)), key
        assert set(a.tensors) == set(b.tensors)
        for name, info in b.tensors.items():
            mine = a.tensors[name]
            assert (mine.shape, mine.ggml_type.name) == (info.shape, info.ggml_type.name), name
            assert np.array_equal(a.tensor_data(name), b.tensor_data(name)), name


@pytest.mark.parametrize("family", FAMILIES)
def test_convert_f32_equals_the_converter(tiny_model, tmp_path: Path, family: str) -> None:
    theirs = tiny_model(family, "f32")[1]
    directory = theirs.parent / "hf"
    assert_same_gguf(convert(directory, tmp_path / "ours.gguf", "f32"), theirs)


# one family per checkpoint naming table (dense, tied, experts stacked or stored fused, latent attention, Conv1D,
# norm offsets, partial rope, computed rope factors...), each converted to every type the converter writes
OUTTYPE_FAMILIES = ["llama", "llama_tied", "qwen2", "qwen3", "qwen3moe", "qwen2moe", "gemma", "gemma2", "gemma4",
                    "gemma4moe", "starcoder2", "gpt2", "deepseek_v3", "olmoe", "olmo2", "olmo", "granite",
                    "granitemoe", "smollm3", "glm4", "phi2", "stablelm"]
# f16 and q8_0 for each; bf16 (f16's path with another rounding) on experts, norm offsets and Conv1D
OUTTYPE_CASES = [(f, t) for f in OUTTYPE_FAMILIES for t in ("f16", "q8_0")] + \
    [(f, "bf16") for f in ("qwen3moe", "gemma", "gpt2")]


@pytest.fixture(scope="module")
def converter_outputs(request: pytest.FixtureRequest, tiny_model, tmp_path_factory: pytest.TempPathFactory):
    """The converter's file for each (family, outtype) the collected tests ask for, all written by one Python
    process that runs the converter's main() once per file (a process per file would pay its start-up each time)."""
    wanted = sorted({(item.callspec.params["family"], item.callspec.params["outtype"]) for item in request.session.items
                     if getattr(item, "originalname", None) == "test_convert_each_outtype_equals_the_converter"})
    out = tmp_path_factory.mktemp("converter")
    jobs = [(str(tiny_model(f, "f32")[1].parent / "hf"), str(out / f"{f}-{t}.gguf"), t) for f, t in wanted]
    script = ("import sys\nimport convert_hf_to_gguf as c\n"
              f"for d, o, t in {jobs!r}:\n"
              "    sys.argv = ['convert_hf_to_gguf.py', d, '--outfile', o, '--outtype', t]\n    c.main()\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=llama_cpp_dir(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return {(f, t): out / f"{f}-{t}.gguf" for f, t in wanted}


@pytest.mark.parametrize(("family", "outtype"), OUTTYPE_CASES)
def test_convert_each_outtype_equals_the_converter(tiny_model, converter_outputs, tmp_path: Path, family: str,
                                                   outtype: str) -> None:
    directory = tiny_model(family, "f32")[1].parent / "hf"
    assert_same_gguf(convert(directory, tmp_path / "ours.gguf", outtype), converter_outputs[family, outtype])


def test_convert_q8_0_of_a_renamed_block_equals_the_converter(tiny_model, tmp_path: Path) -> None:
    """Nemotron 3 Super's prediction head is read from mtp.layers.1.* as block 4: the converter keeps routers F32
    by the checkpoint name's block number (1), so the head's router is Q8_0 while the others stay F32."""
    directory = tiny_model("nemotron_h_moe_latent", "f32")[1].parent / "hf"
    theirs = reference_file(directory, "q8_0", tmp_path / "theirs.gguf")
    assert_same_gguf(convert(directory, tmp_path / "ours.gguf", "q8_0"), theirs)
    with GGUFFile(theirs) as f:
        assert [f.tensors[f"blk.{i}.ffn_gate_inp.weight"].ggml_type.name for i in (1, 3, 4)] == ["F32", "F32", "Q8_0"]


def test_convert_bfloat16_checkpoint_with_computed_tensors_equals_the_converter(tiny_model, tmp_path: Path) -> None:
    """A bfloat16 Falcon-H1 checkpoint: the converter widens to float32 before A = -exp(A_log) and the multipliers,
    and so does tfb (A in bfloat16 would round differently)."""
    import copy

    reference, gguf_path = tiny_model("falcon_h1", "f32")
    directory = tmp_path / "hf"
    copy.deepcopy(reference).to(torch.bfloat16).save_pretrained(directory)
    for extra in ("config.json", "tokenizer.json", "tokenizer_config.json"):  # the fixture's, as the converter wants
        (directory / extra).write_bytes((gguf_path.parent / "hf" / extra).read_bytes())
    theirs = reference_file(directory, "f32", tmp_path / "theirs.gguf")
    assert_same_gguf(convert(directory, tmp_path / "ours.gguf", "f32"), theirs)


def test_convert_pads_the_vocabulary_as_the_converter(tiny_model, tmp_path: Path) -> None:
    """Mamba-2's converter pads the token list to a multiple of 16 ([PAD{i}] tokens): a config.json vocab_size of
    310 over 320 embedding rows gives 320 tokens."""
    import json
    import shutil

    directory = shutil.copytree(tiny_model("mamba2", "f32")[1].parent / "hf", tmp_path / "hf")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "vocab_size": 310}))
    theirs = reference_file(directory, "f32", tmp_path / "theirs.gguf")
    assert_same_gguf(convert(directory, tmp_path / "ours.gguf", "f32"), theirs)
    with GGUFFile(theirs) as f:
        assert len(f.metadata["tokenizer.ggml.tokens"].value) == 320


def test_q8_0_is_ggmls_reference_quantizer(tiny_model, tmp_path: Path) -> None:
    from ggml_quants import GGMLQuants

    directory = tiny_model("qwen3moe", "f32")[1].parent / "hf"
    ours = convert(directory, tmp_path / "ours.gguf", "q8_0")
    ggml = GGMLQuants()
    with GGUFFile(ours) as f, CheckpointSource(directory) as c:
        quantized = [t for t in f.tensors.values() if t.ggml_type.name == "Q8_0"]
        assert len(quantized) > 10
        for info in quantized:
            values = c.tensor(info.name).float().numpy()
            blocks = ggml.quantize("Q8_0", values, 34, 32)
            assert np.array_equal(blocks.reshape(-1), f.tensor_data(info.name)), info.name


def test_cli_convert_refuses_unknown_pre_tokenizer_and_takes_vocab_pre(tiny_model, tmp_path: Path) -> None:
    from test_checkpoint_load import with_unknown_pre_tokenizer

    d = with_unknown_pre_tokenizer(tiny_model("qwen3moe", "f32")[1].parent / "hf", tmp_path / "c")
    run = [sys.executable, "-m", "tfb.cli", "convert", str(d), str(tmp_path / "out.gguf"), "--outtype", "f32"]
    refused = subprocess.run(run, capture_output=True, text=True, cwd=ROOT)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "pass --vocab-pre NAME" in refused.stderr and not (tmp_path / "out.gguf").exists()
    done = subprocess.run([*run, "--vocab-pre", "gpt-2"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    with GGUFFile(tmp_path / "out.gguf") as f:
        assert f.metadata["tokenizer.ggml.pre"].value == "gpt-2"


def test_llama4_without_chunked_layers_writes_a_window_of_0(tiny_model, tmp_path: Path) -> None:
    """A Llama 4 checkpoint whose layer_types are all full_attention (MobileLLM-R1): the converter writes
    attention.sliding_window 0, which switches llama.cpp's chunking off; the mixed one writes none."""
    import json
    import shutil

    directory = shutil.copytree(tiny_model("llama4", "f32")[1].parent / "hf", tmp_path / "hf")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "layer_types": ["full_attention"] * 4}))
    theirs = reference_file(directory, "f32", tmp_path / "theirs.gguf")
    assert_same_gguf(convert(directory, tmp_path / "ours.gguf", "f32"), theirs)
    with GGUFFile(theirs) as f:
        assert f.metadata["llama4.attention.sliding_window"].value == 0


def spm_json_checkpoint(directory: Path, out: Path) -> Path:
    """A copy of a SentencePiece checkpoint as transformers now saves Llama and Mistral tokenizers: tokenizer.json
    only (the same pieces as a BPE with byte fallback), with an added special token and a plain added token past
    the vocabulary, and tokenizer_config.json's add_prefix_space."""
    import json
    import shutil

    from tiny_hf import write_spm_json_tokenizer
    from tokenizers import AddedToken, Tokenizer

    shutil.copytree(directory, out)
    (out / "tokenizer.model").unlink()
    write_spm_json_tokenizer(out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    tok.add_tokens([AddedToken("<|im_start|>", special=True, normalized=False),
                    AddedToken("<extra>", normalized=False)])
    tok.save(str(out / "tokenizer.json"))
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.update(additional_special_tokens=["<|im_start|>"], add_prefix_space=False)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def test_spm_tokenizer_json_without_tokenizer_model_is_the_converters(tiny_model, tmp_path: Path) -> None:
    """A Llama checkpoint with tokenizer.json only: the converter reads it as a SentencePiece vocabulary (pieces as
    stored, scores -1000, byte/control/user-defined types, added tokens after the model's); tfb convert writes the
    same file, and the directory's tokenizer gives the ids the converted file's gives."""
    import tfb

    directory = spm_json_checkpoint(tiny_model("llama", "f32")[1].parent / "hf", tmp_path / "c")
    theirs = reference_file(directory, "f32", tmp_path / "theirs.gguf")
    with GGUFFile(theirs) as g:
        assert g.metadata["tokenizer.ggml.model"].value == "llama" and "tokenizer.ggml.merges" not in g.metadata
        meta = g.metadata
        types = dict(zip(meta["tokenizer.ggml.tokens"].value, meta["tokenizer.ggml.token_type"].value, strict=True))
        assert (types["<0x41>"], types["<s>"], types["<|im_start|>"], types["<extra>"]) == (6, 3, 3, 4)
        assert g.metadata["tokenizer.ggml.add_space_prefix"].value is False
    assert_same_gguf(convert(directory, tmp_path / "ours.gguf", "f32"), theirs)
    text = "the quick brown fox <|im_start|>jumps over the lazy dog <extra> ünï 12"
    ids = tfb.load_tokenizer(directory).encode(text)
    assert ids == tfb.load_tokenizer(theirs).encode(text) and len(ids) > 10


def test_gemma4_tokens_it_always_shows_are_user_defined(tiny_model, tmp_path: Path) -> None:
    """Gemma 4's converter types its channel and tool-call markers USER_DEFINED though they are special (the
    table's user_defined_tokens); other special tokens stay CONTROL."""
    import json
    import shutil

    from tokenizers import AddedToken, Tokenizer

    directory = shutil.copytree(tiny_model("gemma4", "f32")[1].parent / "hf", tmp_path / "c")
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<|channel>", "<turn|>")])
    tok.save(str(directory / "tokenizer.json"))
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config["additional_special_tokens"] = ["<|channel>", "<turn|>"]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    theirs = reference_file(directory, "f32", tmp_path / "theirs.gguf")
    with GGUFFile(theirs) as g:
        meta = g.metadata
        types = dict(zip(meta["tokenizer.ggml.tokens"].value, meta["tokenizer.ggml.token_type"].value, strict=True))
        assert (types["<|channel>"], types["<turn|>"]) == (4, 3)
    assert_same_gguf(convert(directory, tmp_path / "ours.gguf", "f32"), theirs)
