"""A readable report of a GGUF file, for `tfb inspect`: header, config and tokenizer need no torch; the check
of the tensors against the spec builds the modules a load would (torch)."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from tfb.config import HPARAM_FIELDS, ModelConfig
from tfb.errors import TfbError
from tfb.gguf.reader import GGUFFile, MetaValue, TensorInfo
from tfb.hparams import build_config
from tfb.sources import WeightSource, open_source
from tfb.spec.match import spec_for_file
from tfb.spec.schema import Spec

_LAYER = re.compile(r"blk\.(\d{1,9})\.(.+)", re.DOTALL)  # a 5000-digit index is no layer (and int() refuses it)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _plain(value: object, limit: int = 120) -> str:
    """A metadata value on one line: the file may put newlines or terminal codes in any string."""
    text = str(value)
    text = text if len(text) <= limit else text[:limit] + "..."
    return text.translate(_ONE_LINE)


_ONE_LINE = {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def _length(meta: MetaValue | None) -> str:
    """How many elements an array holds, saying so when the file put something else there."""
    if meta is None:
        return "0"
    return str(len(meta.value)) if meta.is_array else f"? (a {meta.type}, not an array)"


def _token(meta: dict[str, MetaValue], key: str) -> str:
    tokens = meta.get("tokenizer.ggml.tokens")
    idx = meta.get(key)
    if idx is None:
        return "none"
    text = ""
    if tokens is not None and tokens.type == "array[string]" and isinstance(idx.value, int) \
            and 0 <= idx.value < len(tokens.value):
        text = f" {tokens.value[idx.value]!r}"
    return f"{_plain(idx.value)}{text}"


def tokenizer_summary(meta: dict[str, MetaValue]) -> list[str]:
    model = meta.get("tokenizer.ggml.model")
    if model is None:
        return ["  (no tokenizer in this file)"]
    pre = meta.get("tokenizer.ggml.pre")
    lines = [f"  model: {_plain(model.value)}   pre-tokenizer: {_plain(pre.value) if pre else 'default'}   "
             f"tokens: {_length(meta.get('tokenizer.ggml.tokens'))}   "
             f"merges: {_length(meta.get('tokenizer.ggml.merges'))}"]
    special = [f"{name} {_token(meta, f'tokenizer.ggml.{name}_token_id')}"
               for name in ("bos", "eos", "eot", "unknown", "padding")
               if f"tokenizer.ggml.{name}_token_id" in meta]
    lines.append("  special: " + (", ".join(special) or "none"))
    flags = [f"{k.split('.')[-1]}={_plain(meta[k].value)}" for k in ("tokenizer.ggml.add_bos_token",
                                                              "tokenizer.ggml.add_eos_token") if k in meta]
    if flags:
        lines.append("  flags: " + ", ".join(flags))
    template = meta.get("tokenizer.chat_template")
    shown = "none" if template is None else f"{len(template.value)} characters" if template.type == "string" \
        else f"? (a {template.type}, not text)"
    lines.append(f"  chat template: {shown}")
    return lines


def tensor_lines(tensors: list[TensorInfo], all_layers: bool) -> list[str]:
    def line(t: TensorInfo, name: str) -> str:
        return f"    {_plain(name):<34} {list(t.shape)!s:<22} {t.ggml_type.name:<8} {_size(t.nbytes):>10}"

    layers: dict[int, list[tuple[str, TensorInfo]]] = defaultdict(list)
    other: list[TensorInfo] = []
    for t in tensors:
        m = _LAYER.fullmatch(t.name)
        if m:
            layers[int(m.group(1))].append((m.group(2), t))
        else:
            other.append(t)
    out = ["  model-wide:"] + [line(t, t.name) for t in other]
    previous: list[tuple[str, tuple[int, ...], str]] | None = None
    for i in sorted(layers):
        signature = [(n, t.shape, t.ggml_type.name) for n, t in layers[i]]
        total = sum(t.nbytes for _, t in layers[i])
        if not all_layers and signature == previous:
            out.append(f"  blk.{i}: same tensors as the layer above ({_size(total)})")
            continue
        out.append(f"  blk.{i}: ({_size(total)})")
        out += [line(t, n) for n, t in layers[i]]
        previous = signature
    return out


def weights_summary(spec: Spec, config: ModelConfig, f: WeightSource) -> tuple[list[str], TfbError | None]:
    """What a load would find wrong with the file's tensors, found as a load finds it (nothing is converted;
    this imports torch to build the modules the plan comes from)."""
    from tfb.build import build_modules, check_layers_present, checked_plan, first_names, unread_tensors

    try:
        check_layers_present(spec, config, f.tensors.keys(), str(f.path))
        plan = checked_plan(build_modules(spec, config), spec, f)
    except TfbError as e:
        return [f"weights: cannot load ({e})"], e
    lines = [f"weights: the {len(plan)} tensors the spec reads are present, of the planned shapes and supported "
             "types"]
    unread = unread_tensors(config, spec, f, plan)
    if unread:
        lines.append(f"  not read by the spec: {first_names(unread)} (a load warns; `tfb check` says which switch "
                     "would read them)")
    return lines, None


def report(path: str | Path, spec: str | None = None, spec_dirs: tuple[str | Path, ...] = (),
           all_layers: bool = False) -> str:
    return inspect_file(path, spec, spec_dirs, all_layers)[0]


def inspect_file(path: str | Path, spec: str | None = None, spec_dirs: tuple[str | Path, ...] = (),
                 all_layers: bool = False) -> tuple[str, TfbError | None]:
    """The report, and the reason the file cannot run (no usable spec or config, a tensor a load would
    refuse), if any."""
    problem: TfbError | None = None
    with open_source(path, spec_dirs) as f:
        meta, tensors = f.metadata, list(f.tensors.values())
        total = sum(t.nbytes for t in tensors)
        types: dict[str, int] = defaultdict(int)
        for t in tensors:
            types[t.ggml_type.name] += t.nbytes
        kind = f"GGUF v{f.version}" if isinstance(f, GGUFFile) else "checkpoint directory (config.json + safetensors)"
        lines = [f"file: {f.path}   {kind}   {len(meta)} keys   {len(tensors)} tensors   "
                 f"{_size(total)} of weights",
                 f"architecture: {f.architecture or '(none)'}   name: "
                 f"{_plain(meta['general.name'].value) if 'general.name' in meta else '(none)'}",
                 "storage: " + ", ".join(f"{k} {_size(v)}" for k, v in sorted(types.items(), key=lambda kv: -kv[1]))]
        try:
            chosen = spec_for_file(f, spec, spec_dirs)
            config = build_config(chosen, meta, f.tensors.keys(), arch=f.architecture or chosen.name,
                                  where=str(f.path))
            lines.append(f"spec: {chosen.name}" + (f" (extends {chosen.extends})" if chosen.extends else ""))
            lines.append("config:")
            values = config.describe()
            for fld in HPARAM_FIELDS:
                lines.append(f"  {fld.name:<26} {values[fld.name]}")
            lines.append(f"  {'fused_qkv':<26} {config.fused_qkv}")
        except TfbError as e:
            lines.append(f"spec: none usable ({e})")
            problem = e
        else:
            weights, problem = weights_summary(chosen, config, f)
            lines += weights
        lines.append("tokenizer:")
        lines += tokenizer_summary(meta)
        lines.append("tensors:")
        lines += tensor_lines(tensors, all_layers)
    return "\n".join(lines), problem
