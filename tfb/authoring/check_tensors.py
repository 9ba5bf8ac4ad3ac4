"""`tfb check`, tensor half: the file's tensors against what the spec and config ask for.

Expected names, shapes and needs come from the loader's own plan (`plan_tensors` over the modules
`build_modules` makes), so `check` and `load` cannot disagree. A tensor the plan does not read is unused;
when a slot template of the spec names it, the finding points at the switch that leaves the slot unread.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tfb.authoring.findings import Finding, layer_ranges, show_mark
from tfb.build import build_modules, first_names, plan_tensors, same_shape, unread_tensors
from tfb.config import ModelConfig
from tfb.quant.packed import is_supported, weight_types
from tfb.sources import WeightSource
from tfb.spec.schema import GLOBAL_SLOTS, Spec
from tfb.spec.slots import slot_templates
from tfb.spec.suggest import did_you_mean
from tfb.spec.yamlfile import Key, Mark

# slot -> the switch (or config field) that decides whether the slot is read at all
SWITCH_OF_SLOT: dict[str, str] = {
    "position_embd": "embedding.positions", "output_norm": "output.norm", "output_bias": "output.bias",
    "attn_norm": "block.pre_norm", "ffn_norm": "block.residual",
    "post_attention_norm": "block.post_norm", "post_ffw_norm": "block.post_norm",
    "attn_q": "mixer.qkv", "attn_k": "mixer.qkv", "attn_v": "mixer.qkv", "attn_qkv": "mixer.qkv",
    "attn_q_bias": "mixer.bias.q", "attn_k_bias": "mixer.bias.k", "attn_v_bias": "mixer.bias.v",
    "attn_qkv_bias": "mixer.bias", "attn_output_bias": "mixer.bias.o",
    "attn_q_norm": "mixer.qk_norm", "attn_k_norm": "mixer.qk_norm",
    "attn_q_norm_bias": "mixer.qk_norm", "attn_k_norm_bias": "mixer.qk_norm",
    "attn_sinks": "mixer.sinks",
    "ffn_gate": "ffn.gated", "ffn_up": "ffn.kind", "ffn_down": "ffn.kind",
    "ffn_gate_bias": "ffn.bias", "ffn_up_bias": "ffn.bias", "ffn_down_bias": "ffn.bias",
    "ffn_gate_inp": "ffn.kind", "ffn_gate_inp_bias": "ffn.router_bias",
    "exp_probs_b": "ffn.selection_bias",
    "ffn_gate_exps": "ffn.gate_up", "ffn_up_exps": "ffn.kind", "ffn_down_exps": "ffn.kind",
    "ffn_gate_up_exps": "ffn.gate_up",
}
for _slot in ("attn_norm", "ffn_norm", "output_norm", "post_attention_norm", "post_ffw_norm"):
    SWITCH_OF_SLOT[f"{_slot}_bias"] = "norm.bias"
for _slot in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps", "ffn_gate_up_exps"):
    SWITCH_OF_SLOT[f"{_slot}_bias"] = "ffn.bias"


@dataclass
class TensorReport:
    findings: list[Finding] = field(default_factory=list)
    checked: int = 0  # tensors found and checked
    optional_absent: int = 0


def _group(slot: str) -> str:
    return "global" if slot in GLOBAL_SLOTS else "layer"


def _switch_value(spec: Spec, path: str) -> Any:
    node: Any = spec
    for part in path.split("."):
        if isinstance(node, list):  # mixer and ffn sections: the first that has the switch
            node = next((n for n in node if getattr(n, part, None) is not None), None)
        else:
            node = getattr(node, part, None)
        if node is None:
            return None
    return node


def _mark(marks: Mapping[Key, Mark], key: Key) -> str | None:
    return show_mark(marks[key]) if key in marks else None


def _unused(spec: Spec, marks: Mapping[Key, Mark], name: str, config: ModelConfig) -> tuple[str | None, str]:
    """Where to look and why a file tensor is not read: the switch's line when a spec file sets it, else
    the checked spec itself (the switch keeps its default there)."""
    for slot, ref in slot_templates(spec).items():
        pattern = re.escape(ref.name).replace(re.escape("{i}"), r"\d+")
        if not re.fullmatch(pattern, name):
            continue
        switch = SWITCH_OF_SLOT.get(slot, "")
        value: Any = _switch_value(spec, switch) if switch else None
        setting = f"{switch} is `{_plain(value)}`" if switch else "no switch reads it"
        where = _mark(marks, tuple(switch.split("."))) if switch else None
        return where, f"not read: it is slot `{slot}`, which this spec and file leave unread ({setting})"
    return None, "not read: no tensor template of the spec names it"


def _plain(value: Any) -> str:
    if hasattr(value, "model_dump"):
        return ", ".join(f"{k}: {v}" for k, v in value.model_dump().items())
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def check_tensors(spec: Spec, marks: Mapping[Key, Mark], gguf: WeightSource, config: ModelConfig,
                  spec_file: str) -> TensorReport:
    report = TensorReport()
    model_path = str(gguf.path)
    present = gguf.tensors
    plan = plan_tensors(build_modules(spec, config), spec, present.keys())
    unread = unread_tensors(config, spec, gguf, plan)  # also what a misspelt template may have meant
    for p in plan:
        where = _mark(marks, ("tensors", _group(p.slot), p.slot)) or model_path
        subject = f"tensor {p.name}"
        if not p.present:
            if p.need == "required":
                report.findings.append(Finding("error", where, subject, f"missing (slot `{p.slot}`, required, shape "
                                               f"{list(p.shape)}){did_you_mean(p.name, unread)}"))
            else:
                report.optional_absent += 1
            continue
        info = present[p.name]
        report.checked += 1
        if not same_shape(info.shape, p.shape):
            report.findings.append(Finding("error", where, subject, f"shape {list(info.shape)} in the file, "
                                           f"expected {list(p.shape)} from the config (slot `{p.slot}`)"))
        if not is_supported(info.ggml_type):
            report.findings.append(Finding("error", where, subject, f"storage type {info.ggml_type.name} is not "
                                           f"supported for weights (supported: {', '.join(weight_types())})"))
    for name in unread:
        info = present[name]
        blamed, why = _unused(spec, marks, name, config)
        report.findings.append(Finding("error", blamed or spec_file, f"tensor {name}",
                                       f"{why}; {list(info.shape)} {info.ggml_type.name} in the file"))
    planned = {p.name for p in plan}
    skipped = [name for name in present if name not in planned and spec.tensors.left_unread(name, config.n_layers)]
    if skipped:  # not a problem, but said: the model is not all the file holds
        blocks = sorted({int(m.group(1)) for name in skipped if (m := re.match(r"blk\.(\d+)\.", name))})
        others = [name for name in skipped if not re.match(r"blk\.\d+\.", name)]
        what = ", ".join(([f"in block(s) {layer_ranges(tuple(blocks))}"] if blocks else [])
                         + ([first_names(others)] if others else []))
        report.findings.append(Finding("note", _mark(marks, ("tensors", "unread")) or spec_file, "tensors",
                                       f"{len(skipped)} left unread as the spec says (tensors.unread): {what}"))
    return report
