"""LFM2 and LFM2-MoE (the `short_conv` mixer kind beside attention): tiny random Lfm2ForCausalLM and
Lfm2MoeForCausalLM models through llama.cpp's converter against transformers' float32 logits, and against
llama.cpp's own (also with the sliding window llama.cpp applies when the file gives one, which transformers'
Lfm2 has not); the conv window as the layer's state (incremental decoding, generation, a session going back
to a snapshot); quantized files; a kernel of 0 refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from compare import assert_greedy_equals_transformers, assert_logits_match, compare, ids_for
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from llama_reference import llama_cpp_logits

import tfb
from tfb.authoring.check import check
from tfb.errors import ConfigError
from tfb.gguf.reader import GGUFFile
from tfb.nn.mixers.short_conv import ConvWindow, ShortConv
from tfb.text.generate import Session, generate_ids
from tfb.text.sampling import GREEDY

SHAPES = [(1, 1), (2, 1), (2, 40)]
KINDS = ["ShortConv", "ShortConv", "Attention", "ShortConv"]  # the tiny model's layer_types
FAMILIES = ["lfm2", "lfm2moe"]


def _max_diff(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return (ours - reference).abs().max().item() / reference.abs().max().item()


def test_layers_come_from_the_file(tiny_model) -> None:
    """Conv layers where the file's head_count_kv is 0; their kernel and weights as the file has them."""
    reference, path = tiny_model("lfm2", "f32")
    model = tfb.load(path)
    assert [type(b.mixer).__name__ for b in model.blocks] == KINDS
    assert model.config.per_layer["n_kv_heads"] == (0, 0, 2, 0)
    conv = model.blocks[0].mixer
    assert isinstance(conv, ShortConv) and conv.kernel == 3
    torch.testing.assert_close(conv.weight, reference.model.layers[0].conv.conv.weight, rtol=0, atol=0)
    assert model.blocks[2].mixer.opts.qk_norm == "rmsnorm"
    report = check(path)  # `tfb check`: every tensor of the file read, by the slots of each layer's kind
    assert report.ok and report.tensors_checked == 38, "\n".join(report.lines())


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(tiny_model, family: str) -> None:
    reference, path = tiny_model(family, "f32")
    compare(tfb.load(path), reference, SHAPES)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("outtype", ["q8_0", "q4_0"])
def test_quantized_files(tiny_model, family: str, outtype: str) -> None:
    """The projections quantized, the conv kernels and norms F32 (the converter's and llama-quantize's rule)."""
    reference, path = tiny_model(family, outtype)
    with GGUFFile(path) as gguf:
        types = {name: info.ggml_type.name for name, info in gguf.tensors.items()}
    assert types["blk.0.shortconv.conv.weight"] == "F32" and types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.0.shortconv.in_proj.weight"] == outtype.upper()
    assert types["blk.3.shortconv.out_proj.weight"] == outtype.upper()
    compare(tfb.load(path), reference, SHAPES)


@pytest.mark.parametrize("family", FAMILIES)
def test_incremental_decoding_gives_the_full_forward_logits(tiny_model, family: str) -> None:
    """Chunked prompts (a chunk shorter than the kernel too) and one token at a time."""
    _, path = tiny_model(family, "f32")
    model = tfb.load(path)
    ids = torch.randint(0, model.config.vocab_size, (2, 45), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids)
        for cuts in (((0, 20), (20, 21), (21, 22), (22, 33), (33, 45)), tuple((i, i + 1) for i in range(45))):
            cache = model.new_cache()
            pieces = torch.cat([model(ids[:, a:b], cache) for a, b in cuts], dim=1)
            assert _max_diff(pieces, full) < 1e-4
            assert cache.length == 45
    window = cache.layers[0]
    assert isinstance(window, ConvWindow) and window.window is not None
    assert window.window.shape == (2, 64, 2) and window.window.dtype == torch.float32  # L - 1, whatever the length
    assert not cache.rewindable and not cache.truncate(10)


