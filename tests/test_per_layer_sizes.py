"""Per-layer metadata arrays (llama.cpp writes head_count_kv and feed_forward_length so for some families):
each layer is built with its own sizes, checked against a decoder written out here in plain torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGUFValueType, GGUFWriter

import tfb
from tfb.errors import ConfigError

HIDDEN, HEADS, HEAD_DIM, VOCAB, EPS = 32, 4, 8, 50, 1e-6
KV_HEADS, FF = (1, 2, 4), (48, 80, 16)


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, norm: bool = False) -> np.ndarray:
        t = torch.rand(shape, generator=gen) + 0.5 if norm else torch.randn(shape, generator=gen) * 0.3
        return t.numpy().astype(np.float32)

    w = {"token_embd.weight": rand(VOCAB, HIDDEN), "output_norm.weight": rand(HIDDEN, norm=True),
         "output.weight": rand(VOCAB, HIDDEN)}
    for i, (kv, ff) in enumerate(zip(KV_HEADS, FF, strict=True)):
        w |= {f"blk.{i}.attn_norm.weight": rand(HIDDEN, norm=True), f"blk.{i}.ffn_norm.weight": rand(HIDDEN, norm=True),
              f"blk.{i}.attn_q.weight": rand(HEADS * HEAD_DIM, HIDDEN),
              f"blk.{i}.attn_k.weight": rand(kv * HEAD_DIM, HIDDEN),
              f"blk.{i}.attn_v.weight": rand(kv * HEAD_DIM, HIDDEN),
              f"blk.{i}.attn_output.weight": rand(HIDDEN, HEADS * HEAD_DIM),
              f"blk.{i}.ffn_gate.weight": rand(ff, HIDDEN), f"blk.{i}.ffn_up.weight": rand(ff, HIDDEN),
              f"blk.{i}.ffn_down.weight": rand(HIDDEN, ff)}
    return w


def _write(path: Path, weights: dict[str, np.ndarray], kv_heads: tuple[int, ...] = KV_HEADS) -> Path:
    writer = GGUFWriter(str(path), "qwen2")
    u32 = GGUFValueType.UINT32
    for key, value in (("block_count", len(FF)), ("context_length", 64), ("embedding_length", HIDDEN),
                       ("attention.head_count", HEADS), ("vocab_size", VOCAB)):
        writer.add_key_value(f"qwen2.{key}", value, u32)
    writer.add_key_value("qwen2.attention.head_count_kv", list(kv_heads), GGUFValueType.ARRAY, sub_type=u32)
    writer.add_key_value("qwen2.feed_forward_length", list(FF), GGUFValueType.ARRAY, sub_type=u32)
    writer.add_key_value("qwen2.attention.layer_norm_rms_epsilon", EPS, GGUFValueType.FLOAT32)
    for name, value in weights.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _reference(weights: dict[str, np.ndarray], ids: torch.Tensor) -> torch.Tensor:
    """The decoder, written out: RMS pre-norms, GQA with NEOX rope, SwiGLU; layer i has its own sizes."""
    w = {k: torch.from_numpy(v).double() for k, v in weights.items()}

    def rms(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight

    def rope(x: torch.Tensor) -> torch.Tensor:  # [b, t, heads, d], halves rotated together
        t, half = x.shape[1], HEAD_DIM // 2
        theta = torch.arange(t).double()[:, None] * 10000.0 ** (-torch.arange(half).double() * 2 / HEAD_DIM)
        cos, sin = theta.cos()[None, :, None], theta.sin()[None, :, None]
        x0, x1 = x[..., :half], x[..., half:]
        return torch.cat((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)

    x = w["token_embd.weight"][ids]
    b, t = ids.shape
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    for i, kv in enumerate(KV_HEADS):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = rope((h @ w[p + "attn_q.weight"].T).view(b, t, HEADS, HEAD_DIM))
        k = rope((h @ w[p + "attn_k.weight"].T).view(b, t, kv, HEAD_DIM))
        v = (h @ w[p + "attn_v.weight"].T).view(b, t, kv, HEAD_DIM)
        k, v = (z.repeat_interleave(HEADS // kv, dim=2) for z in (k, v))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / HEAD_DIM ** 0.5
        probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        x = x + torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, -1) @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"])
        x = x + (F.silu(h @ w[p + "ffn_gate.weight"].T) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    return (rms(x, w["output_norm.weight"]) @ w["output.weight"].T).float()


def test_each_layer_has_its_own_sizes(tmp_path: Path) -> None:
    weights = _weights()
    model = tfb.load(_write(tmp_path / "m.gguf", weights))
    assert model.config.per_layer == {"n_kv_heads": KV_HEADS, "intermediate_size": FF}
    assert [blk.mixer.shape.n_kv_heads for blk in model.blocks] == list(KV_HEADS)
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), _reference(weights, ids), atol=1e-4, rtol=1e-4)
        cache = model.new_cache()
        steps = [model(ids[:, :5], cache)] + [model(ids[:, t:t + 1], cache) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), model(ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("kv_heads", "message"), [
    ((1, 2), "qwen2.attention.head_count_kv has 2 values, expected one per layer: block_count = 3"),
    ((1, 3, 4), "n_heads = 4 is not a multiple of n_kv_heads = 3 in layer 1"),
])
def test_inconsistent_per_layer_arrays_are_refused(tmp_path: Path, kv_heads: tuple[int, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        tfb.load(_write(tmp_path / "m.gguf", _weights(), kv_heads))
