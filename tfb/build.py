"""Spec + config -> module tree; tensor templates + GGUF file -> weights in that tree.

The builder reads only the spec and the config; the loader only fills slots the spec asks for, through
one table that maps each tensor slot to the module that takes it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tfb.config import ModelConfig
from tfb.errors import InputError, TfbWarning, WeightError
from tfb.gguf.ggml_types import GGMLType
from tfb.gguf.reader import TensorInfo
from tfb.hparams import build_config
from tfb.nn.block import Block
from tfb.nn.ffn.routed import ExpertLinear
from tfb.nn.kinds import BuildContext, kind_of
from tfb.nn.linear import Embedding, Linear, Weight
from tfb.nn.mixers.attention import link_shared_kv
from tfb.nn.mlp import Activation
from tfb.nn.model import Transformer
from tfb.nn.norm import Norm
from tfb.nn.per_layer import OutputScale, PerLayerInput, PerLayerInputs
from tfb.quant import PackedTensor, is_supported
from tfb.quant.packed import weight_types
from tfb.sources import WeightSource, open_source
from tfb.spec.match import SpecRef, spec_for_file
from tfb.spec.schema import Spec
from tfb.spec.slots import FileFacts, global_slots, layer_sections, layer_slots, names_read, shown_selector

Progress = Callable[[int, int], None]
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_NATIVE = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


# ----------------------------------------------------------------------------------------------- modules


def build_block(spec: Spec, config: ModelConfig, layer: int, ctx: BuildContext) -> Block:
    """Layer `layer`: the mixer and feed-forward of the kinds its spec sections choose, around the norms."""
    mixer, ffn = layer_sections(spec, config, layer)
    c = config.layer(layer)
    ctx.layer = layer
    b = spec.block

    def norm() -> Norm:
        return ctx.norm(c.hidden_size, c.norm_eps)

    per_layer = None
    if spec.embedding.per_layer is not None and c.per_layer_embedding_size:
        per_layer = PerLayerInput(layer, c.hidden_size, c.per_layer_embedding_size,
                                  Activation(spec.embedding.per_layer.activation), norm())
    return Block(
        kind_of(mixer).build(mixer, c, ctx), kind_of(ffn).build(ffn, c, ctx),
        norm=norm() if b.pre_norm else None,
        ffn_norm=norm() if b.pre_norm and not c.parallel_residual and not ffn.ABSENT and not mixer.ABSENT
        and not ffn.OWN_PRE_NORM else None,
        post_attn_norm=norm() if b.post_norm and not mixer.ABSENT else None,
        post_ffn_norm=norm() if b.post_norm and not ffn.ABSENT else None,
        parallel=c.parallel_residual,
        residual_scale=c.residual_scale,
        per_layer=per_layer,
        output_scale=OutputScale() if b.output_scale != "none" else None,
    )


def build_modules(spec: Spec, config: ModelConfig, dtype: torch.dtype = torch.float32) -> Transformer:
    ctx = BuildContext(spec.norm.kind, spec.norm.weight_offset, 0)
    blocks = [build_block(spec, config, i, ctx) for i in range(config.n_layers)]
    link_shared_kv([block.mixer for block in blocks])
    final_norm = ctx.norm(config.hidden_size, config.norm_eps) if spec.output.norm else None
    per_layer = None
    if spec.embedding.per_layer is not None and config.per_layer_embedding_size:
        width = config.per_layer_embedding_size
        per_layer = PerLayerInputs(config.vocab_size, config.hidden_size, config.n_layers, width,
                                   ctx.norm(width, config.norm_eps))
    return Transformer(config, blocks, list(ctx.rotaries.values()), final_norm=final_norm,
                       learned_positions=spec.embedding.positions == "learned", dtype=dtype, spec_name=spec.name,
                       per_layer_inputs=per_layer)


# ----------------------------------------------------------------------------------------------- weights

# slot -> (module path under the model or under one block, method that takes the tensor); the kinds'
# own slots are found through their modules' TARGETS (tfb.nn.kinds)
GLOBAL_TARGETS: dict[str, tuple[str, str]] = {
    "token_embd": ("token_embd", "set_weight"),
    "position_embd": ("position_embd", "set_weight"),
    "output_norm": ("output_norm", "set_weight"),
    "output_norm_bias": ("output_norm", "set_bias"),
    "output": ("output", "set_weight"),
    "output_bias": ("output", "set_bias"),
    "per_layer_token_embd": ("per_layer_inputs.token_embd", "set_weight"),
    "per_layer_model_proj": ("per_layer_inputs.model_proj", "set_weight"),
    "per_layer_proj_norm": ("per_layer_inputs.proj_norm", "set_weight"),
}
BLOCK_TARGETS: dict[str, tuple[str, str]] = {
    "attn_norm": ("attn_norm", "set_weight"), "attn_norm_bias": ("attn_norm", "set_bias"),
    "post_attention_norm": ("post_attention_norm", "set_weight"),
    "post_attention_norm_bias": ("post_attention_norm", "set_bias"),
    "ffn_norm": ("ffn_norm", "set_weight"), "ffn_norm_bias": ("ffn_norm", "set_bias"),
    "post_ffw_norm": ("post_ffw_norm", "set_weight"), "post_ffw_norm_bias": ("post_ffw_norm", "set_bias"),
    "layer_output_scale": ("layer_output_scale", "set_weight"),
    "per_layer_inp_gate": ("per_layer.inp_gate", "set_weight"), "per_layer_proj": ("per_layer.proj", "set_weight"),
    "per_layer_post_norm": ("per_layer.post_norm", "set_weight"),
}
# modules whose weights stay in their storage type (quantized blocks); everything else is expanded to float
MATRIX_MODULES = (Linear, ExpertLinear, Embedding)


def layer_targets(spec: Spec, config: ModelConfig, layer: int) -> dict[str, tuple[str, str]]:
    """Slot -> (path under the block, method) for one layer's kinds."""
    mixer, ffn = layer_sections(spec, config, layer)
    out = dict(BLOCK_TARGETS)
    for prefix, section in (("mixer", mixer), ("ffn", ffn)):
        for slot, (path, method) in kind_of(section).targets_of(section).items():
            out[slot] = (f"{prefix}.{path}" if path else prefix, method)
    return out