def test_the_state_is_float32_in_a_bfloat16_model(tiny_model) -> None:
    _, path = tiny_model("lfm2", "f32")
    model = tfb.load(path, dtype=torch.bfloat16, cache_dtype=torch.float16)
    ids = ids_for(model.config.vocab_size, 1, 9)
    cache = model.new_cache()
    with torch.no_grad():
        steps = torch.cat([model(ids[:, :5], cache), model(ids[:, 5:], cache)], dim=1)
        full = model(ids)
    assert cache.layers[1].window.dtype == torch.float32
    assert _max_diff(steps, full) < 2e-2


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_equals_transformers_generate(tiny_model, family: str) -> None:
    reference, path = tiny_model(family, "f32")
    model = tfb.load(path)
    assert_greedy_equals_transformers(model, reference, 12)


def test_a_session_goes_back_to_a_snapshot_for_an_edited_turn(tiny_model) -> None:
    """Turn 1, turn 2 extending it, then turn 2 edited: the session restores the conv windows saved after
    turn 1 (no truncation, no start from scratch) and gives a fresh session's logits and tokens."""
    _, path = tiny_model("lfm2", "f32")
    model = tfb.load(path)
    vocab = model.config.vocab_size
    first = ids_for(vocab, 1, 7)[0].tolist()
    session = Session(model.new_cache())
    reply = list(generate_ids(model, first, max_tokens=4, session=session))
    second = [*first, *reply, 11, 12, 13]
    list(generate_ids(model, second, max_tokens=4, session=session))
    edited = [*first, *reply, 21, 22]
    shared = session.reuse(edited)
    assert shared == len(first) == session.cache.length  # the snapshot after turn 1's prompt
    with torch.no_grad():
        resumed = model(torch.tensor([edited[shared:]]), session.cache)
        fresh = model(torch.tensor([edited]))[:, shared:]
    assert _max_diff(resumed, fresh) < 1e-4
    again = Session(model.new_cache())
    list(generate_ids(model, [*first, *reply, 11], max_tokens=2, session=again))
    assert list(generate_ids(model, edited, max_tokens=6, session=again)) == \
        list(generate_ids(model, edited, max_tokens=6))


def _with_window(path: Path, out: Path, window: int) -> Path:
    """The file with lfm2.attention.sliding_window = `window` added (metadata and tensors copied as they are)."""
    reader = GGUFReader(path)
    writer = GGUFWriter(out, "lfm2")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        kind = GGUFValueType(field.types[0])
        sub = GGUFValueType(field.types[-1]) if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), kind, sub_type=sub)
    writer.add_uint32("lfm2.attention.sliding_window", window)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_shape=tuple(int(d) for d in reversed(t.shape)), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def test_lfm2moe_layers_come_from_the_file(tiny_model) -> None:
    """Conv and attention layers as the file's head_count_kv says; a dense feed-forward in the leading layer,
    experts after it; the logits equal llama.cpp's."""
    _, path = tiny_model("lfm2moe", "f32")
    model = tfb.load(path)
    assert [type(b.mixer).__name__ for b in model.blocks] == ["ShortConv", "Attention", "ShortConv", "ShortConv"]
    assert [type(b.ffn).__name__ for b in model.blocks] == ["MLP", "Experts", "Experts", "Experts"]
    assert model.config.expert_weights_norm and model.config.expert_gating_func == 2
    assert check(path).ok
    ids = ids_for(model.config.vocab_size, 2, 40)
    with torch.no_grad():
        assert_logits_match(model(ids), llama_cpp_logits(path, ids), rel=1e-5)


def test_logits_match_llama_cpp_with_and_without_a_window(tiny_model, tmp_path: Path) -> None:
    """llama.cpp's own logits on the file, and on it with a window of 8 < the 40 positions, which changes them."""
    _, path = tiny_model("lfm2", "f32")
    windowed = _with_window(path, tmp_path / "window.gguf", 8)
    ids = ids_for(tfb.load(path).config.vocab_size, 2, 40)
    results = []
    for file in (path, windowed):
        model = tfb.load(file)
        with torch.no_grad():
            ours = model(ids)
        reference = llama_cpp_logits(file, ids)
        assert_logits_match(ours, reference, rel=1e-5)
        results.append(ours)
    assert tfb.load(windowed).blocks[2].mixer.opts.window == 8
    assert _max_diff(results[0], results[1]) > 1e-2


def _with_kernel(path: Path, out: Path, kernel: int) -> Path:
    """The file with shortconv.l_cache (a uint32 after its key) set to `kernel`."""
    data = bytearray(path.read_bytes())
    key = b"lfm2.shortconv.l_cache"
    at = data.index(len(key).to_bytes(8, "little") + key) + 8 + len(key)
    assert int.from_bytes(data[at:at + 4], "little") == 4  # GGUF's uint32
    data[at + 4:at + 8] = kernel.to_bytes(4, "little")
    out.write_bytes(bytes(data))
    return out


