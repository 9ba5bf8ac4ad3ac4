"""Quantized hybrid files: the recurrent layers' tensors load in every storage type llama.cpp writes for them.

What llama.cpp stores, from its converter (convert_hf_to_gguf.py, conversion/base.py: 1-D tensors, `*_norm.weight`,
SSM_CONV1D, SHORTCONV_CONV and names not ending in `.weight` are F32) and its quantizer (src/llama-quant.cpp,
tensor_allows_quantization: only 2-D/3-D tensors named `*weight`, never `_norm.weight`, `ssm_conv1d`,
`shortconv.conv.weight`): the projections (ssm_in, ssm_out, attn_qkv, attn_gate, ssm_ba / ssm_beta / ssm_alpha,
shortconv.in_proj / out_proj) take the file's type; the conv weights, A (`ssm_a`, [heads, 1] in Mamba-2 files:
2-D but not `*weight`), D, the dt and conv biases and the norms stay F32 in every type. tools/requantize.py
follows those rules with ggml's own quantizers.

One tiny model per family, converted once to F32 by llama.cpp's converter with every quantized row 256 wide (so
that the k-quants' blocks fit), is re-stored in each type (all of TYPES for mamba2, three for the others: CASES).
tfb's logits on the quantized file must equal (within float32 rounding) tfb's on an F32 copy of it made by the
`gguf` package's own dequantizers (an implementation independent of tfb's; the F32 path itself is verified
against transformers in each family's tests). The drift from the float model is no usable check on these random
tiny models: measured against transformers' float32 logits it moved chaotically with the type (0.3-1.4 of the
largest logit from Q8_0 down, Q6_K above Q5_K on mamba2, BF16 at 0.24 on granitehybrid), so it is not asserted.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from compare import ids_for
from gguf import GGMLQuantizationType, GGUFReader
from tiny_hf import FAMILIES, build_hf, convert

import tfb
from tfb.nn.linear import Linear
from tfb.quant.packed import PackedTensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from requantize import requantize

# config changes that make every row a recurrent layer quantizes 256 wide (its input: hidden or inner width)
WIDE = {
    "lfm2": dict(hidden_size=256),
    "mamba2": dict(hidden_size=256, num_heads=32),  # inner = expand x hidden = 512 = 32 heads of 16
    "granitehybrid": dict(hidden_size=256, mamba_n_heads=32),
    "qwen3next": dict(hidden_size=256, linear_value_head_dim=64),  # ssm_out's rows: 4 value heads of 64
    "qwen35": dict(hidden_size=256, linear_value_head_dim=64),
}
TYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL"]
# every type on the smallest file (mamba2: 2 layers, 320 tokens); on the others one float, one legacy and one
# k-quant type (the block formats are read by shared code; what differs per family is its tensors)
CASES = [("mamba2", TYPES), *((family, ["BF16", "Q5_1", "Q4_K"]) for family in WIDE if family != "mamba2")]
QUANTIZED = ("ssm_in.", "ssm_out.", "attn_qkv.", "attn_gate.", "ssm_ba.", "ssm_beta.", "ssm_alpha.",
             "shortconv.in_proj.", "shortconv.out_proj.")
KEPT_F32 = ("ssm_conv1d.", "shortconv.conv.", "ssm_dt.", "ssm_norm.")  # in the name, and A, D: the name's end
KEPT_F32_END = (".ssm_a", ".ssm_d")

_FILES: dict[str, tuple[torch.nn.Module, Path]] = {}


def wide_model(family: str, tmp: Path) -> tuple[torch.nn.Module, Path]:
    if family not in _FILES:
        base = FAMILIES[family]
        fam = dataclasses.replace(base, config={**base.config, **WIDE[family]})
        FAMILIES[f"{family}_wide"] = fam
        try:
            model, _ = build_hf(f"{family}_wide")
        finally:
            del FAMILIES[f"{family}_wide"]
        _FILES[family] = (model, convert(model, fam, "f32", tmp))
    return _FILES[family]


@pytest.mark.parametrize(("family", "types"), CASES, ids=[family for family, _ in CASES])
def test_types_llama_cpp_writes(family: str, types: list[str], tmp_path_factory: pytest.TempPathFactory) -> None:
    reference, f32 = wide_model(family, tmp_path_factory.mktemp(f"{family}-wide"))
    ids = ids_for(reference.config.vocab_size, 2, 24)
    with torch.no_grad():
        exact_f32 = tfb.load(f32)(ids)
    source = {t.name: t for t in GGUFReader(f32).tensors}
    projections = [name for name in source if any(p in name for p in QUANTIZED)]
    kept = [name for name in source if any(p in name for p in KEPT_F32) or name.endswith(KEPT_F32_END)]
    assert projections and kept
    for name in types:
        qtype = GGMLQuantizationType[name]
        out = tmp_path_factory.mktemp(f"{family}-{name}") / "model.gguf"
        requantize(str(f32), str(out), qtype)
        stored = {t.name: t.tensor_type.name for t in GGUFReader(out).tensors}
        assert all(stored[p] == name for p in projections), (name, {p: stored[p] for p in projections})
        assert all(stored[k] == "F32" for k in kept), (name, {k: stored[k] for k in kept})
        model = tfb.load(out)
        linears = [m for block in model.blocks for m in block.mixer.modules() if isinstance(m, Linear)]
        assert linears and all(isinstance(m.packed, PackedTensor) for m in linears if m.packed is not None)
        dequantized = out.with_name("dequantized.gguf")
        requantize(str(out), str(dequantized), GGMLQuantizationType.F32)  # gguf's dequantizers, every tensor F32
        with torch.no_grad():
            got = model(ids)
            exact = tfb.load(dequantized)(ids)
        assert (got - exact).abs().max().item() <= 1e-4 * exact.abs().max().item(), name
        assert not torch.equal(got, exact_f32), name  # the file's values are the type's, not the float model's