class _Source:
    """Turns file tensors into torch values, keeping matrices compact and mmap-backed where possible."""

    def __init__(self, gguf: WeightSource, dtype: torch.dtype, expand: bool) -> None:
        self.gguf, self.dtype, self.expand = gguf, dtype, expand
        self.cache: dict[str, Any] = {}

    def raw(self, info: TensorInfo) -> torch.Tensor:
        return torch.from_numpy(self.gguf.tensor_data(info.name))

    def packed(self, info: TensorInfo, shape: tuple[int, ...]) -> PackedTensor:
        return PackedTensor(self.raw(info), info.ggml_type, shape, info.name)

    def value(self, slot: str, info: TensorInfo, matrix: bool, shape: tuple[int, ...]) -> Any:
        """The tensor as the planned `shape` (the file's, or it with leading 1s dropped: see same_shape)."""
        key = f"{info.name}:{matrix}:{shape}"
        if key not in self.cache:
            self.cache[key] = self._convert(slot, info, matrix, shape)
        return self.cache[key]

    def _convert(self, slot: str, info: TensorInfo, matrix: bool, shape: tuple[int, ...]) -> Weight:
        gtype: GGMLType = info.ggml_type
        if not matrix:  # vectors: norms stay float32, biases take the compute dtype
            value = self.packed(info, shape).dequantize(torch.float32)
            return value if "norm" in slot else value.to(self.dtype)
        if _NATIVE.get(gtype.name) is self.dtype and not self.expand:
            return self.raw(info).view(self.dtype).reshape(shape)  # zero copy
        packed = self.packed(info, shape)
        return packed.dequantize(self.dtype) if self.expand or gtype.name == "F32" else packed


def _target(root: torch.nn.Module, path: str) -> torch.nn.Module | None:
    node: Any = root
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node if isinstance(node, torch.nn.Module) else None


@dataclass(frozen=True)
class PlannedTensor:
    """One tensor the model reads: where it goes and what it must look like."""

    slot: str
    name: str  # the name in the file (the if_absent stand-in when that is what the file has)
    shape: tuple[int, ...]  # torch order
    need: str  # "required" or "optional"
    module: torch.nn.Module
    method: str
    present: bool