def test_a_kernel_of_zero_is_refused_naming_the_key(tiny_model, tmp_path: Path) -> None:
    _, path = tiny_model("lfm2", "f32")
    refused = r"shortconv_l_cache` = 0 \(the file's shortconv\.l_cache\) must be at least 1.*in layer 0 \(short_conv\)"
    with pytest.raises(ConfigError, match=refused):
        tfb.load(_with_kernel(path, tmp_path / "k0.gguf", 0))
    # a kernel the tensors do not have: the tensor and both shapes named
    with pytest.raises(tfb.errors.WeightError, match=r"blk\.0\.shortconv\.conv\.weight.*\[64, 3\].*\[64, 4\]"):
        tfb.load(_with_kernel(path, tmp_path / "k4.gguf", 4))


def test_tfb_run_generates_on_a_hybrid_file(tiny_model) -> None:
    """`tfb run` end to end on the lfm2 file: the prompt and the text tfb.generate gives greedily."""
    import subprocess
    import sys

    _, path = tiny_model("lfm2", "f32")
    result = subprocess.run([sys.executable, "-m", "tfb.cli", "run", str(path), "-p", "hello world", "-n", "6",
                             "--temp", "0"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = "".join(tfb.generate(tfb.load(path), tfb.load_tokenizer(path), "hello world", max_tokens=6,
                                sampling=GREEDY))
    assert result.stdout.startswith("hello world" + text) and len(text) > 6


@pytest.mark.parametrize("kernel", [1, 2, 4])
def test_other_kernel_lengths_match_transformers_short_conv(kernel: int) -> None:
    """The kind on its own against transformers' Lfm2ShortConv for kernels other than the released 3 (1: no
    state at all), over a whole sequence and step by step."""
    from transformers import Lfm2Config
    from transformers.models.lfm2.modeling_lfm2 import Lfm2ShortConv

    from tfb.nn.cache import Step

    torch.manual_seed(kernel)
    reference = Lfm2ShortConv(Lfm2Config(hidden_size=16, conv_L_cache=kernel, num_hidden_layers=1), 0).eval()
    ours = ShortConv(16, kernel)
    ours.in_proj.set_weight("in", reference.in_proj.weight.detach())
    ours.out_proj.set_weight("out", reference.out_proj.weight.detach())
    ours.set_kernel("conv", reference.conv.weight.detach().squeeze(1))
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        expected = reference(x)
        full = ours(x, Step(torch.arange(9).expand(2, 9), 0), None)
        state = ours.new_state(None)
        steps = torch.cat([ours(x[:, a:b], Step(torch.arange(a, b).expand(2, b - a), a), state)
                           for a, b in ((0, 1), (1, 5), (5, 6), (6, 9))], dim=1)
    torch.testing.assert_close(full, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(steps, expected, rtol=0, atol=1e-5)
    assert state.window is not None and state.window.shape == (2, 16, kernel - 1)


def test_tfb_chat_on_a_hybrid_file_equals_recomputing_each_turn(tiny_model) -> None:
    """`tfb chat` keeps one Session across turns; on a file with recurrent layers the second turn starts from a
    snapshot of the state (it cannot truncate). Each reply equals greedy generation over the whole rendered
    conversation from an empty cache."""
    import subprocess
    import sys

    from tfb.cli.generate import CHATML, safe

    _, path = tiny_model("lfm2", "f32")
    result = subprocess.run([sys.executable, "-m", "tfb.cli", "chat", str(path), "-n", "5", "--temp", "0"],
                            input="hello\nand then?\n\n", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    model, tok = tfb.load(path), tfb.load_tokenizer(path)
    tok.chat_template = tok.chat_template or CHATML
    messages: list[dict[str, str]] = []
    expected = ""
    for line in ["hello", "and then?"]:
        messages.append({"role": "user", "content": line})
        ids = tok.encode_chat(messages, add_generation_prompt=True)
        reply = "".join(tfb.generate(model, tok, ids, max_tokens=5, sampling=GREEDY))
        expected += "> " + safe(reply) + "\n"
        messages.append({"role": "assistant", "content": reply})
    assert result.stdout == expected + "> "
