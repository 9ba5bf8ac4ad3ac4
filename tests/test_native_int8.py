"""Products with 8-bit activations (native.matmul(..., int8_activations=True)), llama.cpp's numerics for
quantized weights, against a numpy transcription of the rounding they document (runtime.c,
quantize_activations: per block d = max|x| / 127, q = rint(x * (127 / max|x|))) and a float64 product."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compare import assert_logits_match, ids_for
from test_native import needs_native, packed, torch_values, widths

import tfb
import tfb.quant.native as native
from tfb.gguf.ggml_types import GGML_TYPE_BY_NAME

INT8_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q2_K", "Q3_K", "IQ4_NL", "IQ4_XS",
              "MXFP4", "TQ2_0", "TQ1_0", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "Q1_0",
              "Q2_0", "NVFP4"]
# the weight formats llama.cpp multiplies with 32-value activation blocks (q8_0, q8_1); the others take 256 (q8_K)
BLOCK_32 = {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "MXFP4", "Q1_0", "Q2_0", "NVFP4"}
MULTI_ROWS = 2048  # int8.c, the most activation rows any multi-row kernel takes; more take the float32 products


@pytest.fixture(params=["avx512vnni", "avx512", "avx2", "portable"])
def int8_isa(request: pytest.FixtureRequest):
    """The kernels of each instruction set the CPU runs, in turn: conftest's `isa` and also the VNNI pass,
    which differs from the avx512 pass only in the 8-bit kernels (so the other tests leave it out)."""
    if not native.set_isa(request.param):
        pytest.skip(f"this CPU does not run {request.param}")
    yield request.param
    native.set_isa("")


def rounded(x: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row of x as 8-bit values q and per-block scales d (float32 arithmetic, as documented)."""
    blocks = x.astype(np.float32).reshape(x.shape[0], -1, block)
    top = np.abs(blocks).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        inverse = np.where(top > 0, np.float32(127) / top, np.float32(0)).astype(np.float32)
    q = np.rint(blocks * inverse).astype(np.int8)
    return q.reshape(x.shape), (top / np.float32(127)).astype(np.float32)[..., 0]


