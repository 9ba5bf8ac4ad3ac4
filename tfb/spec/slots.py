"""Which tensor slots a spec reads, given the facts that only a file can settle.

This is the one place that ties switches to tensors: the static spec check, the weight loader and
`tfb check` all ask it. The block's norms are decided here; each mixer and feed-forward kind says what
its own layers read (tfb.spec.kinds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from tfb.spec.base import KindSection, LayerRule, Need, add_slot, selects
from tfb.spec.schema import Spec, TensorRef


@dataclass(frozen=True)
class FileFacts:
    """What the file decides: fused QKV, parallel residual, an optional Q/K norm present, per-layer input
    embeddings (a nonzero per_layer_embedding_size), fused QKVZ."""

    fused_qkv: bool = False
    parallel_residual: bool = False
    qk_norm: bool = True
    per_layer_embedding: bool = False
    fused_qkvz: bool = False  # a gated delta-net's q, k, v and z in one projection (ssm_in)

    @classmethod
    def of(cls, config: Any) -> FileFacts:
        return cls(fused_qkv=config.fused_qkv, parallel_residual=config.parallel_residual, qk_norm=config.qk_norm,
                   per_layer_embedding=config.per_layer_embedding_size > 0, fused_qkvz=config.fused_qkvz)


def _norm(out: dict[str, Need], spec: Spec, slot: str) -> None:
    if spec.norm.parametric:
        out[slot] = "required"
    add_slot(out, f"{slot}_bias", spec.norm.bias)


def global_slots(spec: Spec, facts: FileFacts) -> dict[str, Need]:
    out: dict[str, Need] = {"token_embd": "required", "output": "required"}
    if spec.embedding.positions == "learned":
        out["position_embd"] = "required"
    if spec.output.norm:
        _norm(out, spec, "output_norm")
    add_slot(out, "output_bias", spec.output.bias)
    if spec.embedding.per_layer is not None and facts.per_layer_embedding:
        for slot in ("per_layer_token_embd", "per_layer_model_proj", "per_layer_proj_norm"):
            out[slot] = "required"
    if any(s.uses_rope() for s in spec.mixer):
        # frequency factors: one fixed set, or long/short sets chosen by the run context (as llama.cpp)
        for slot in ("rope_freqs", "rope_factors_long", "rope_factors_short"):
            out[slot] = "optional"
    return out


def layer_slots(spec: Spec, facts: FileFacts, mixer: KindSection, ffn: KindSection) -> dict[str, Need]:
    """Every per-layer slot of a layer with this mixer and feed-forward: the block's norms around them."""
    out: dict[str, Need] = {}
    block = spec.block
    if block.pre_norm:
        _norm(out, spec, "attn_norm")
    out.update(mixer.slots(spec, facts))
    if block.post_norm:
        if not mixer.ABSENT:
            _norm(out, spec, "post_attention_norm")
        if not ffn.ABSENT:
            _norm(out, spec, "post_ffw_norm")
    # without a mixer the first norm feeds the feed-forward (tfb.spec.kinds.none)
    if block.pre_norm and not facts.parallel_residual and not ffn.ABSENT and not mixer.ABSENT:
        _norm(out, spec, "ffn_norm")
    out.update(ffn.slots(spec, facts))
    add_slot(out, "layer_output_scale", block.output_scale)
    if spec.embedding.per_layer is not None and facts.per_layer_embedding:
        out["per_layer_inp_gate"] = out["per_layer_proj"] = out["per_layer_post_norm"] = "required"
    return out


class NoSection(LookupError):
    """No section of a spec's `mixer` or `ffn` list covers a layer."""

    def __init__(self, role: str, layer: int, selectors: list[str]) -> None:
        super().__init__(role, layer)
        self.role, self.layer, self.selectors = role, layer, selectors  # what each section's `layers` gave


def shown_selector(selector: Any, layer: int, value: Callable[[str, int], Any]) -> str:
    """A section's `layers` as it read layer `layer`: `nonzero: intermediate_size = 96`, or the pattern."""
    if isinstance(selector, LayerRule):
        return ", ".join(f"{condition}: {name} = {value(name, layer)}" for condition, name in selector.conditions())
    return str(selector).replace("True", "true").replace("False", "false")


def section_for(sections: list[Any], layer: int, value: Callable[[str, int], Any], role: str = "") -> KindSection:
    """The first section whose `layers` hold for `layer`; `value(field, layer)` reads the config."""
    for section in sections:
        if selects(section.layers, layer, value):
            return section
    raise NoSection(role, layer, [shown_selector(s.layers, layer, value) for s in sections])


def layer_sections(spec: Spec, config: Any, layer: int) -> tuple[KindSection, KindSection]:
    """The mixer and feed-forward sections of one layer."""
    return (section_for(spec.mixer, layer, config.value, "mixer"),
            section_for(spec.ffn, layer, config.value, "ffn"))


def possible_facts(spec: Spec) -> list[FileFacts]:
    """Every combination of file facts a spec can meet, for the static check."""
    options: dict[str, set[bool]] = {"parallel_residual": {
        "sequential": {False}, "parallel": {True}, "auto": {False, True}}[spec.block.residual]}
    if spec.embedding.per_layer is not None:
        options["per_layer_embedding"] = {False, True}
    for section in spec.sections():
        for name, values in section.fact_options().items():
            options[name] = options.get(name, set()) | values
    combos = [FileFacts()]
    for name, values in options.items():
        combos = [dataclasses.replace(f, **{name: v}) for f in combos for v in sorted(values)]
    return combos


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


def names_read(spec: Spec, config: Any, facts: FileFacts) -> set[str]:
    """Every tensor name the spec may read from a file with these facts, optional ones and stand-ins
    included (a load reads one rope factor set; the others serve other run contexts)."""
    templates = slot_templates(spec)
    slots: list[tuple[str, int | None]] = [(s, None) for s in global_slots(spec, facts)]
    for i in range(config.n_layers):
        slots += [(s, i) for s in layer_slots(spec, facts, *layer_sections(spec, config, i))]
    names: set[str] = set()
    for slot, layer in slots:
        for ref in (templates.get(slot), templates.get(templates[slot].if_absent or "") if slot in templates else None):
            if ref is not None:
                names.add(ref.name.replace("{i}", str(layer)))
    return names
