"""The native kernels (tfb.quant.native) against tfb's torch dequantizers, and the fallback without them.

Matmul results are compared with a float64 product of the torch dequantizers' values: the native path
multiplies float32 weights by float32 activations with float32 sums, so it agrees to float rounding
(relative to sum |x| |w|). Dequantized values must be bit-identical. Every instruction set the CPU runs
is exercised (AVX-512, AVX2, portable C), not only the one the library would pick.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_quant_dequant import EXTREME_F16, F16_FIELDS, MODEL_TYPES, quantized_blocks, random_blocks, set_f16

import tfb.quant.native as native
from tfb.gguf.ggml_types import GGML_TYPE_BY_NAME
from tfb.nn.ffn.routed import ExpertLinear
from tfb.nn.linear import Embedding, Linear
from tfb.quant import PackedTensor
from tfb.quant.blocks import DEQUANTIZERS
from tfb.quant.grids import GRIDS, grid
from tfb.quant.native import tables

FUSED_TYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
               "IQ4_NL", "IQ4_XS", "MXFP4"]
# dequantizers only: their products go through the dequantize-and-tile path for every row count
DEQUANT_TYPES = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "TQ1_0", "TQ2_0", "NVFP4",
                 "Q1_0", "Q2_0"]
NATIVE_TYPES = FUSED_TYPES + DEQUANT_TYPES
ROOT = Path(__file__).resolve().parent.parent

QUANTIZABLE = [name for name in NATIVE_TYPES if quantized_blocks(name, np.random.default_rng(0)) is not None]
RANDOM_AND_QUANTIZED = [(n, "random") for n in NATIVE_TYPES] + [(n, "quantized") for n in QUANTIZABLE]
MODERATE_AND_QUANTIZED = [(n, "moderate") for n in NATIVE_TYPES] + [(n, "quantized") for n in QUANTIZABLE]

needs_native = pytest.mark.skipif(not native.available(), reason="native kernels unavailable (no C compiler?)")


def packed(name: str, rows: int, cols: int, rng: np.random.Generator, kind: str = "random") -> PackedTensor:
    """Blocks of random bytes ("random": any finite scale, however extreme; "moderate": scales near 0.01,
    so that products stay far from float32's range) or from gguf's quantizer ("quantized")."""
    gtype = GGML_TYPE_BY_NAME[name]
    n_blocks = rows * cols // gtype.block_size
    if kind == "quantized":
        made = quantized_blocks(name, rng)
        if made is None:
            pytest.skip(f"gguf cannot quantize {name}")
        raw = np.resize(made, (n_blocks, gtype.type_size))  # repeat the quantized blocks to fill the shape
    elif kind == "moderate" and name in ("F16", "BF16"):
        values = torch.from_numpy(rng.standard_normal(n_blocks).astype(np.float32))
        raw = values.to(torch.float16 if name == "F16" else torch.bfloat16).view(torch.uint8).numpy().reshape(-1, 2)
    else:
        raw = random_blocks(name, n_blocks, rng)
        if kind == "moderate" and (name in F16_FIELDS or name == "IQ1_M"):
            set_f16(raw, name, (rng.standard_normal(n_blocks) * 0.01).astype(np.float16).view(np.uint16))
        elif kind == "moderate" and name == "MXFP4":
            raw[:, 0] = rng.integers(118, 134, n_blocks)  # 2**-10 .. 2**5
    return PackedTensor(torch.from_numpy(np.ascontiguousarray(raw)).reshape(rows, -1), gtype, (rows, cols))


def widths(name: str) -> list[int]:
    block = GGML_TYPE_BY_NAME[name].block_size
    return [37, 300] if block == 1 else [block * (256 // block), block * (768 // block)]


def assert_close(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, rtol: float = 1e-5) -> None:
    """y against x @ w.T in float64, relative to sum |x| |w| (the scale of float32 rounding)."""
    expected = x.double() @ w.double().T
    scale = x.double().abs() @ w.double().abs().T
    error = ((y.double() - expected).abs() / scale.clamp_min(1e-300)).max().item()
    assert error <= rtol, f"relative error {error:.2e}"


@needs_native
@pytest.mark.parametrize("name", NATIVE_TYPES)
def test_supported(name: str) -> None:
    assert native.supports(GGML_TYPE_BY_NAME[name])


def test_native_types_are_every_model_type_but_f32() -> None:
    assert sorted(NATIVE_TYPES) == sorted(set(MODEL_TYPES) - {"F32"})


def torch_values(weight: PackedTensor) -> torch.Tensor:
    """The weight's values by the torch dequantizers: the definition the native kernels must equal."""
    blocks = weight.raw.reshape(-1, weight.ggml_type.type_size)
    return DEQUANTIZERS[weight.ggml_type.name](blocks).reshape(weight.shape)


def assert_bit_exact(weight: PackedTensor) -> None:
    got = torch.full(weight.shape, float("nan"))
    assert native.dequantize_into(weight, got)
    assert torch.equal(got.view(torch.int32), torch_values(weight).view(torch.int32))
    # PackedTensor's own dequantize goes the native way and gives the same bits, in the dtype asked for
    assert torch.equal(weight.dequantize().view(torch.int32), got.view(torch.int32))
    assert torch.equal(weight.dequantize(torch.bfloat16), got.to(torch.bfloat16))


@needs_native
@pytest.mark.parametrize(("name", "kind"), RANDOM_AND_QUANTIZED)
def test_dequantize_is_bit_exact(isa: str, name: str, kind: str) -> None:
    assert_bit_exact(packed(name, 37, widths(name)[1], np.random.default_rng(1), kind))


@needs_native
@pytest.mark.parametrize("name", [n for n in NATIVE_TYPES if n in F16_FIELDS or n == "IQ1_M"])
def test_dequantize_extreme_scales_is_bit_exact(isa: str, name: str) -> None:
    """Largest, subnormal, zero and negative zero scales, one per row."""
    weight = packed(name, len(EXTREME_F16), widths(name)[0], np.random.default_rng(9))
    raw = weight.raw.numpy().reshape(-1, GGML_TYPE_BY_NAME[name].type_size)
    set_f16(raw, name, np.repeat(np.array(EXTREME_F16, dtype=np.uint16), len(raw) // len(EXTREME_F16)))
    assert_bit_exact(weight)


@needs_native
def test_dequantize_every_nvfp4_scale_is_bit_exact(isa: str) -> None:
    weight = packed("NVFP4", 4, 64 * 16, np.random.default_rng(10))  # 64 blocks, 256 scales
    weight.raw.view(-1, 36)[:, :4] = torch.arange(256, dtype=torch.uint8).view(-1, 4)  # every UE4M3 byte
    assert_bit_exact(weight)


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_generated_grids_hold_the_python_codebooks(name: str) -> None:
    """grids.h rows (a byte per element) decode to tfb.quant.grids' values."""
    width = grid(name).shape[1]
    packed_rows = b"".join(row.to_bytes(width, "little") for row in tables.row_values(name))
    elements = torch.frombuffer(bytearray(packed_rows), dtype=torch.int8).view(-1, width)
    assert torch.equal(elements.float(), grid(name))


@needs_native
@pytest.mark.parametrize(("name", "kind"), MODERATE_AND_QUANTIZED)
def test_matmul_matches_float64(isa: str, name: str, kind: str) -> None:
    rng = np.random.default_rng(2)
    for cols in widths(name):
        weight = packed(name, 37, cols, rng, kind)
        values = torch_values(weight)
        for rows in (1, 2, 7, 16, 17, 64):  # one row; few rows (16 and below); many
            x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows))
            y = native.matmul(x, weight)
            assert y is not None and y.shape == (rows, 37)
            assert_close(y, x, values)


@pytest.fixture(params=["openmp", "pool"])
def threading(request: pytest.FixtureRequest):
    """The native kernels on torch's OpenMP threads, then on the library's own pool."""
    if native.use_openmp(request.param == "openmp") != (request.param == "openmp"):
        pytest.skip("torch does not run on an OpenMP runtime here")
    yield request.param
    native.use_openmp(True)


@needs_native
@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("name", ["Q8_0", "Q4_K", "Q6_K", "F16"])
def test_threads_give_identical_results(threading: str, name: str, rows: int) -> None:
    """Each output is one thread's work in a fixed order, so the split must not change a single bit."""
    weight = packed(name, 1001, 512, np.random.default_rng(3), "moderate")  # large enough to be split
    x = torch.randn(rows, 512)
    before = native.threads()
    try:
        native.set_threads(1)
        alone = native.matmul(x, weight)
        assert native.set_threads(3) == 3
        shared = [native.matmul(x, weight) for _ in range(20)]
        values = torch.empty(1001, 512)
        assert native.dequantize_into(weight, values)
    finally:
        native.set_threads(before)
    assert alone is not None and all(y is not None and torch.equal(alone, y) for y in shared)
    assert torch.equal(values, torch_values(weight))


@needs_native
def test_borrows_torchs_openmp_threads_by_default() -> None:
    if "parallel backend: OpenMP" in torch.__config__.parallel_info() and sys.platform == "linux":
        assert native.uses_openmp()


def _matmul_in_child(queue, x: torch.Tensor, weight: PackedTensor) -> None:
    y = native.matmul(x, weight)
    queue.put(None if y is None else y.tolist())  # plain floats: a tensor would travel by shared memory


@needs_native
@pytest.mark.skipif(sys.platform != "linux", reason="fork")
def test_forked_child_computes_with_its_own_threads() -> None:
    """An OpenMP runtime used before a fork hangs in the child; the library's pool starts afresh there."""
    import multiprocessing

    weight = packed("Q4_K", 1001, 512, np.random.default_rng(8), "moderate")
    x = torch.randn(1, 512)
    expected = native.matmul(x, weight)  # the parent has used its threads
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_matmul_in_child, args=(queue, x, weight))
    child.start()
    child.join(60)
    if child.exitcode is None:
        child.kill()
    assert child.exitcode == 0
    assert expected is not None and queue.get(timeout=10) == expected.tolist()