def expected(x: torch.Tensor, weight_values: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The product with the rounded activations, in float64, and sum |w| |x rounded| (its float32 scale)."""
    q, d = rounded(x.numpy(), block)
    x_rounded = torch.from_numpy(q.reshape(q.shape[0], -1, block).astype(np.float64) * d[..., None].astype(np.float64))
    x_rounded = x_rounded.reshape(x.shape)
    w = weight_values.double()
    return x_rounded @ w.T, x_rounded.abs() @ w.abs().T


def activation_block(name: str) -> int:
    return 32 if name in BLOCK_32 else 256


@needs_native
def test_int8_types() -> None:
    have = [name for name, t in GGML_TYPE_BY_NAME.items() if native.supports_int8(t)]
    assert sorted(have) == sorted(INT8_TYPES)


@needs_native
@pytest.mark.parametrize(("name", "kind"), [(n, "moderate") for n in INT8_TYPES]
                         + [(n, "quantized") for n in ("Q8_0", "Q4_0", "MXFP4", "TQ1_0", "TQ2_0")])
def test_matches_the_rounded_activations(int8_isa: str, name: str, kind: str) -> None:
    rng = np.random.default_rng(3)
    for cols in [*widths(name), 16384]:  # 16384: the rounded row no longer fits the kernel's stack buffer
        weight = packed(name, 37, cols, rng, kind)
        values = torch_values(weight)
        for rows in (1, 2, min(11, native.int8_rows(weight.ggml_type))):  # the multi-row kernels: 8 a pass
            x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows)) * 3
            x[0, :40] *= 50  # an outlier run: blocks differ in scale
            y = native.matmul(x, weight, int8_activations=True)
            assert y is not None and y.shape == (rows, 37)
            want, scale = expected(x, values, activation_block(name))
            error = ((y.double() - want).abs() / scale.clamp_min(1e-300)).max().item()
            assert error <= 1e-5, f"relative error {error:.2e}"


@needs_native
@pytest.mark.parametrize("name", INT8_TYPES)
def test_within_the_rounding_of_the_float_product(name: str) -> None:
    """|int8 result - exact product| <= sum over weights of |w| * (half a step of the activation's block)."""
    rng = np.random.default_rng(4)
    cols = widths(name)[1]
    weight = packed(name, 29, cols, rng, "moderate")
    values = torch_values(weight).double()
    x = torch.randn(1, cols, generator=torch.Generator().manual_seed(5))
    y = native.matmul(x, weight, int8_activations=True)
    assert y is not None
    block = activation_block(name)
    half_step = (x.abs().view(1, -1, block).amax(-1, keepdim=True) / 127 / 2).expand(1, -1, block).reshape(1, cols)
    bound = values.abs() @ half_step.double().T
    exact = values @ x.double().T
    assert ((y.double().T - exact).abs() <= bound * 1.001 + 1e-6).all()
    assert not torch.equal(y, native.matmul(x, weight))  # it is rounded: not the float32 path in disguise


@needs_native
@pytest.mark.parametrize("name", INT8_TYPES)
def test_rows_together_equal_rows_alone(int8_isa: str, name: str) -> None:
    """Each activation row's result is bit for bit the one it gets alone, however many rows come with it
    (the multi-row kernels decode a weight block once for several rows); the x86 passes (VNNI's dot
    product instructions or not) give the same bits."""
    rng = np.random.default_rng(9)
    cols = widths(name)[1]
    weight = packed(name, 45, cols, rng, "moderate")  # 45: not a multiple of any tile or thread split
    most = native.int8_rows(weight.ggml_type)
    assert most >= 2
    # up to 70 rows: more than one call of a multi-row kernel (64 rows a call), tiles of weight rows
    x = torch.randn(min(most, 70), cols, generator=torch.Generator().manual_seed(10))
    together = native.matmul(x, weight, int8_activations=True)
    alone = torch.cat([native.matmul(x[m:m + 1], weight, int8_activations=True) for m in range(len(x))])
    assert torch.equal(together, alone)
    for m in (3, 4, 5, 8, 9, 21):
        if m < len(x):
            assert torch.equal(native.matmul(x[:m], weight, int8_activations=True), alone[:m])
    if int8_isa != "portable":
        assert native.set_isa("avx2")
        assert torch.equal(native.matmul(x[:2], weight, int8_activations=True), together[:2])
    if most < MULTI_ROWS:  # past the kernel's rows: the float32 products
        more = torch.randn(most + 1, cols, generator=torch.Generator().manual_seed(11))
        assert torch.equal(native.matmul(more, weight, int8_activations=True), native.matmul(more, weight))


@needs_native
@pytest.mark.parametrize("name", ["Q4_K", "Q5_K", "Q6_K"])
def test_prompt_rows_equal_rows_alone(int8_isa: str, name: str) -> None:
    """A prompt's many rows (the k-quants' panel products, int8.c gemm_k, take 8 or 16 rows and more): each row
    gets the bits it gets alone, whatever the row count, with weight rows that fill no panel (101 = 3 * 32 + 5
    = 2 * 48 + 5) split between threads; the x86 passes give the same bits; and the products are those of the
    rounded activations."""
    rng = np.random.default_rng(12)
    cols = widths(name)[1]
    weight = packed(name, 101, cols, rng, "moderate")
    most = min(300, native.int8_rows(weight.ggml_type))
    x = torch.randn(most, cols, generator=torch.Generator().manual_seed(13)) * 3
    x[1, :40] *= 50  # an outlier run: blocks differ in scale
    alone = torch.cat([native.matmul(x[m:m + 1], weight, int8_activations=True) for m in range(most)])
    for first, count in ((0, most), (0, 7), (0, 8), (3, 15), (0, 16), (1, 17), (2, 63), (0, 64), (9, 65)):
        if first + count <= most:
            together = native.matmul(x[first:first + count], weight, int8_activations=True)
            assert torch.equal(together, alone[first:first + count]), (first, count)
    want, scale = expected(x, torch_values(weight), 256)
    assert ((alone.double() - want).abs() / scale.clamp_min(1e-300)).max().item() <= 1e-5
    if int8_isa != "portable":
        assert native.set_isa("avx2")
        assert torch.equal(native.matmul(x[:16], weight, int8_activations=True), alone[:16])


@needs_native
@pytest.mark.parametrize("name", ["Q8_0", "Q6_K"])
def test_float_path_where_int8_does_not_apply(name: str) -> None:
    """Rows holding a NaN or an infinity take the float32 products exactly, the other rows of the same call
    their 8-bit products; so do more rows than the 8-bit kernels take (a long prompt) all of them."""
    rng = np.random.default_rng(6)
    cols = widths(name)[0]
    weight = packed(name, 19, cols, rng, "moderate")
    x = torch.randn(5, cols, generator=torch.Generator().manual_seed(7))
    alone = torch.cat([native.matmul(x[m:m + 1], weight, int8_activations=True) for m in range(5)])
    for bad in (float("nan"), float("inf")):
        x1 = x.clone()
        x1[2, 3] = bad
        y = native.matmul(x1, weight, int8_activations=True)
        assert torch.equal(y[2].isnan(), native.matmul(x1[2:3], weight)[0].isnan())
        assert not torch.isfinite(y[2]).all()
        assert torch.equal(y[[0, 1, 3, 4]], alone[[0, 1, 3, 4]])
    many = torch.randn(MULTI_ROWS + 1, cols, generator=torch.Generator().manual_seed(8))
    assert torch.equal(native.matmul(many, weight, int8_activations=True), native.matmul(many, weight))


@needs_native
def test_zero_blocks_and_types_without_int8() -> None:
    rng = np.random.default_rng(8)
    weight = packed("Q4_K", 8, 512, rng, "moderate")
    x = torch.zeros(1, 512)
    x[0, 300] = 2.0  # the first block is all zero
    want, _ = expected(x, torch_values(weight), 256)
    assert torch.allclose(native.matmul(x, weight, int8_activations=True).double(), want, rtol=1e-5, atol=1e-6)
    other = packed("F16", 8, 512, rng, "moderate")  # no int8 products: the float32 path, whatever was asked
    x = torch.randn(1, 512)
    assert torch.equal(native.matmul(x, other, int8_activations=True), native.matmul(x, other))


@needs_native
@pytest.mark.parametrize(("family", "outtype"), [("qwen3", "q8_0"), ("llama", "q4_0"), ("qwen3moe", "q4_0"),
                                                 ("llama", "q4_1"), ("llama", "q5_0"), ("llama", "q5_1"),
                                                 ("llama", "mxfp4"), ("llama_wide", "q2_k")])
def test_a_model_with_int8_activations(tiny_model, family: str, outtype: str) -> None:
    """Decoding-step logits stay near transformers' (rounding activations to 8 bits moves them by a few
    hundredths of the largest logit at most: 3 %, or 5 % where one scale serves 256 activations, a coarser step,
    in a model four times as wide; Q4_K and IQ4_XS measured 3-4 % there); the option can be turned off again,
    back to the exact path."""
    reference, path = tiny_model(family, outtype)
    exact, fast = tfb.load(path), tfb.load(path, int8_activations=True)
    for batch in (1, 2, 5):  # one, two and five rows: the single- and multi-row products
        ids = ids_for(exact.config.vocab_size, batch, 1)
        with torch.no_grad():
            want, got, plain = reference(ids).logits, fast(ids), exact(ids)
        assert_logits_match(plain, want)
        scale = want.abs().max().item()
        assert (got - want).abs().max().item() <= (3e-2 if activation_block(outtype.upper()) == 32 else 5e-2) * scale
        if batch <= 2:  # more rows may take the float32 products (native.int8_rows)
            assert not torch.equal(got, plain)
    fast.use_int8_activations(False)
    with torch.no_grad():
        assert torch.equal(fast(ids), plain)


@needs_native
@pytest.mark.parametrize(("family", "outtype", "per_call"), [("llama", "q4_0", 2), ("qwen3", "q8_0", 2),
                                                             ("qwen3", "q8_0", 1)])
def test_top1_and_perplexity_against_llama_cpp(tiny_model, family: str, outtype: str, per_call: int) -> None:
    """On the tests' English text, tfb with 8-bit activations (decoding two tokens a call, so that every
    product takes the 8-bit path, or one: the planned native step) picks llama.cpp's top-1 token at >= 95% of
    the positions, and its perplexity is within 2% of llama.cpp's, which rounds the activations to 8 bits for
    these weights too."""
    import math
    from pathlib import Path

    from llama_reference import llama_cpp_logits

    _, path = tiny_model(family, outtype)
    text = (Path(__file__).resolve().parent / "data" / "real_text.txt").read_text(encoding="utf-8")
    ids = torch.tensor([tfb.load_tokenizer(path).encode(text)[:200]])
    model = tfb.load(path, int8_activations=True)
    cache = model.new_cache()
    with torch.no_grad():
        ours = torch.cat([model(ids[:, t:t + per_call], cache) for t in range(0, ids.shape[1], per_call)], dim=1)
    assert model.native_step_state == ("planned" if per_call == 1 else "unplanned")
    theirs = llama_cpp_logits(path, ids)

    def perplexity(logits: torch.Tensor) -> float:
        return math.exp(torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item())

    agreement = (ours.argmax(-1) == theirs.argmax(-1)).double().mean().item()
    assert agreement >= 0.95, f"top-1 agreement {agreement:.3f}"
    assert abs(perplexity(ours) / perplexity(theirs) - 1) <= 0.02
    with torch.no_grad():
        exact = tfb.load(path)(ids)
    assert not torch.equal(ours, exact)  # the 8-bit path indeed
