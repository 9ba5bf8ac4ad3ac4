"""A spec's switches in a few words each: for `tfb specs` and the generated support matrix. No torch."""

from __future__ import annotations

from pathlib import Path

from tfb.spec.schema import HParam, LayerPattern, ProjectionBias, Spec

# column -> what it says, in display order
COLUMNS: dict[str, str] = {
    "norm": "norm kind; +bias: norm biases; (o+w): weight offset; no weights",
    "block": "residual layout; +post: post-norms on each branch; no pre-norm",
    "qkv": "separate, fused or auto (fused when the file has attn_qkv)",
    "bias": "projection biases: q, k, v, o (?: optional, read when present)",
    "qk norm": "norm of queries and keys (over each head, or all)",
    "rope": "pairing (adjacent or half), layers; none",
    "positions": "learned absolute positions",
    "ffn": "gated or plain MLP, activation; fused gate/up; +bias",
    "experts": "gating when the file has experts; renormalised top-k weights; fused gate/up; biases",
    "window": "sliding-window layers",
    "sinks": "per-head attention sinks",
    "output": "final norm; output bias; tied to the embedding when output.weight is absent",
}
NONE = "–"


def _pattern(pattern: LayerPattern) -> str:
    if isinstance(pattern, str):
        return pattern
    return "[" + "".join("x" if on else "." for on in pattern) + "]"


def _presence(name: str, value: str) -> str:
    return {"required": name, "optional": f"{name}?"}.get(value, "")


def _biases(bias: ProjectionBias) -> str:
    parts = [p for p in (_presence(x, getattr(bias, x)) for x in "qkvo") if p]
    return " ".join(parts) or NONE


def _renorm(spec: Spec) -> str:
    rule = spec.hparams.expert_weights_norm  # type: ignore[attr-defined]
    if not isinstance(rule, HParam):
        return ""
    if rule.keys():
        return f"renorm per file (default {str(rule.default).lower()})"
    return "renorm" if rule.default is True else ""


def switches(spec: Spec) -> dict[str, str]:
    """Column -> a short description of that switch in `spec` (see COLUMNS)."""
    norm = spec.norm
    norm_text = norm.kind + {"required": "+bias", "optional": "+bias?"}.get(norm.bias, "")
    if norm.weight_offset:
        norm_text += f" ({norm.weight_offset:g}+w)"
    if not norm.parametric:
        norm_text += " no weights"
    block = spec.block.residual + (" +post" if spec.block.post_norm else "") + \
        ("" if spec.block.pre_norm else " no pre-norm")
    att = spec.attention
    qk = f"{att.qk_norm.kind}/{att.qk_norm.over}" if att.qk_norm else NONE
    rope = NONE if att.rope.layers == "none" else att.rope.pairing + \
        ("" if att.rope.layers == "all" else f" {_pattern(att.rope.layers)}")
    ffn = spec.ffn
    ffn_text = f"{'gated' if ffn.gated else 'plain'} {ffn.activation}" + \
        (" fused" if ffn.gated and ffn.gate_up == "fused" else "") + \
        {"required": " +bias", "optional": " +bias?"}.get(ffn.bias, "")
    experts = NONE
    if ffn.experts is not None:
        ex = ffn.experts
        extras = [_renorm(spec), _presence("router bias", ex.router_bias),
                  _presence("selection bias", ex.selection_bias), _presence("bias", ex.bias),
                  "fused" if ex.gate_up == "fused" else ""]
        experts = " ".join([ex.gating, *[e for e in extras if e]])
    output_ref = spec.tensors.global_.output  # type: ignore[attr-defined]
    output = ["norm" if spec.output.norm else "no norm", _presence("bias", spec.output.bias),
              "tied?" if output_ref is not None and output_ref.if_absent else ""]
    return {
        "norm": norm_text,
        "block": block,
        "qkv": att.qkv,
        "bias": _biases(att.bias),
        "qk norm": qk,
        "rope": rope,
        "positions": "learned" if spec.embedding.positions == "learned" else NONE,
        "ffn": ffn_text,
        "experts": experts,
        "window": NONE if att.sliding_window == "none" else _pattern(att.sliding_window),
        "sinks": "yes" if att.sinks else NONE,
        "output": " ".join(o for o in output if o),
    }


def listing(spec: Spec, path: Path | str) -> list[str]:
    """A compact block for `tfb specs`: name, what it serves, its base and file; then its switches."""
    serves = "abstract base" if spec.abstract else f"serves {', '.join(spec.match) or '(nothing)'}"
    head = f"{spec.name}: {serves}" + (f", extends {spec.extends}" if spec.extends else "") + f"  ({path})"
    lines = [head]
    if spec.description:
        lines.append(f"  {spec.description}")
    if not spec.abstract:
        lines.append("  " + " · ".join(f"{k} {v}" for k, v in switches(spec).items() if v != NONE))
    return lines
