"""Each generic switch on its own, against a plain reference written here or transformers' own code."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from tfb.config import ModelConfig
from tfb.errors import WeightError
from tfb.nn.cache import SequenceState, Step
from tfb.nn.ffn.routed import Experts
from tfb.nn.kinds import BuildContext
from tfb.nn.mixers.attention import Attention, AttentionOptions, AttentionShape
from tfb.nn.mlp import MLP, Activation
from tfb.nn.norm import Norm
from tfb.nn.rotary import RopeParams, Rotary

GEN = torch.Generator().manual_seed(0)


def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN) * scale


def config(**overrides: object) -> ModelConfig:
    base = dict(architecture="x", vocab_size=10, hidden_size=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8,
                value_dim=8, intermediate_size=8, context_length=64, norm_eps=1e-6, attention_scale=8 ** -0.5,
                rope_dims=8, rope_original_context=64)
    return ModelConfig(**{**base, **overrides})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ norms


def test_layernorm_with_bias_and_rmsnorm_with_offset() -> None:
    x = randn(3, 16)
    w, b = randn(16), randn(16)
    ln = Norm("layernorm", 16, 1e-5)
    ln.set_weight("w", w)
    ln.set_bias("b", b)
    torch.testing.assert_close(ln(x), F.layer_norm(x, (16,), w, b, 1e-5))
    rms = Norm("rmsnorm", 16, 1e-6, weight_offset=1.0)
    rms.set_weight("w", w)
    torch.testing.assert_close(rms(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1.0 + w))


def test_norms_with_weights_of_their_own_per_head() -> None:
    """groups: one weight (and bias) row per vector of the next-to-last dimension, each head normalised alone."""
    gen = torch.Generator().manual_seed(1)  # not the module's generator: the tests below keep their data
    x, w, b = (torch.randn(*shape, generator=gen) for shape in ((2, 5, 4, 16), (4, 16), (4, 16)))
    ln = Norm("layernorm", 16, 1e-5, groups=4)
    ln.set_weight("w", w)
    ln.set_bias("b", b)
    rms = Norm("rmsnorm", 16, 1e-6, groups=4)
    rms.set_weight("w", w)
    for h in range(4):
        torch.testing.assert_close(ln(x)[:, :, h], F.layer_norm(x[:, :, h], (16,), w[h], b[h], 1e-5))
        torch.testing.assert_close(rms(x)[:, :, h], F.rms_norm(x[:, :, h], (16,), w[h], 1e-6))
    with pytest.raises(WeightError, match=r"has shape \[16\], expected \[4, 16\]"):
        rms.set_weight("w", w[0])


# ------------------------------------------------------------------------------------------------- rope


def test_adjacent_pairing_equals_half_pairing_on_permuted_rows() -> None:
    """llama.cpp's converter permutes Q/K rows so GGML's adjacent-pair rope equals the half-split rope
    of the original weights; the two pairings must be that permutation of each other."""
    c = config(rope_dims=8)
    adjacent, half = Rotary(RopeParams.from_config(c, "adjacent")), Rotary(RopeParams.from_config(c, "half"))
    x = randn(1, 5, 2, 8)
    perm = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])  # half-split order -> interleaved order
    cos, sin = half.angles(torch.arange(5)[None])
    torch.testing.assert_close(adjacent.rotate(x[..., perm], cos, sin), half.rotate(x, cos, sin)[..., perm])


def test_partial_rotary_leaves_the_tail_alone() -> None:
    rotary = Rotary(RopeParams.from_config(config(rope_dims=4), "half"))
    x = randn(1, 6, 2, 8)
    cos, sin = rotary.angles(torch.arange(6)[None])
    y = rotary.rotate(x, cos, sin)
    assert torch.equal(y[..., 4:], x[..., 4:])
    torch.testing.assert_close(y[..., :4].norm(dim=-1), x[..., :4].norm(dim=-1))


def _hf_inv_freq(rope_type: str, params: dict, dims: int, max_pos: int) -> tuple[torch.Tensor, float]:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = LlamaConfig(hidden_size=dims * 2, num_attention_heads=2, head_dim=dims, max_position_embeddings=max_pos,
                     rope_parameters={"rope_type": rope_type, "rope_theta": 10000.0, **params})
    inv_freq, factor = ROPE_INIT_FUNCTIONS[rope_type](hf, "cpu")
    return inv_freq.double(), float(factor)


def test_yarn_matches_transformers() -> None:
    params = dict(factor=4.0, original_max_position_embeddings=32, beta_fast=16.0, beta_slow=2.0, mscale=1.0,
                  mscale_all_dim=0.5)
    inv_freq, attention = _hf_inv_freq("yarn", params, 32, 128)
    c = config(rope_dims=32, head_dim=32, rope_scaling="yarn", rope_scale_factor=4.0, rope_original_context=32,
               yarn_beta_fast=16.0, yarn_beta_slow=2.0, yarn_log_multiplier=0.5)
    rotary = Rotary(RopeParams.from_config(c, "half"))
    pos = torch.arange(100)
    cos, sin = rotary.angles(pos)
    theta = pos[:, None].double() * inv_freq
    torch.testing.assert_close(cos, (theta.cos() * attention).float(), atol=2e-6, rtol=0)
    torch.testing.assert_close(sin, (theta.sin() * attention).float(), atol=2e-6, rtol=0)


def test_linear_scaling_and_frequency_factors() -> None:
    c = config(rope_scaling="linear", rope_scale_factor=2.0)
    rotary = Rotary(RopeParams.from_config(c, "half"))
    factors = torch.tensor([1.0, 2.0, 4.0, 8.0])
    rotary.set_freq_factors("f", factors)
    cos, _ = rotary.angles(torch.tensor([7]))
    expected = 7 * (10000.0 ** (-torch.arange(0, 8, 2).double() / 8)) / factors.double() / 2.0
    torch.testing.assert_close(cos[0], expected.cos().float())
    assert RopeParams.from_config(dataclasses.replace(c, rope_scaling="none"), "half").freq_scale == 1.0


# -------------------------------------------------------------------------------------------- attention


def _attention(**opts: object) -> tuple[Attention, Rotary]:
    shape = AttentionShape(hidden=16, n_heads=4, n_kv_heads=2, head_dim=8, value_dim=8)
    base = dict(fused_qkv=False, qk_norm=None, qk_norm_over="head", norm_eps=1e-6, scale=8 ** -0.5, softcap=0.0,
                clamp=0.0, window=0, use_rope=False, sinks=False, temperature_scale=0.0, temperature_length=1)
    rotary = Rotary(RopeParams.from_config(config(), "half"))
    attn = Attention(shape, AttentionOptions(**{**base, **opts}), BuildContext("rmsnorm", 0.0, 0),  # type: ignore[arg-type]
                     rotary)
    if not opts.get("fused_qkv"):
        for name, out in (("q", 32), ("k", 16), ("v", 16)):
            getattr(attn, name).set_weight(name, randn(out, 16, scale=0.5))
    attn.o.set_weight("o", randn(16, 32, scale=0.5))
    return attn, rotary


def _reference_attention(attn: Attention, x: torch.Tensor, window: int = 0, softcap: float = 0.0,
                         sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Token-by-token attention written out with loops."""
    q = (x @ attn.q.weight.T).view(x.shape[0], x.shape[1], 4, 8)  # type: ignore[union-attr]
    k = (x @ attn.k.weight.T).view(x.shape[0], x.shape[1], 2, 8)  # type: ignore[union-attr]
    v = (x @ attn.v.weight.T).view(x.shape[0], x.shape[1], 2, 8)  # type: ignore[union-attr]
    out = torch.zeros(x.shape[0], x.shape[1], 4, 8)
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            for h in range(4):
                keys = [s for s in range(t + 1) if not window or t - s < window]
                scores = torch.stack([q[b, t, h] @ k[b, s, h // 2] for s in keys]) * 8 ** -0.5
                if softcap:
                    scores = torch.tanh(scores / softcap) * softcap
                if sinks is not None:
                    scores = torch.cat([scores, sinks[h].view(1)])
                p = torch.softmax(scores, dim=0)[: len(keys)]
                out[b, t, h] = sum(p[i] * v[b, s, h // 2] for i, s in enumerate(keys))
    return out.reshape(x.shape[0], x.shape[1], 32) @ attn.o.weight.T  # type: ignore[union-attr]


@pytest.mark.parametrize("opts", [{}, {"window": 3}, {"softcap": 2.0}, {"sinks": True}])
def test_attention_variants_match_a_written_out_reference(opts: dict) -> None:
    attn, _ = _attention(**opts)
    sinks = None
    if opts.get("sinks"):
        sinks = randn(4)
        attn.set_sinks("s", sinks)
    x = randn(2, 7, 16)
    pos = torch.arange(7).expand(2, 7)
    ours = attn(x, Step(pos, 0), None)
    expected = _reference_attention(attn, x, window=opts.get("window", 0), softcap=opts.get("softcap", 0.0),
                                    sinks=sinks)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_fused_qkv_equals_separate_projections() -> None:
    separate, _ = _attention()
    fused, _ = _attention(fused_qkv=True)
    weights = [separate.q.weight, separate.k.weight, separate.v.weight]
    fused.qkv.set_weight("qkv", torch.cat(weights))  # type: ignore[arg-type]
    fused.o.set_weight("o", separate.o.weight)  # type: ignore[arg-type]
    x, pos = randn(1, 5, 16), torch.arange(5)[None]
    torch.testing.assert_close(fused(x, Step(pos, 0), None), separate(x, Step(pos, 0), None))


def test_query_temperature_scales_queries_by_position() -> None:
    plain, _ = _attention()
    warm, _ = _attention(temperature_scale=0.5, temperature_length=4)
    for name in ("q", "k", "v", "o"):
        getattr(warm, name).set_weight(name, getattr(plain, name).weight)
    x, pos = randn(1, 9, 16), torch.arange(9)[None]
    temp = 1 + 0.5 * torch.log(torch.floor(pos.double() / 4) + 1)
    scaled_q = plain.q.weight
    assert scaled_q is not None
    # the same as multiplying q by the temperature: fold it into a per-position q weight, check row by row
    for t in range(9):
        plain.q.set_weight("q", scaled_q * float(temp[0, t]))
        expected = plain(x[:, : t + 1], Step(pos[:, : t + 1], 0), None)[:, t]
        torch.testing.assert_close(warm(x, Step(pos, 0), None)[:, t], expected, atol=1e-5, rtol=1e-5)
    plain.q.set_weight("q", scaled_q)


def test_kv_cache_decoding_equals_one_pass() -> None:
    attn, _ = _attention(use_rope=True)
    x, pos = randn(2, 9, 16), torch.arange(9).expand(2, 9)
    full = attn(x, Step(pos, 0), None)
    state = SequenceState(2)
    steps = []
    for start, end in ((0, 4), (4, 5), (5, 9)):
        steps.append(attn(x[:, start:end], Step(pos[:, start:end], start), state))
    # float32 rounding only: the one-row steps go through the native decode kernel (its own summation order
    # and exp), the full pass through torch's attention; a wrong cache slot or mask would differ by ~0.1
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ feed-forward


def test_fused_gate_up_equals_separate() -> None:
    gate, up, down = randn(8, 16), randn(8, 16), randn(16, 8)
    separate = MLP(16, 8, gated=True, fused_gate_up=False, activation=Activation("silu"))
    separate.gate.set_weight("g", gate)
    separate.up.set_weight("u", up)
    separate.down.set_weight("d", down)
    fused = MLP(16, 8, gated=True, fused_gate_up=True, activation=Activation("silu"))
    fused.up.set_weight("gu", torch.cat([gate, up]))
    fused.down.set_weight("d", down)
    x = randn(3, 16)
    torch.testing.assert_close(fused(x), separate(x))
    torch.testing.assert_close(separate(x), (F.silu(x @ gate.T) * (x @ up.T)) @ down.T)


def test_plain_mlp_and_clamped_gate() -> None:
    up, down = randn(8, 16), randn(16, 8)
    plain = MLP(16, 8, gated=False, fused_gate_up=False, activation=Activation("gelu_tanh"))
    plain.up.set_weight("u", up)
    plain.down.set_weight("d", down)
    x = randn(3, 16)
    torch.testing.assert_close(plain(x), F.gelu(x @ up.T, approximate="tanh") @ down.T)
    limited = MLP(16, 8, gated=True, fused_gate_up=False, activation=Activation("silu", limit=0.5))
    for name, w in (("gate", up), ("up", up), ("down", down)):
        getattr(limited, name).set_weight(name, w)
    h = x @ up.T
    torch.testing.assert_close(limited(x), (F.silu(h).clamp(max=0.5) * h.clamp(-0.5, 0.5)) @ down.T)
    before = Activation("silu", limit=0.5, clamp_before=True, silu_beta=1.702, up_offset=1.0)
    g = h.clamp(max=0.5)
    torch.testing.assert_close(before.gated(h, h), g * torch.sigmoid(1.702 * g) * (h.clamp(-0.5, 0.5) + 1))


@pytest.mark.parametrize("gating", ["softmax", "sigmoid", "softmax_selected"])
@pytest.mark.parametrize(("normalize", "scale", "selection_bias"), [(True, 0.0, False), (False, 2.5, True)])
def test_expert_routing_matches_a_per_token_reference(gating: str, normalize: bool, scale: float,
                                                      selection_bias: bool) -> None:
    n, k = 6, 2
    moe = Experts(16, 8, n_experts=n, top_k=k, gating=gating, gated=True, fused_gate_up=False,
                  activation=Activation("silu"), normalize=normalize, scale=scale)
    router = randn(n, 16)
    moe.router.set_weight("r", router)
    gate, up, down = randn(n, 8, 16), randn(n, 8, 16), randn(n, 16, 8)
    moe.gate.set_weight("g", gate)
    moe.up.set_weight("u", up)
    moe.down.set_weight("d", down)
    bias = randn(n) if selection_bias else torch.zeros(n)
    if selection_bias:
        moe.set_selection_bias("b", bias)
    x = randn(7, 16)
    expected = torch.zeros(7, 16)
    for t in range(7):
        logits = router @ x[t]
        probs = {"softmax": torch.softmax(logits, 0), "sigmoid": torch.sigmoid(logits)}.get(gating, logits)
        top = torch.topk(probs + bias, k).indices
        w = probs[top]
        w = torch.softmax(w, 0) if gating == "softmax_selected" else w
        w = w / w.sum() if normalize else w
        w = w * scale if scale else w
        for e, we in zip(top.tolist(), w, strict=True):
            expected[t] += we * ((F.silu(gate[e] @ x[t]) * (up[e] @ x[t])) @ down[e].T)
    torch.testing.assert_close(moe(x[None])[0], expected, atol=1e-4, rtol=1e-5)


def test_layer_patterns_and_rules() -> None:
    from tfb.spec.base import LayerRule, selects

    fields = {"lead": (1, 1, 1, 1, 1, 1, 1), "step": (2,) * 7, "kv": (0, 4, 0, 0, 4, 4, 0)}

    def on(selector: object) -> list[bool]:
        return [selects(selector, i, lambda name, layer: fields[name][layer]) for i in range(7)]  # type: ignore[arg-type]

    assert on("all") == [True] * 7
    assert on("none") == [False] * 7
    assert on([True, True, False]) == [True, True, False, True, True, False, True]
    assert on(LayerRule(below="lead")) == [True] + [False] * 6
    assert on(LayerRule(every="step")) == [False, True, False, True, False, True, False]  # (i + 1) % 2 == 0
    assert on(LayerRule(nonzero="kv")) == [False, True, False, False, True, True, False]
    assert on(LayerRule(zero="kv")) == [True, False, True, True, False, False, True]


def test_yarn_mscale_formula_is_llama_cpp_s() -> None:
    c = config(rope_scaling="yarn", rope_scale_factor=8.0, yarn_log_multiplier=0.0, rope_attn_factor=1.5)
    assert RopeParams.from_config(c, "half").mscale == pytest.approx((0.1 * math.log(8.0) + 1.0) * 1.5)
