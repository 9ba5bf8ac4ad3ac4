"""A spec's switches in a few words each: for `tfb specs` and the generated support matrix. No torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tfb.spec.base import KindSection, LayerPattern, LayerRule, LayerSelector
from tfb.spec.kinds.attention import ProjectionBias
from tfb.spec.schema import HParam, Spec

# column -> what it says, in display order
COLUMNS: dict[str, str] = {
    "norm": "norm kind; +bias: norm biases; (o+w): weight offset; no weights",
    "block": "residual layout; +post: post-norms on each branch; no pre-norm",
    "qkv": "separate, fused or auto (fused when the file has attn_qkv)",
    "bias": "projection biases: q, k, v, o (?: optional, read when present)",
    "qk norm": "norm of queries and keys (over each head, or all)",
    "rope": "pairing (adjacent or half), layers; none",
    "positions": "learned absolute positions",
    "mixer": "mixer kinds, with their layers when they differ",
    "ffn": "feed-forward kind(s) with their layers; gated or plain MLP, activation; fused gate/up; +bias",
    "experts": "gating of routed experts; renormalised top-k weights; fused gate/up; biases; shared experts",
    "window": "sliding-window layers",
    "sinks": "per-head attention sinks",
    "output": "final norm; output bias; tied to the embedding when output.weight is absent",
}
NONE = "–"


def _pattern(pattern: LayerPattern) -> str:
    if isinstance(pattern, str):
        return pattern
    return "[" + "".join("x" if on else "." for on in pattern) + "]"


def _layers(selector: LayerSelector) -> str:
    if isinstance(selector, LayerRule):
        return " and ".join(f"{k} {v}" for k, v in selector.conditions())
    return _pattern(selector)


def _kind(section: Any) -> str:
    """A section's kind; one that holds branches, with theirs: `parallel (attention + ssd)`."""
    branches = getattr(section, "branches", None)
    return str(section.kind) + (f" ({' + '.join(_kind(b) for b in branches)})" if branches else "")


def _kinds(sections: list[Any]) -> str:
    """`attention` or `dense (below leading_dense_block_count), routed`."""
    if len(sections) == 1:
        return _kind(sections[0])
    return ", ".join(_kind(s) + ("" if s.layers == "all" else f" ({_layers(s.layers)})") for s in sections)


def _first(sections: list[Any], kind: str) -> Any:
    """The first section of `kind`, looking into the branches of sections that hold some."""
    for s in sections:
        found = s if s.kind == kind else _first(getattr(s, "branches", []), kind)
        if found is not None:
            return found
    return None


def _mlp(section: KindSection) -> str:
    s: Any = section
    fused = " fused" if s.gated and s.gate_up == "fused" else ""
    return f"{'gated' if s.gated else 'plain'} {s.activation}{fused}" + \
        {"required": " +bias", "optional": " +bias?"}.get(s.bias, "")


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
    att = _first(spec.mixer, "attention")
    qk = f"{att.qk_norm.kind}/{att.qk_norm.over}" if att is not None and att.qk_norm else NONE
    rope = NONE if att is None or att.rope.layers == "none" else att.rope.pairing + \
        ("" if att.rope.layers == "all" else f" {_layers(att.rope.layers)}")
    dense = _first(spec.ffn, "dense")
    ffn_text = _kinds(spec.ffn) if len(spec.ffn) > 1 or spec.ffn[0].kind == "none" else ""
    if dense is not None:
        ffn_text = f"{ffn_text}; {_mlp(dense)}" if ffn_text else _mlp(dense)
    experts = NONE
    ex = _first(spec.ffn, "routed")
    if ex is not None:
        if dense is None:
            ffn_text = f"{ffn_text}; experts {_mlp(ex)}" if ffn_text else f"experts {_mlp(ex)}"
        extras = [_renorm(spec), _presence("router bias", ex.router_bias),
                  _presence("selection bias", ex.selection_bias), _presence("bias", ex.bias),
                  "weights on input" if ex.weights == "input" else "",
                  ("shared" + (" gated" if ex.shared.gate != "none" else "")) if ex.shared else ""]
        experts = " ".join([ex.gating, *[e for e in extras if e]])
    output_ref = spec.tensors.global_.output  # type: ignore[attr-defined]
    output = ["norm" if spec.output.norm else "no norm", _presence("bias", spec.output.bias),
              "tied?" if output_ref is not None and output_ref.if_absent else ""]
    return {
        "norm": norm_text,
        "block": block,
        "mixer": _kinds(spec.mixer),
        "qkv": att.qkv if att is not None else NONE,
        "bias": _biases(att.bias) if att is not None else NONE,
        "qk norm": qk,
        "rope": rope,
        "positions": "learned" if spec.embedding.positions == "learned" else NONE,
        "ffn": ffn_text,
        "experts": experts,
        "window": NONE if att is None or att.sliding_window == "none" else _pattern(att.sliding_window),
        "sinks": "yes" if att is not None and att.sinks else NONE,
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