def plan_tensors(model: Transformer, spec: Spec, present: Collection[str]) -> list[PlannedTensor]:
    """Every tensor slot the spec and config use, resolved against the names present in a file."""
    c = model.config
    facts = FileFacts.of(c)
    plan: list[PlannedTensor] = []

    def add(group: str, slot: str, need: str, module: torch.nn.Module | None, method: str,
            layer: int | None = None) -> None:
        if module is None:
            return
        templates = spec.tensors.global_ if group == "global" else spec.tensors.layer
        ref = getattr(templates, slot)
        name = ref.name.replace("{i}", str(layer))
        if name not in present and ref.if_absent is not None:
            alt = getattr(templates, ref.if_absent).name.replace("{i}", str(layer))
            name = alt if alt in present else name
        need = "optional" if ref.optional else need
        shape = module.tensor_shape(method)  # type: ignore[operator]
        plan.append(PlannedTensor(slot, name, shape, need, module, method, name in present))

    for slot, need in global_slots(spec, facts).items():
        if slot in GLOBAL_TARGETS:
            path, method = GLOBAL_TARGETS[slot]
            add("global", slot, need, _target(model, path), method)
    if model.rotaries and any(s.uses_rope() for s in spec.mixer):
        # llama.cpp's choice: the fixed factor set if present, else the long factors when the run context
        # exceeds the original context, else the short ones. llama.cpp first rounds the context it is given
        # up to a multiple of 256, so a context at or below an original context that is not such a
        # multiple can still take the long factors there; so here.
        fixed = spec.tensors.global_.rope_freqs  # type: ignore[attr-defined]
        long = -(-c.run_context_length // 256) * 256 > c.rope_original_context
        slot = "rope_freqs" if fixed is not None and fixed.name in present else \
            "rope_factors_long" if long else "rope_factors_short"
        add("global", slot, "optional", model, "set_freq_factors")
    for i, block in enumerate(model.blocks):
        targets = layer_targets(spec, c, i)
        for slot, need in layer_slots(spec, facts, *layer_sections(spec, c, i)).items():
            path, method = targets[slot]
            add("layer", slot, need, _target(block, path), method, i)
    return plan


def same_shape(found: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """`found` is `expected`, possibly with leading 1s (torch order): llama.cpp accepts a tensor with extra
    trailing dimensions of 1 in ggml order (a [n, 1] bias or gate where a vector of n is expected) and ggml
    counts them out (ggml_n_dims)."""
    extra = len(found) - len(expected)
    return extra >= 0 and found[extra:] == expected and all(d == 1 for d in found[:extra])


def _check_tensor(gguf: WeightSource, planned: PlannedTensor, info: TensorInfo) -> None:
    if not same_shape(info.shape, planned.shape):
        raise WeightError(f"{gguf.path}: tensor {info.name!r} has shape {list(info.shape)}, expected "
                          f"{list(planned.shape)} from the config (check the spec's hparams against the file's "
                          "metadata)")
    if not is_supported(info.ggml_type):
        raise WeightError(f"{gguf.path}: tensor {info.name!r}: storage type {info.ggml_type.name} is not "
                          f"supported for weights (supported: {', '.join(weight_types())})")


def _missing_message(gguf_path: object, spec: Spec, missing: list[str]) -> str:
    return f"{gguf_path}: spec `{spec.name}` needs tensors the file lacks: {first_names(missing, 8)}"


def check_layers_present(spec: Spec, config: ModelConfig, present: Collection[str], where: str) -> None:
    """Refuse a file that lacks some layer's required tensors before building any block: a block costs
    about a millisecond, and a hostile file may claim thousands of layers it does not hold. The same
    rules as `plan_tensors`, from the spec alone."""
    templates = spec.tensors.layer
    facts = FileFacts.of(config)
    for i in range(config.n_layers):
        needed = []
        for slot, need in layer_slots(spec, facts, *layer_sections(spec, config, i)).items():
            ref = getattr(templates, slot)
            if need == "required" and not ref.optional:
                alt = getattr(templates, ref.if_absent).name if ref.if_absent is not None else None
                needed.append((ref.name, alt))
        missing = [name.replace("{i}", str(i)) for name, alt in needed
                   if name.replace("{i}", str(i)) not in present
                   and (alt is None or alt.replace("{i}", str(i)) not in present)]
        if missing:
            raise WeightError(_missing_message(where, spec, missing) + _layer_kinds(spec, config, i))


def _layer_kinds(spec: Spec, config: ModelConfig, layer: int) -> str:
    """Which kinds the spec's layer rules chose for `layer` and why, where it has a choice: a file whose
    per-layer values make a layer another kind than its tensors are shows it here."""
    if len(spec.mixer) == 1 and len(spec.ffn) == 1:
        return ""

    def why(sections: list[Any], chosen: Any) -> str:
        parts = []
        for section in sections:  # the rules that failed before the chosen one, and the chosen one's
            shown = shown_selector(section.layers, layer, config.value)
            if section is chosen:
                parts += [] if section.layers == "all" else [shown]
                break
            parts.append(f"not {section.kind}: {shown}")
        return "; ".join(parts) or "every layer"

    mixer, ffn = layer_sections(spec, config, layer)
    return (f" (layer {layer} is mixer `{mixer.kind}` ({why(spec.mixer, mixer)}) and ffn `{ffn.kind}` "
            f"({why(spec.ffn, ffn)}), as the spec's layer rules read the file)")


def checked_plan(model: Transformer, spec: Spec, gguf: WeightSource) -> list[PlannedTensor]:
    """The tensors a load reads, each present with the planned shape and a supported type, else the
    WeightError a load raises; nothing converted."""
    plan = [p for p in plan_tensors(model, spec, gguf.tensors.keys()) if p.present or p.need == "required"]
    missing = [p.name for p in plan if not p.present]
    if missing:
        raise WeightError(_missing_message(gguf.path, spec, missing))
    for p in plan:
        _check_tensor(gguf, p, gguf.tensors[p.name])
    return plan


def unread_tensors(config: ModelConfig, spec: Spec, gguf: WeightSource, plan: list[PlannedTensor]) -> list[str]:
    """The file's tensors that no slot of the spec reads, except those the spec leaves unread on purpose."""
    read = names_read(spec, config, FileFacts.of(config)) | {p.name for p in plan}
    return [name for name in gguf.tensors if name not in read and not spec.tensors.left_unread(name, config.n_layers)]


def load_weights(model: Transformer, spec: Spec, gguf: WeightSource, *, expand: bool = False,
                 progress: Progress | None = None) -> None:
    plan = checked_plan(model, spec, gguf)  # before converting anything: a mismatch must not cost a dequantization
    _warn_unread(gguf, spec, unread_tensors(model.config, spec, gguf, plan))
    source = _Source(gguf, model.dtype, expand)
    total = sum(gguf.tensors[p.name].nbytes for p in plan)
    done = 0
    for p in plan:
        info = gguf.tensors[p.name]
        matrix = isinstance(p.module, MATRIX_MODULES) and p.method == "set_weight"
        getattr(p.module, p.method)(p.name, source.value(p.slot, info, matrix, p.shape))
        done += info.nbytes
        if progress is not None:
            progress(done, total)


def _warn_unread(gguf: WeightSource, spec: Spec, unread: list[str]) -> None:
    """A file tensor that no slot reads is a part of the model left out (as llama.cpp, which refuses such
    files, would say): the logits are then likely not the model's."""
    if unread:
        warnings.warn(f"{gguf.path}: spec `{spec.name}` reads no tensor named {first_names(unread)}; the logits may "
                      f"not be the model's (`tfb check {gguf.path}` says which switch would read them)", TfbWarning,
                      stacklevel=3)


def first_names(names: list[str], shown: int = 4) -> str:
    """`a, b, c, d and 7 more`."""
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


# ------------------------------------------------------------------------------------------------- load


def load(path: str | Path, spec: SpecRef = None, *, dtype: torch.dtype = torch.float32,
         context_length: int | None = None, spec_dirs: tuple[str | Path, ...] = (), expand: bool = False,
         cache_dtype: torch.dtype | None = None, int8_activations: bool = False,
         progress: Progress | None = None) -> Transformer:
    """A GGUF file as a torch module in eval mode: `model(input_ids)` -> logits [batch, seq, vocab].

    spec: a Spec, a spec name or path; by default the spec that serves the file's general.architecture.
    dtype: compute dtype (float32, float16 or bfloat16). context_length: the context the model will run
    with (default: the file's training context); rope factor choices follow it as in llama.cpp.
    expand: expand quantized weights to `dtype` at load time (more memory; faster only for types without
    native kernels). cache_dtype: what the KV cache stores keys and values in (default: `dtype`);
    float16 halves the memory a long context needs and what each decoding step reads, as llama.cpp's
    default cache does, and rounds keys and values to float16. int8_activations: round activations to
    8 bits in the decoding steps' products with quantized weights, as llama.cpp does (faster; see
    Transformer.use_int8_activations); the default multiplies in float32.
    """
    for what, value in (("dtype", dtype), ("cache_dtype", cache_dtype)):
        if value is not None and value not in DTYPES:
            raise InputError(f"{what} {value} is not supported; use one of float32, float16, bfloat16")
    with open_source(path, spec_dirs) as gguf:  # closed on errors too: a rejected file must not hold a descriptor
        chosen = spec_for_file(gguf, spec, spec_dirs)
        config = build_config(chosen, gguf.metadata, gguf.tensors.keys(), arch=gguf.architecture or chosen.name,
                              where=str(gguf.path), context_length=context_length)
        check_layers_present(chosen, config, gguf.tensors.keys(), str(gguf.path))
        model = build_modules(chosen, config, dtype)
        load_weights(model, chosen, gguf, expand=expand, progress=progress)
    model.cache_dtype = cache_dtype
    model.use_int8_activations(int8_activations)
    return model.eval()
