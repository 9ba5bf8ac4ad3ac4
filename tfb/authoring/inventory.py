"""What a GGUF file says about its architecture, for `tfb draft`: its metadata under `{arch}.` and which
tensors each layer has, in llama.cpp's naming (gguf.constants)."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from tfb.gguf.reader import GGUFFile, MetaValue, TensorInfo
from tfb.spec.schema import GLOBAL_SLOTS

Presence = Literal["none", "required", "optional"]
_LAYER = re.compile(r"^blk\.(\d+)\.")
NEXTN_KEY = "{arch}.nextn_predict_layers"  # llama.cpp counts these blocks in block_count and does not run them


def standard_name(slot: str) -> str:
    """llama.cpp's tensor name for a tfb slot: `attn_q` -> `blk.{i}.attn_q.weight`, `attn_q_bias` ->
    `blk.{i}.attn_q.bias`; the expert selection bias is stored as `exp_probs_b.bias`."""
    if slot == "exp_probs_b":
        stem, kind = slot, "bias"
    elif slot.endswith("_bias"):
        stem, kind = slot.removesuffix("_bias"), "bias"
    else:
        stem, kind = slot, "weight"
    return f"{stem}.{kind}" if slot in GLOBAL_SLOTS else f"blk.{{i}}.{stem}.{kind}"


@dataclass(frozen=True)
class Inventory:
    path: str
    arch: str
    metadata: Mapping[str, MetaValue]
    tensors: Mapping[str, TensorInfo]
    n_layers: int  # the layers a model runs: the file's blocks less the next-token-prediction ones
    extra_blocks: int = 0  # trailing blocks that predict further tokens ({arch}.nextn_predict_layers)
    templates: Mapping[str, str] = field(default_factory=dict)  # slot -> a base spec's name for it

    def named(self, templates: Mapping[str, str]) -> Inventory:
        """This inventory reading each slot by `templates` (a base spec's tensor names: `ssm_a` ->
        `blk.{i}.ssm_a`) where they differ from the names the slot's own name makes."""
        return replace(self, templates=dict(templates))

    @classmethod
    def read(cls, gguf: GGUFFile) -> Inventory:
        arch = gguf.architecture or gguf.path.stem
        layers = [int(m.group(1)) for name in gguf.tensors if (m := _LAYER.match(name))]
        count = gguf.metadata.get(f"{arch}.block_count")
        n_layers = count.value if count is not None and isinstance(count.value, int) else max(layers, default=-1) + 1
        nextn = gguf.metadata.get(NEXTN_KEY.replace("{arch}", arch))
        extra = nextn.value if nextn is not None and isinstance(nextn.value, int) and 0 < nextn.value < n_layers else 0
        return cls(str(gguf.path), arch, dict(gguf.metadata), dict(gguf.tensors), n_layers - extra, extra)

    # ------------------------------------------------------------------------------------ metadata

    def key(self, template: str) -> str:
        return template.replace("{arch}", self.arch)

    def has_key(self, template: str) -> bool:
        return self.key(template) in self.metadata

    def value(self, template: str, default: Any = None) -> Any:
        meta = self.metadata.get(self.key(template))
        return default if meta is None else meta.value

    def arch_keys(self) -> list[str]:
        return sorted(k for k in self.metadata if k.startswith(f"{self.arch}."))

    # ------------------------------------------------------------------------------------- tensors

    def name(self, slot: str) -> str:
        """The slot's tensor name template as this file stores it: the base spec's name, else the standard
        one, else either without its `.weight` suffix (converters write some norms so); when the file has
        none of them, the base spec's name."""
        names = [self.templates.get(slot) or standard_name(slot), standard_name(slot)]
        names += [n.removesuffix(".weight") for n in names if n.endswith(".weight")]
        return next((n for n in names if self._stored(n)), names[0])

    def _stored(self, name: str) -> bool:
        if "{i}" not in name:
            return name in self.tensors
        return any(name.replace("{i}", str(i)) in self.tensors for i in range(self.n_layers))

    def has(self, slot: str, layers: Collection[int] | None = None) -> bool:
        """The slot's standard tensor is in the file (in any layer, or any of `layers`, for per-layer slots)."""
        return self.presence(slot, layers) != "none"

    def presence(self, slot: str, layers: Collection[int] | None = None) -> Presence:
        """required: in the file (in every layer, or every one of `layers`); optional: in some of them only;
        none: absent."""
        name = self.name(slot)
        if "{i}" not in name:
            return "required" if name in self.tensors else "none"
        among = range(self.n_layers) if layers is None else layers
        found = len(self.layers_with(slot) & set(among))
        return "none" if found == 0 else "required" if found == len(among) else "optional"

    def layers_with(self, slot: str) -> set[int]:
        """The layers that have the slot's tensor."""
        name = self.name(slot)
        return {i for i in range(self.n_layers) if name.replace("{i}", str(i)) in self.tensors}

    def shape(self, slot: str) -> tuple[int, ...] | None:
        """The shape of the slot's tensor (of the first layer that has it)."""
        name = self.name(slot)
        for i in range(max(self.n_layers, 1)):
            info = self.tensors.get(name.replace("{i}", str(i)))
            if info is not None:
                return info.shape
        return None