@needs_native
def test_no_rows_and_unsupported_types() -> None:
    weight = packed("Q8_0", 8, 64, np.random.default_rng(4))
    y = native.matmul(torch.empty(0, 64), weight)
    assert y is not None and y.shape == (0, 8)
    odd = PackedTensor(torch.zeros(2, 256 * 4, dtype=torch.uint8), GGML_TYPE_BY_NAME["F32"], (2, 256))
    assert not native.supports(odd.ggml_type)
    assert native.matmul(torch.randn(1, 256), odd) is None and not native.dequantize_into(odd, torch.empty(2, 256))


# ------------------------------------------------------------------------- the modules, native or not


def without_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "matmul", lambda x, weight: None)
    monkeypatch.setattr(native, "dequantize_into", lambda weight, out: False)


@pytest.mark.parametrize("name", ["Q4_K", "IQ2_XS", "BF16"])
def test_packed_dequantize_same_with_and_without_native(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """PackedTensor.dequantize, for a 3-D (expert) weight and a slice of its rows, native or torch alone."""
    weight = packed(name, 3 * 8, 512, np.random.default_rng(6))
    experts = PackedTensor(weight.raw.reshape(3, 8, -1), weight.ggml_type, (3, 8, 512))
    results = []
    for setting in ("native", "torch"):
        if setting == "torch":
            without_native(monkeypatch)
        results.append([experts.dequantize(), experts[1:3].dequantize(), experts[2][5:].dequantize(torch.float16)])
    want = torch_values(experts)
    for values in results:
        assert [v.shape for v in values] == [(3, 8, 512), (2, 8, 512), (3, 512)]
        assert torch.equal(values[0], want) and torch.equal(values[1], want[1:3])
        assert torch.equal(values[2], want[2][5:].half())


@pytest.mark.parametrize("name", ["Q4_K", "Q8_0", "BF16", "IQ2_XS"])
def test_linear_same_with_and_without_native(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Native kernels (one row: fused; more: C tiles), torch's GEMM on natively expanded weights, torch
    alone; bfloat16 activations are computed in float32 by all three."""
    weight = packed(name, 45, 512, np.random.default_rng(5), "moderate")
    layer, bias = Linear(512, 45), torch.randn(45)
    layer.set_weight("w", weight)
    layer.set_bias("b", bias)
    inputs = [torch.randn(1, 512), torch.randn(3, 2, 512), torch.randn(2, 20, 512)]
    half = torch.randn(2, 512).bfloat16()
    results = []
    for setting in ("native", "expanded natively", "torch"):
        if setting == "expanded natively":
            monkeypatch.setattr(native, "NATIVE_MAX_ROWS", 0)
        if setting == "torch":
            without_native(monkeypatch)
        layer.bias = bias
        ys = [layer(x) for x in inputs]
        layer.bias = None
        results.append((ys, layer(half)))
    values = torch_values(weight)
    exact_half = (half.float() @ values.T).bfloat16()
    for ys, y_half in results:
        for x, y in zip(inputs, ys, strict=True):
            assert y.shape == (*x.shape[:-1], 45)
            assert_close(y.reshape(-1, 45) - bias, x.reshape(-1, 512), values)
        assert y_half.dtype == torch.bfloat16
        torch.testing.assert_close(y_half, exact_half, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("name", ["Q6_K", "MXFP4"])
def test_expert_linear_same_with_and_without_native(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    gtype = GGML_TYPE_BY_NAME[name]
    weight = packed(name, 3 * 24, 256, np.random.default_rng(6), "moderate")
    weight = PackedTensor(weight.raw, gtype, (3, 24, 256))
    experts = ExpertLinear(3, 256, 24)
    experts.set_weight("w", weight)
    x = torch.randn(5, 256)
    fast = [experts(e, x) for e in range(3)]
    without_native(monkeypatch)
    slow = [experts(e, x) for e in range(3)]
    for e in range(3):
        assert_close(fast[e], x, torch_values(weight[e]))
        assert_close(slow[e], x, torch_values(weight[e]))


@needs_native
@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("name", [*FUSED_TYPES, "IQ2_XS"])
def test_expert_pairs_equal_one_expert_at_a_time(isa: str, name: str, int8: bool) -> None:
    """A decoding step's products with its chosen experts in one call (ExpertLinear.pairs: the activation row
    each pair uses, its expert, the expert's bias) give the bits of one product per expert, on every
    instruction set, with 8-bit activations or not; types without a fused product (IQ2_XS) take that path."""
    gtype = GGML_TYPE_BY_NAME[name]
    cols = widths(name)[0]
    weight = packed(name, 5 * 24, cols, np.random.default_rng(11), "moderate")
    experts = ExpertLinear(5, cols, 24)
    experts.set_weight("w", PackedTensor(weight.raw, gtype, (5, 24, cols)))
    experts.set_bias("b", torch.randn(5, 24))
    experts.use_int8_activations(int8)
    ids = torch.tensor([3, 0, 4, 3, 1, 2])  # two tokens, three experts each; expert 3 twice
    x = torch.randn(6, cols)
    for share, rows in ((3, x[:2]), (1, x)):
        got = experts.pairs(ids, rows, share)
        one = torch.cat([experts(e, rows[p // share, None]) for p, e in enumerate(ids.tolist())])
        assert got.shape == (6, 24) and torch.equal(got, one)
    assert (experts.prepared_pairs is not None) == (name in FUSED_TYPES)
    before = native.threads()
    try:
        native.set_threads(3)
        assert torch.equal(experts.pairs(ids, x, 1), got)  # each row one thread's work, in a fixed order
    finally:
        native.set_threads(before)
    experts.use_int8_activations(False)
    assert torch.equal(experts.pairs(ids, x, 1), got) != (int8 and native.supports_int8(gtype))


@needs_native
def test_expert_pairs_refuse_an_expert_out_of_range() -> None:
    weight = packed("Q8_0", 2 * 8, 64, np.random.default_rng(12))
    prepared = native.prepare_experts(PackedTensor(weight.raw, weight.ggml_type, (2, 8, 64)))
    assert prepared is not None
    with pytest.raises(RuntimeError, match="status -2"):
        prepared(torch.tensor([0, 2]), torch.randn(1, 64), 2)


@pytest.mark.parametrize("name", ["Q4_K", "F16", "IQ2_XS"])
def test_embedding_same_with_and_without_native(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    table = packed(name, 50, 256, np.random.default_rng(7))
    embedding = Embedding(50, 256)
    embedding.set_weight("t", table)
    ids = torch.tensor([[3, 49, 3, 0], [7, 7, 1, 2]])
    fast = embedding(ids, torch.float32)
    without_native(monkeypatch)
    slow = embedding(ids, torch.float32)
    assert torch.equal(fast, slow) and torch.equal(fast, torch_values(table)[ids])


# --------------------------------------------------------------------------------------- attention

def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, softcap: float,
                        window: int, sinks: torch.Tensor | None) -> torch.Tensor:
    """The newest query's attention, in float64, written out: q [b, heads, 1, d], k/v [b, kv, s, *]."""
    q, k, v = q.double(), k.double(), v.double()
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    s = k.shape[2]
    if window:
        scores[..., : max(0, s - window)] = -torch.inf
    if sinks is not None:
        sink = sinks.double().view(1, -1, 1, 1).expand(*scores.shape[:3], 1)
        return torch.softmax(torch.cat((scores, sink), dim=-1), dim=-1)[..., :-1] @ v
    return torch.softmax(scores, dim=-1) @ v


@needs_native
@pytest.mark.parametrize(("groups", "window", "softcap", "sinks", "keys"),
                         [(2, 0, 0.0, False, 37), (1, 0, 0.0, False, 1), (4, 5, 0.0, False, 37),
                          (2, 0, 20.0, False, 300), (2, 8, 0.0, True, 37), (1, 0, 0.0, True, 5000),
                          (3, 0, 0.0, False, 50)])
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("d", "dv"), [(40, 24), (128, 200)])  # value widths that take every column path
def test_decode_attention(isa: str, groups: int, window: int, softcap: float, sinks: bool, keys: int,
                          cache_dtype: torch.dtype, d: int, dv: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoding step's attention by the native kernel, on views of a larger cache (float32 or float16)
    as the KV cache hands them over, against a float64 reference and against the torch path."""
    from tfb.nn.kinds import BuildContext
    from tfb.nn.mixers.attention import Attention, AttentionOptions, AttentionShape
    from tfb.nn.rotary import RopeParams, Rotary

    torch.manual_seed(keys + groups)
    kv = 3
    shape = AttentionShape(hidden=8, n_heads=kv * groups, n_kv_heads=kv, head_dim=d, value_dim=dv)
    opts = AttentionOptions(fused_qkv=False, qk_norm=None, qk_norm_over="head", norm_eps=1e-6, scale=d ** -0.5,
                            softcap=softcap, clamp=0.0, window=window, use_rope=False, sinks=sinks,
                            temperature_scale=0.0, temperature_length=1)
    rotary = Rotary(RopeParams(d, "half", 10000.0, 1.0, 0.0, 1.0, 32.0, 1.0, 4096))
    attn = Attention(shape, opts, BuildContext("rmsnorm", 0.0, 0), rotary)
    if sinks:
        attn.set_sinks("sinks", torch.randn(kv * groups))
    q = torch.randn(2, kv * groups, 1, d) * 3
    k_cache, v_cache = torch.randn(2, kv, keys + 7, d).to(cache_dtype), torch.randn(2, kv, keys + 7, dv).to(cache_dtype)
    k, v = k_cache[:, :, :keys], v_cache[:, :, :keys]
    positions = torch.full((2, 1), keys - 1)
    calls = []
    monkeypatch.setattr(native, "attend", lambda *a, **kw: calls.append(1) or native.ops.attend(*a, **kw))
    fast = attn.attend(q, k, v, positions)
    assert calls, "the native kernel was not used"
    monkeypatch.setattr(native, "attend", lambda *a, **kw: None)
    slow = attn.attend(q, k, v, positions)
    expected = reference_attention(q, k, v, opts.scale, softcap, window, attn.sinks)
    assert fast.shape == slow.shape == (2, kv * groups, 1, dv)
    torch.testing.assert_close(fast.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(slow.double(), expected, rtol=1e-5, atol=1e-5)


@needs_native
@pytest.mark.parametrize(("rows", "n", "weighted"), [(1, 1024, True), (16, 128, True), (3, 7, True), (4, 300, False)])
def test_rms_norm(isa: str, rows: int, n: int, weighted: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The native RMS norm inside tfb's Norm against a float64 one written out, and the torch path."""
    from tfb.nn.norm import Norm

    torch.manual_seed(n)
    norm = Norm("rmsnorm", n, 1e-5)
    if weighted:
        norm.set_weight("w", torch.randn(n))
    x = torch.randn(2, rows, n) * 5
    calls = []
    monkeypatch.setattr(native, "rms_norm", lambda *a: calls.append(1) or native.ops.rms_norm(*a))
    fast = norm(x)
    assert calls, "the native kernel was not used"
    monkeypatch.setattr(native, "rms_norm", lambda *a: None)
    slow = norm(x)
    x64 = x.double()
    expected = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5)
    if weighted:
        expected = expected * norm.weight.double()
    torch.testing.assert_close(fast.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(slow.double(), expected, rtol=1e-5, atol=1e-5)


@needs_native
@pytest.mark.parametrize(("pairing", "dims"), [("half", 16), ("adjacent", 16), ("half", 10), ("adjacent", 6)])
def test_rope_equals_the_torch_rotation(pairing: str, dims: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The native rope rotates queries and keys to exactly the torch path's values (same float32 steps),
    partial rotations included, for strided inputs (views of a fused projection) too."""
    from tfb.nn.rotary import RopeParams, Rotary

    rotary = Rotary(RopeParams(dims, pairing, 10000.0, 1.0, 0.0, 1.0, 32.0, 1.0, 4096))
    torch.manual_seed(dims)
    fused = torch.randn(2, 3, 7 * 16) * 4  # [batch, seq, (4 query + 3 key) heads x 16]
    q, k = fused[..., :64].view(2, 3, 4, 16), fused[..., 64:].view(2, 3, 3, 16)
    cos, sin = rotary.angles(torch.arange(5, 8)[None].expand(2, 3))
    calls = []
    monkeypatch.setattr(native, "rope", lambda *a: calls.append(1) or native.ops.rope(*a))
    fast = rotary.rotate_pair(q, k, cos, sin)
    assert calls, "the native kernel was not used"
    monkeypatch.setattr(native, "rope", lambda *a: None)
    slow = rotary.rotate_pair(q, k, cos, sin)
    for f, s, x in zip(fast, slow, (q, k), strict=True):
        assert torch.equal(f, s) and torch.equal(f, rotary.rotate(x, cos, sin))


# --------------------------------------------------------------------------------------- fallbacks

FALLBACK_SCRIPT = textwrap.dedent("""
    import warnings
    import numpy as np, torch
    from tfb.gguf.ggml_types import GGML_TYPE_BY_NAME
    from tfb.nn.linear import Linear
    from tfb.quant import PackedTensor
    from tfb.quant.blocks import DEQUANTIZERS
    import tfb.quant.native as native

    gtype = GGML_TYPE_BY_NAME["Q8_0"]
    raw = np.random.default_rng(0).integers(0, 256, size=(16, 8 * 34), dtype=np.uint8)
    raw.reshape(-1, 34)[:, 1] &= 0x3F  # small finite scales
    weight = PackedTensor(torch.from_numpy(raw), gtype, (16, 256))
    layer = Linear(256, 16)
    layer.set_weight("w", weight)
    x = torch.randn(1, 256)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = layer(x)
        y = layer(x)
    want = x @ DEQUANTIZERS["Q8_0"](weight.raw.reshape(-1, 34)).reshape(16, 256).T
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    print("available", native.available(), "warnings", len(caught), caught[0].message if caught else "")
""")


def run_fallback(env: dict[str, str], tmp_path: Path) -> str:
    full = {**os.environ, "PYTHONPATH": str(ROOT), "TFB_CACHE": str(tmp_path), **env}
    result = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], capture_output=True, text=True, env=full,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_fallback_when_turned_off(tmp_path: Path) -> None:
    out = run_fallback({"TFB_NATIVE": "0"}, tmp_path)
    assert "available False warnings 0" in out


def test_fallback_without_a_compiler(tmp_path: Path) -> None:
    out = run_fallback({"CC": str(tmp_path / "no-such-compiler")}, tmp_path)
    assert "available False warnings 1" in out and "no C compiler" in out
    assert not list(tmp_path.rglob("*.so"))


def test_fallback_when_the_build_fails(tmp_path: Path) -> None:
    failing = tmp_path / "failing-cc"
    failing.write_text("#!/bin/sh\necho 'cc: cannot compile today' >&2\nexit 1\n")
    failing.chmod(0o755)
    out = run_fallback({"CC": str(failing)}, tmp_path)
    assert "available False warnings 1" in out and "cannot compile today" in out


@needs_native
def test_concurrent_first_builds_share_one_library(tmp_path: Path) -> None:
    """Two processes building into an empty cache at once both load a library, and one file remains."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TFB_CACHE": str(tmp_path)}
    script = "import tfb.quant.native as n; print(n.available(), n.isa())"
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert all(out.startswith("True") for out, _ in outputs), outputs
    assert len(list((tmp_path / "native").glob("*.so"))) == 1
    assert not [p for p in (tmp_path / "native").iterdir() if p.name.startswith(".build-")]


def test_the_kernels_build_wherever_a_compiler_is() -> None:
    """Where the system has a C compiler the native kernels must build: otherwise every test marked
    `needs_native` would be skipped and a broken kernel source would go unnoticed."""
    import shutil

    from tfb.quant.native import library

    if shutil.which(library.compiler()) is None:
        pytest.skip("no C compiler on this machine")
    assert library.build().is_file()
    assert native.available()
