"""Which tensor slots a spec reads, given the facts that only a file can settle.

This is the one place that ties switches to tensors: the static spec check, the weight loader and
`tfb check` all ask it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from tfb.config import ModelConfig
from tfb.spec.schema import Spec, TensorRef

Need = Literal["required", "optional"]


@dataclass(frozen=True)
class FileFacts:
    """What the file decides: experts present, fused QKV, parallel residual, an optional Q/K norm present."""

    experts: bool
    fused_qkv: bool
    parallel_residual: bool = False
    qk_norm: bool = True

    @classmethod
    def of(cls, config: ModelConfig) -> FileFacts:
        return cls(config.has_experts, config.fused_qkv, config.parallel_residual, config.qk_norm)


def _add(out: dict[str, Need], slot: str, presence: str) -> None:
    if presence in ("required", "optional"):
        out[slot] = presence  # type: ignore[assignment]


def _norm(out: dict[str, Need], spec: Spec, slot: str) -> None:
    if spec.norm.parametric:
        out[slot] = "required"
    _add(out, f"{slot}_bias", spec.norm.bias)


def global_slots(spec: Spec, facts: FileFacts) -> dict[str, Need]:
    out: dict[str, Need] = {"token_embd": "required", "output": "required"}
    if spec.embedding.positions == "learned":
        out["position_embd"] = "required"
    if spec.output.norm:
        _norm(out, spec, "output_norm")
    _add(out, "output_bias", spec.output.bias)
    if spec.attention.rope.layers != "none":
        # frequency factors: one fixed set, or long/short sets chosen by the run context (as llama.cpp)
        for slot in ("rope_freqs", "rope_factors_long", "rope_factors_short"):
            out[slot] = "optional"
    return out


def layer_slots(spec: Spec, facts: FileFacts) -> dict[str, Need]:
    out: dict[str, Need] = {}
    att, ffn, block = spec.attention, spec.ffn, spec.block
    if block.pre_norm:
        _norm(out, spec, "attn_norm")
    if facts.fused_qkv:
        out["attn_qkv"] = "required"
        biases = {att.bias.q, att.bias.k, att.bias.v} - {"none"}
        if biases:
            _add(out, "attn_qkv_bias", "required" if biases == {"required"} else "optional")
    else:
        for p in "qkv":
            out[f"attn_{p}"] = "required"
            _add(out, f"attn_{p}_bias", getattr(att.bias, p))
    out["attn_output"] = "required"
    _add(out, "attn_output_bias", att.bias.o)
    if att.qk_norm is not None and facts.qk_norm:
        out["attn_q_norm"] = out["attn_k_norm"] = "required"
        if att.qk_norm.kind == "layernorm":
            bias = spec.norm.bias if att.qk_norm.bias == "norm" else att.qk_norm.bias
            _add(out, "attn_q_norm_bias", bias)
            _add(out, "attn_k_norm_bias", bias)
    if att.sinks:
        out["attn_sinks"] = "required"
    if block.post_norm:
        _norm(out, spec, "post_attention_norm")
        _norm(out, spec, "post_ffw_norm")
    if block.pre_norm and not facts.parallel_residual:
        _norm(out, spec, "ffn_norm")
    if facts.experts and ffn.experts is not None:
        ex = ffn.experts
        out["ffn_gate_inp"] = "required"
        _add(out, "ffn_gate_inp_bias", ex.router_bias)
        _add(out, "exp_probs_b", ex.selection_bias)
        projections = ["ffn_down_exps"]
        if ffn.gated and ex.gate_up == "fused":
            projections.append("ffn_gate_up_exps")
        else:
            projections += ["ffn_gate_exps", "ffn_up_exps"] if ffn.gated else ["ffn_up_exps"]
        for slot in projections:
            out[slot] = "required"
            _add(out, f"{slot}_bias", ex.bias)
    else:
        projections = ["ffn_up", "ffn_down"]
        if ffn.gated and ffn.gate_up == "separate":
            projections.append("ffn_gate")
        for slot in projections:
            out[slot] = "required"
            _add(out, f"{slot}_bias", ffn.bias)
    return out


def possible_facts(spec: Spec) -> list[FileFacts]:
    """Every combination of file facts a spec can meet, for the static check."""
    fused = {"separate": [False], "fused": [True], "auto": [False, True]}[spec.attention.qkv]
    experts = [False, True] if spec.ffn.experts is not None else [False]
    parallel = {"sequential": [False], "parallel": [True], "auto": [False, True]}[spec.block.residual]
    qk_norm = [False, True] if spec.attention.qk_norm is not None and spec.attention.qk_norm.presence == "optional" \
        else [True]
    return [FileFacts(e, f, p, q) for e in experts for f in fused for p in parallel for q in qk_norm]


def slot_templates(spec: Spec) -> dict[str, TensorRef]:
    """Every slot the spec names a tensor for, global and per layer."""
    out: dict[str, TensorRef] = {}
    templates: BaseModel
    for templates in (spec.tensors.global_, spec.tensors.layer):
        for slot in type(templates).model_fields:
            ref = getattr(templates, slot)
            if ref is not None:
                out[slot] = ref
    return out


def names_read(spec: Spec, facts: FileFacts, n_layers: int) -> set[str]:
    """Every tensor name the spec may read from a file with these facts, optional ones and stand-ins
    included (a load reads one rope factor set; the others serve other run contexts)."""
    templates = slot_templates(spec)
    slots: list[tuple[str, int | None]] = [(s, None) for s in global_slots(spec, facts)]
    slots += [(s, i) for i in range(n_layers) for s in layer_slots(spec, facts)]
    names: set[str] = set()
    for slot, layer in slots:
        for ref in (templates.get(slot), templates.get(templates[slot].if_absent or "") if slot in templates else None):
            if ref is not None:
                names.add(ref.name.replace("{i}", str(layer)))
    return names
