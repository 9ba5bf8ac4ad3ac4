"""`tfb draft`: propose a spec for a GGUF file from its metadata and tensor inventory.

Each switch is either settled by evidence in the file (a tensor, its shape, a metadata key) or not; what
the file cannot settle (rope pairing, the activation, ...) is llama.cpp code, not data, and is taken from
the base spec (or the command line) and listed as an assumption. The result is a list of decisions; the
YAML writer (draft_yaml.py) keeps those that differ from the base.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError

from tfb.authoring.draft_layout import (
    ROLES,
    Part,
    draft_view,
    file_int,
    get_path,
    kinds_of,
    layers_text,
    layout,
    section_path,
    set_path,
)
from tfb.authoring.inventory import NEXTN_KEY, Inventory, Presence
from tfb.authoring.known_keys import (
    EXPERT_GATING,
    EXPERT_GATING_VALUES,
    KEYS,
    NORM_EPS_KEYS,
    PARALLEL_RESIDUAL,
    SLIDING_WINDOW_PATTERN,
)
from tfb.errors import InputError
from tfb.spec.base import KindSection
from tfb.spec.fields import FIELD_BY_NAME
from tfb.spec.kinds import DEFAULT_KIND, FFN_KINDS, MIXER_KINDS
from tfb.spec.kinds.attention import QKNorm
from tfb.spec.schema import HParam, Spec
from tfb.spec.slots import FileFacts, global_slots, layer_slots

GIVEN = "given on the command line"

# assumed switch -> (command-line option, why the file cannot settle it)
ASSUMPTIONS: dict[str, tuple[str, str]] = {
    "mixer.rope.pairing": ("--rope-pairing", "adjacent pairs (GGML normal mode; llama.cpp's converter then "
                               "permutes Q/K rows) or half-split (NEOX): llama.cpp picks it per architecture "
                               "(llama_model_rope_type() in llama.cpp's source); the file does not say"),
    "ffn.activation": ("--activation", "the activation is llama.cpp code (src/models/), not metadata"),
    "block.residual": ("--residual", "no norm tensors tell whether attention and FFN read the same input"),
    "ffn.gating": ("--expert-gating", f"the file has no {EXPERT_GATING} key; llama.cpp picks the "
                           "router's gating per architecture"),
    "hparams.expert_weights_norm": ("--expert-weights-norm", "the file has no expert_weights_norm key; whether "
                                    "the chosen experts' weights are renormalised is llama.cpp code per "
                                    "architecture"),
    "mixer.value_heads": ("--set mixer.value_heads=...", "the order of a delta-net's value heads (grouped by key "
                          "head, or tiled) is the converter's choice per architecture; the tensors' shapes are the "
                          "same either way"),
    "mixer.sliding_window": ("--sliding-window", "the file gives a window size but not which layers use it; "
                                 "llama.cpp applies it to all, some or (for some architectures) none"),
    "mixer.qk_norm.kind": ("--set mixer.qk_norm.kind=...", "the Q/K norms have no bias tensors, and "
                               "their weights do not tell layernorm from rmsnorm"),
    "hparams.attn_temperature_length": ("--set hparams.attn_temperature_length=...", "the file gives a query "
                                        "temperature scale but not the positions per step"),
    "hparams.yarn_log_multiplier": ("--set hparams.yarn_log_multiplier=...", "llama.cpp reads "
                                    "rope.scaling.yarn_log_multiplier as it is for some architectures and divides "
                                    "it by 0.1 for others (their graphs multiply by 0.1 again); the file does not "
                                    "say which"),
}


def generic(path: str) -> str:
    """A path without its section numbers and branches (`ffn.0.activation` -> `ffn.activation`,
    `mixer.branches.0.rope.pairing` -> `mixer.rope.pairing`), for the options."""
    return ".".join(p for p in path.split(".") if not p.isdigit() and p != "branches")


@dataclass(frozen=True)
class Decision:
    path: str  # dotted: "norm.kind", "hparams.norm_eps", "tensors.global.output"
    value: Any
    why: str
    assumed: bool = False

    @property
    def option(self) -> str:
        return ASSUMPTIONS.get(generic(self.path), ("", ""))[0]


@dataclass
class Draft:
    inventory: Inventory
    base: Spec
    decisions: list[Decision]
    data: dict[str, Any]  # the drafted spec in full (base values with the decisions applied)
    unread_keys: list[str] = field(default_factory=list)


class _Drafter:
    def __init__(self, inv: Inventory, base: Spec, given: dict[str, Any]) -> None:
        self.inv, self.base, self.given = inv, base, given
        self.layout = {role: layout(inv, role) for role in ROLES}
        self.data: dict[str, Any] = draft_view(base.model_dump(by_alias=True, exclude={"name", "abstract", "match"}),
                                               inv)
        self.decisions: list[Decision] = []
        self.used: set[str] = set()  # the given paths a decision took

    def sections(self, role: str) -> list[tuple[str, Part]]:
        """Each drafted section of `role` with its path (the last one: the role itself)."""
        parts = self.layout[role]
        return [(section_path(role, i, len(parts)), p) for i, p in enumerate(parts)]

    # ---------------------------------------------------------------------------------- recording

    def given_at(self, path: str) -> str | None:
        """The given path that settles `path`: itself, or its generic form (for every section it names)."""
        for key in (path, generic(path)):
            if key in self.given:
                self.used.add(key)
                return key
        return None

    def decide(self, path: str, value: Any, why: str) -> None:
        if (key := self.given_at(path)) is not None:
            value, why = self.given[key], GIVEN
        self.decisions.append(Decision(path, value, why))
        set_path(self.data, path, value)

    def presence(self, path: str, found: Presence, why: str) -> None:
        """A presence switch; `optional` in the base already accepts the file either way."""
        if get_path(self.data, path) != "optional" or self.given_at(path) is not None:
            self.decide(path, found, why)

    def assume(self, path: str) -> None:
        """A switch the file cannot settle: the command line's value, else the base's, listed as assumed."""
        if (key := self.given_at(path)) is not None:
            self.decide(path, self.given[key], GIVEN)
            return
        self.decisions.append(Decision(path, get_path(self.data, path), ASSUMPTIONS[generic(path)][1], assumed=True))

    def tensor_why(self, slot: str, found: Presence, among: str = "layer") -> str:
        name = self.inv.name(slot)
        if among.removeprefix("layers ").removeprefix("layer ")[:1].isdigit():  # some layers, by number
            return f"{'no ' * (found == 'none')}{name} in {'some of ' * (found == 'optional')}{among}"
        if found == "none":
            return f"no {name} in the file"
        return f"{name} in {'every ' + among if found == 'required' else 'some layers'}" if "{i}" in name \
            else f"{name} in the file"

    def among(self, members: frozenset[int]) -> str:
        return "layer" if len(members) == self.inv.n_layers else layers_text(members)

    # ----------------------------------------------------------------------------------- switches

    def kinds(self) -> None:
        """The kind of each section, and the layers of each but the last: evidence for the writer."""
        for role in ROLES:
            listed = self.sections(role)
            for path, part in listed:
                if part.kind != DEFAULT_KIND[role] or len(listed) > 1:
                    self.decide(f"{path}.kind", part.kind, part.evidence)
                if path != role:
                    self.decide(f"{path}.layers", part.layers, part.why)

    def norms(self) -> None:
        inv = self.inv
        slots = ["attn_norm", "ffn_norm", "output_norm", "post_attention_norm", "post_ffw_norm"]
        weights = [s for s in slots if inv.has(s)]
        biases = [s for s in slots if inv.has(f"{s}_bias")]
        if not weights:
            self.decide("norm.parametric", False, "the file has no norm weight tensors")
        found: Presence = "none" if not biases else "required" if biases == weights else "optional"
        self.presence("norm.bias", found, f"norm biases: {', '.join(biases) or 'none'}")
        rms, ln = (inv.has_key(NORM_EPS_KEYS[k]) for k in ("rmsnorm", "layernorm"))
        if rms != ln:
            kind = "rmsnorm" if rms else "layernorm"
            self.decide("norm.kind", kind, f"the file has {inv.key(NORM_EPS_KEYS[kind])}")
            rule = self.base.hparams.norm_eps  # type: ignore[attr-defined]
            key = NORM_EPS_KEYS[kind]
            if key not in (rule.keys() if isinstance(rule, HParam) else []):
                self.decide("hparams.norm_eps", {"key": key}, f"the file has {inv.key(key)}")
        elif biases:
            self.decide("norm.kind", "layernorm", "norm bias tensors")

    def block(self) -> None:
        inv = self.inv
        pre = inv.has("attn_norm")
        post = inv.has("post_attention_norm") and inv.has("post_ffw_norm")
        self.decide("block.pre_norm", pre, self.tensor_why("attn_norm", inv.presence("attn_norm")))
        self.decide("block.post_norm", post, "post_attention_norm and post_ffw_norm tensors" if post
                    else "no post_attention_norm/post_ffw_norm pair")
        if pre and not post and inv.has("post_attention_norm") and not inv.has("ffn_norm"):
            # a post-norm of the attention alone is no switch; the one reading that runs is this one
            self.decide("tensors.layer.ffn_norm", inv.name("post_attention_norm"), "no ffn_norm, and a "
                        "post_attention_norm without post_ffw_norm: the norm before the feed-forward, by the name "
                        "some of llama.cpp's graphs give it")
            self.decide("block.residual", "sequential", "the norm before the feed-forward is post_attention_norm")
        elif all(getattr(kinds_of("ffn")[p.kind], "ABSENT", False) for p in self.layout["ffn"]):
            return  # no feed-forward: nothing reads the stream after the mixer
        elif inv.has_key(PARALLEL_RESIDUAL):
            parallel = bool(inv.value(PARALLEL_RESIDUAL))
            self.decide("block.residual", "parallel" if parallel else "sequential",
                        f"{inv.key(PARALLEL_RESIDUAL)} = {parallel}")
        elif pre and not post and not inv.has("ffn_norm"):
            self.decide("block.residual", "parallel", "an attn_norm but no ffn_norm: attention and FFN read the "
                        "same normed input (--residual sequential if the FFN reads the stream un-normed)")
        elif not get_path(self.data, "norm.parametric"):
            self.assume("block.residual")
        else:
            self.decide("block.residual", "sequential", "an ffn_norm in every layer")

    def extra_blocks(self) -> None:
        """Blocks the file holds past the model's layers (next-token prediction): built as llama.cpp builds,
        without them, and their tensors left unread on purpose."""
        inv = self.inv
        if not inv.extra_blocks:
            return
        key = inv.key(NEXTN_KEY)
        why = f"{key} = {inv.extra_blocks}: the file's last blocks predict further tokens; llama.cpp does not run them"
        self.decide("hparams.block_count", {"key": "{arch}.block_count"}, why)
        self.decide("hparams.nextn_predict_layers", {"key": NEXTN_KEY}, why)
        trunk = {"difference": ["block_count", "nextn_predict_layers"]}
        self.decide("hparams.n_layers", {"key": None, "default": trunk}, why)
        self.decide("tensors.unread", ["blk.{i}.*"], f"the blocks past n_layers ({key})")

    def mixers(self) -> None:
        inv = self.inv
        for section, part in self.sections("mixer"):
            units = [(f"{section}.branches.{j}", kind) for j, kind in enumerate(part.branches)] or \
                [(section, part.kind)]
            for path, kind in units:
                self.mixer(path, kind, part.members)
        if inv.has("position_embd"):
            self.decide("embedding.positions", "learned", "position_embd.weight in the file")

    def mixer(self, path: str, kind: str, members: frozenset[int]) -> None:
        inv = self.inv
        rope = get_path(self.data, f"{path}.rope")
        if inv.has("position_embd") and isinstance(rope, dict) and "layers" in rope and \
                not any(k.startswith(f"{inv.arch}.rope.") for k in inv.metadata):
            self.decide(f"{path}.rope.layers", "none", "learned positions and no rope keys")
        if kind == "attention":
            self.attention(path, members)
        elif kind == "latent_attention":
            low_rank = inv.presence("attn_q_a", members)
            self.decide(f"{path}.query", "low_rank" if low_rank == "required" else "direct",
                        self.tensor_why("attn_q_a", low_rank))
        else:
            self.by_slots("mixer", path, kind, members)
        if isinstance(rope, dict) and get_path(self.data, f"{path}.rope.layers") != "none":
            self.assume(f"{path}.rope.pairing")

    def by_slots(self, role: str, path: str, kind: str, members: frozenset[int]) -> None:
        """The switches of a kind whose values read different tensors (asked of the kind's own `slots()`),
        together: the values whose required tensors the layers all have, and that read most of theirs. A
        switch whose values the tensors do not tell apart keeps the base's value (the file cannot settle it)."""
        inv, cls = self.inv, kinds_of(role)[kind]
        spec, current = _validated(self.data), get_path(self.data, path)
        current = current[-1] if isinstance(current, list) else current  # the role: its last section
        switches = {name: get_args(info.annotation) for name, info in cls.model_fields.items()
                    if get_origin(info.annotation) is Literal and len(get_args(info.annotation)) > 1}
        if not switches:
            return

        def reads(values: tuple[Any, ...]) -> dict[str, str]:
            section = cls.model_validate({**current, **dict(zip(switches, values, strict=True))})
            return dict(section.slots(spec, FileFacts()))

        def score(values: tuple[Any, ...]) -> tuple[int, int] | None:
            need = reads(values)
            if any(n == "required" and inv.presence(s, members) != "required" for s, n in need.items()):
                return None
            kept = sum(v == current[k] for k, v in zip(switches, values, strict=True))
            return sum(inv.has(s, members) for s in need), kept

        scored = {values: sc for values in itertools.product(*switches.values()) if (sc := score(values))}
        if not scored:
            return  # nothing fits: tfb check names the tensor
        best = max(scored, key=lambda values: scored[values])
        among = self.among(members)
        for i, (name, values) in enumerate(switches.items()):
            others = [(*best[:i], v, *best[i + 1:]) for v in values if v != best[i]]
            if any(o in scored and scored[o][0] == scored[best][0] for o in others):  # the tensors cannot tell
                if generic(f"{path}.{name}") in ASSUMPTIONS:
                    self.assume(f"{path}.{name}")
                elif (key := self.given_at(f"{path}.{name}")) is not None:
                    self.decide(f"{path}.{name}", self.given[key], GIVEN)
                continue
            mine = reads(best)
            differ = sorted({s for o in others for s, n in reads(o).items() if mine.get(s) != n} |
                            {s for o in others for s in mine if s not in reads(o)})
            self.decide(f"{path}.{name}", best[i], "; ".join(
                self.tensor_why(s, inv.presence(s, members), among) for s in differ[:3]))

    def attention(self, path: str, members: frozenset[int]) -> None:
        inv = self.inv
        fused = inv.has("attn_qkv", members)
        if get_path(self.data, f"{path}.qkv") != "auto" or fused != inv.has("attn_qkv"):  # (other kinds' layers)
            self.decide(f"{path}.qkv", "fused" if fused else "separate",
                        self.tensor_why("attn_qkv", inv.presence("attn_qkv", members), self.among(members)))
        for p, slot in (("q", "attn_q"), ("k", "attn_k"), ("v", "attn_v"), ("o", "attn_output")):
            bias = "attn_qkv_bias" if fused and p != "o" else f"{slot}_bias"
            found = inv.presence(bias, members)
            self.presence(f"{path}.bias.{p}", found, self.tensor_why(bias, found))
        self.qk_norm(path)
        self.output_gate(path, members, fused)
        sinks = inv.presence("attn_sinks", members)
        self.decide(f"{path}.sinks", sinks != "none", self.tensor_why("attn_sinks", sinks))
        self.sliding_window(path)

    def output_gate(self, path: str, members: frozenset[int], fused: bool) -> None:
        """A gate of each head's output, stored after its queries in attn_q: twice the query rows."""
        inv = self.inv
        heads = int(inv.value("{arch}.attention.head_count", 0) or 0)
        hidden = int(inv.value("{arch}.embedding_length", 0) or 0)
        head_dim = int(inv.value("{arch}.attention.key_length", hidden // heads if heads else 0) or 0)
        shapes = {inv.tensors[n].shape[0] for i in members
                  if (n := inv.name("attn_q").replace("{i}", str(i))) in inv.tensors}
        if fused or len(shapes) != 1 or not heads:
            return
        rows = shapes.pop()
        gated = rows == 2 * heads * head_dim
        if gated or get_path(self.data, f"{path}.output_gate") != "none":
            self.decide(f"{path}.output_gate", "sigmoid" if gated else "none",
                        f"attn_q has {rows} rows{' = 2' if gated else ', not 2'} x head_count ({heads}) x head_dim "
                        f"({head_dim}){': queries then gates' if gated else ''}")

    def qk_norm(self, path: str) -> None:
        inv = self.inv
        if not inv.has("attn_q_norm"):
            if get_path(self.data, f"{path}.qk_norm") is not None:
                self.decide(f"{path}.qk_norm", None, "no attn_q_norm tensors")
            return
        heads = int(inv.value("{arch}.attention.head_count", 1) or 1)
        hidden = int(inv.value("{arch}.embedding_length", 0) or 0)
        head_dim = int(inv.value("{arch}.attention.key_length", hidden // heads) or 0)
        shape = inv.shape("attn_q_norm") or (0,)
        width = shape[-1]
        if len(shape) == 2 and shape[0] == heads:
            over, why = "each_head", f"attn_q_norm.weight is {list(shape)}: weights of its own for each head"
        else:
            over = "all" if width == heads * head_dim and width != head_dim else "head"
            why = f"attn_q_norm.weight has {width} values: {'one norm over all heads' if over == 'all' else 'head_dim'}"
        kind = (get_path(self.data, f"{path}.qk_norm") or QKNorm().model_dump())["kind"]
        norm: dict[str, Any] = {"kind": kind, "over": over}
        bias = "required" if inv.has("attn_q_norm_bias") else "none"
        if (bias == "none") != ((get_path(self.data, "norm.bias") or "none") == "none"):
            norm["bias"] = bias  # unlike the model's other norms
        self.decide(f"{path}.qk_norm", norm, why)
        if inv.has("attn_q_norm_bias"):
            self.decide(f"{path}.qk_norm.kind", "layernorm", "attn_q_norm bias tensors")
        else:
            self.assume(f"{path}.qk_norm.kind")

    def sliding_window(self, path: str) -> None:
        inv = self.inv
        pattern = inv.value(SLIDING_WINDOW_PATTERN)
        if pattern is not None:
            period = int(pattern) if isinstance(pattern, int) else 0
            layers = [True] * (period - 1) + [False] if period > 0 else [bool(x) for x in pattern]
            self.decide(f"{path}.sliding_window", layers or "none", f"{inv.key(SLIDING_WINDOW_PATTERN)}")
        elif int(inv.value("{arch}.attention.sliding_window", 0) or 0) > 0:
            self.assume(f"{path}.sliding_window")

    def ffns(self) -> None:
        listed = self.sections("ffn")
        for path, part in listed:
            if part.kind == "routed":
                self.experts(path, part.members)
            elif part.kind == "dense":
                self.dense(path, part.members)
            else:
                self.by_slots("ffn", path, part.kind, part.members)
        if get_path(self.data, "ffn.activation") is None:
            return  # no MLP
        self.assume("ffn.activation")
        activation = get_path(self.data, "ffn.activation")
        for path, _ in listed[:-1]:  # one activation for the model's MLPs, dense and experts alike
            self.decide(f"{path}.activation", activation, "as ffn.activation (the last section's)")

    def dense(self, path: str, members: frozenset[int]) -> None:
        inv = self.inv
        among = "layer" if len(members) == inv.n_layers else "dense layer"
        ff = int(inv.value("{arch}.feed_forward_length", 0) or 0)
        up_rows = (inv.shape("ffn_up") or (0,))[0]
        has_gate = inv.presence("ffn_gate", members)
        fused = has_gate == "none" and ff > 0 and up_rows == 2 * ff
        gated = fused or has_gate != "none"
        self.decide(f"{path}.gated", gated, self.tensor_why("ffn_gate", has_gate, among) if not fused
                    else f"ffn_up has {up_rows} rows = 2 x feed_forward_length: [gate; up]")
        if gated:
            self.decide(f"{path}.gate_up", "fused" if fused else "separate",
                        f"ffn_up has {up_rows} rows, feed_forward_length is {ff}")
        found = inv.presence("ffn_down_bias", members)
        self.presence(f"{path}.bias", found, self.tensor_why("ffn_down_bias", found, among))

    def experts(self, path: str, members: frozenset[int]) -> None:
        inv = self.inv
        among = "layer" if len(members) == inv.n_layers else "layer with experts"
        fused = inv.has("ffn_gate_up_exps", members)
        gate = inv.presence("ffn_gate_exps", members)
        gated = fused or gate != "none"
        self.decide(f"{path}.gated", gated, "ffn_gate_up_exps tensors" if fused
                    else self.tensor_why("ffn_gate_exps", gate, among))
        if gated:
            self.decide(f"{path}.gate_up", "fused" if fused else "separate",
                        self.tensor_why("ffn_gate_up_exps", inv.presence("ffn_gate_up_exps", members), among))
        for switch, slot in (("router_bias", "ffn_gate_inp_bias"), ("selection_bias", "exp_probs_b"),
                             ("bias", "ffn_down_exps_bias")):
            found = inv.presence(slot, members)
            self.presence(f"{path}.{switch}", found, self.tensor_why(slot, found, among))
        gating = EXPERT_GATING_VALUES.get(inv.value(EXPERT_GATING, 0))
        if gating:
            self.decide(f"{path}.gating", gating, f"{inv.key(EXPERT_GATING)} = {inv.value(EXPERT_GATING)}")
        else:
            self.assume(f"{path}.gating")
        if not inv.has_key(KEYS["expert_weights_norm"][0]):
            self.assume_hparam("expert_weights_norm")
        self.shared(path, members, among)

    def shared(self, path: str, members: frozenset[int], among: str) -> None:
        """Shared experts from their tensors: a sigmoid gate when ffn_gate_inp_shexp is there; their width
        from its key, else from the shared expert count, else from the tensor."""
        inv = self.inv
        up = inv.presence("ffn_up_shexp", members)
        if up == "none":
            if get_path(self.data, f"{path}.shared") is not None:
                self.decide(f"{path}.shared", None, "no ffn_up_shexp tensors")
            return
        gate = inv.presence("ffn_gate_inp_shexp", members)
        shared: dict[str, Any] = {"gate": "sigmoid" if gate != "none" else "none"}
        bias = inv.presence("ffn_down_shexp_bias", members)
        if bias != "none":
            shared["bias"] = bias
        why = self.tensor_why("ffn_up_shexp", up, among) + "; " + self.tensor_why("ffn_gate_inp_shexp", gate, among)
        self.decide(f"{path}.shared", shared, why)
        if file_int(inv, "expert_shared_intermediate_size") is not None:
            return  # the width key: the base's rule, or hparams() adds one
        rows = (inv.shape("ffn_up_shexp") or (0,))[0]
        count, width = file_int(inv, "expert_shared_count"), file_int(inv, "expert_intermediate_size")
        absent = f"no {inv.key(KEYS['expert_shared_intermediate_size'][0])}"
        if count and width and rows == count[1] * width[1]:
            self.decide("hparams.expert_shared_intermediate_size.default",
                        {"product": ["expert_intermediate_size", "expert_shared_count"]},
                        f"{absent}; ffn_up_shexp has {rows} rows = {count[0]} ({count[1]}) x {width[0]} ({width[1]})")
        else:
            self.decide("hparams.expert_shared_intermediate_size.default", rows,
                        f"{absent}; ffn_up_shexp has {rows} rows")

    def assume_hparam(self, name: str) -> None:
        path = f"hparams.{name}"
        if (key := self.given_at(path)) is not None:
            self.decide(path, self.given[key], GIVEN)
            return
        rule = get_path(self.data, path)
        value = rule.get("default") if isinstance(rule, dict) else None
        if value is None:
            value = FIELD_BY_NAME[name].default
        self.decisions.append(Decision(path, value, ASSUMPTIONS[path][1], assumed=True))

    def output(self) -> None:
        inv = self.inv
        if get_path(self.data, "norm.parametric"):
            found = inv.presence("output_norm")
            self.decide("output.norm", found != "none", self.tensor_why("output_norm", found))
        bias = inv.presence("output_bias")
        self.presence("output.bias", bias, self.tensor_why("output_bias", bias))

    # ------------------------------------------------------------------------------------ hparams

    def hparams(self) -> None:
        inv = self.inv
        unused = _kind_fields(list(MIXER_KINDS.values()) + list(FFN_KINDS.values())) - _kind_fields(
            [type(s) for s in _sections(_validated(self.data))])
        for name, templates in KEYS.items():
            present = [t for t in templates if inv.has_key(t)]
            if name not in FIELD_BY_NAME or not present or name in unused:  # a field of kinds not drafted
                continue
            rule = getattr(self.base.hparams, name)
            base_keys = rule.keys() if isinstance(rule, HParam) else []
            if present[0] not in base_keys:
                self.decide(f"hparams.{name}", {"key": present[0]}, f"the file has {inv.key(present[0])}")
        if inv.has_key(KEYS["attn_temperature_scale"][0]) and not inv.has_key(KEYS["attn_temperature_length"][0]):
            self.assume_hparam("attn_temperature_length")
        path = "hparams.yarn_log_multiplier"
        if inv.has_key(KEYS["yarn_log_multiplier"][0]) and self.given_at(path) is None:
            self.decisions.append(Decision(path, get_path(self.data, path), ASSUMPTIONS[path][1], assumed=True))

    # ------------------------------------------------------------------------------------ tensors

    def tensors(self, spec: Spec) -> None:
        """Templates for the slots the drafted switches read, where the base has none or another name."""
        inv = self.inv
        facts = FileFacts(fused_qkv=inv.has("attn_qkv"))
        templates = get_path(self.data, "tensors") or {}
        layer: dict[str, Any] = {}
        for mixer in spec.mixer:
            for ffn in spec.ffn:
                layer.update(layer_slots(spec, facts, mixer, ffn))
        for group, slots in (("global", global_slots(spec, facts)), ("layer", layer)):
            for slot in slots:
                ref = (templates.get(group) or {}).get(slot)
                ref = {"name": ref} if isinstance(ref, str) else ref  # a template given with --set
                standard = inv.name(slot)
                if ref is None:
                    self.decide(f"tensors.{group}.{slot}", standard, "llama.cpp's tensor name")
                elif ref["name"] != standard and inv.has(slot) and \
                        ref["name"].replace("{i}", "0") not in inv.tensors:
                    self.decide(f"tensors.{group}.{slot}.name", standard, f"the file has {standard}")
        output = (templates.get("global") or {}).get("output")
        if not inv.has("output") and (output is None or output.get("if_absent") is None):
            self.decide("tensors.global.output", {"name": inv.name("output"), "if_absent": "token_embd"},
                        "no output.weight: the token embedding stands in (tied)")

    def given_rest(self) -> None:
        decided = {d.path for d in self.decisions}
        for path, value in self.given.items():
            if path not in decided and path not in self.used:
                self.decide(path, value, GIVEN)


def infer(inv: Inventory, base: Spec, given: dict[str, Any] | None = None) -> Draft:
    """Decisions for a spec serving `inv`'s architecture on top of `base`; `given` (dotted path -> value)
    overrides anything, and settles what the file cannot."""
    given_names = {path.split(".")[-1]: value for path, value in (given or {}).items()
                   if path.startswith(("tensors.global.", "tensors.layer.")) and isinstance(value, str)}
    inv = inv.named({**_templates(base), **given_names})  # names given on the command line: the file's
    d = _Drafter(inv, base, dict(given or {}))
    d.kinds()
    d.extra_blocks()
    d.norms()
    d.block()
    d.mixers()
    d.ffns()
    d.output()
    d.hparams()
    d.given_rest()
    d.tensors(_validated(d.data))
    return Draft(inv, base, d.decisions, d.data, _unread(inv, _validated(d.data)))


def _kind_fields(kinds: list[type[KindSection]]) -> set[str]:
    return {f.name for cls in kinds for f in cls.FIELDS}


def _sections(spec: Spec) -> list[KindSection]:
    """The spec's mixer and ffn sections, and the branches of those that have some."""
    out: list[KindSection] = []
    for section in [*spec.mixer, *spec.ffn]:
        out += [section, *getattr(section, "branches", [])]
    return out


def _templates(spec: Spec) -> dict[str, str]:
    """The spec's tensor name template of each slot."""
    tensors = spec.model_dump(by_alias=True)["tensors"]
    return {slot: ref["name"] for group in ("global", "layer") for slot, ref in (tensors.get(group) or {}).items()
            if isinstance(ref, dict)}


def _validated(data: dict[str, Any]) -> Spec:
    try:
        return Spec.model_validate({**copy.deepcopy(data), "name": "draft"})
    except ValidationError as e:  # a value given on the command line that the spec language rejects
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise InputError(f"the drafted spec is not valid: {problems}") from None


def _unread(inv: Inventory, spec: Spec) -> list[str]:
    read = {inv.key(k) for _, rule in spec.hparams for k in (rule.keys() if isinstance(rule, HParam) else [])}
    return [k for k in inv.arch_keys() if k not in read]

