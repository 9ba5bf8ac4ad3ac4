"""The architecture map in docs/support-matrix.md: every decoder-only text architecture of the pinned
llama.cpp, what it needs (tools/llama_cpp_architectures.yaml, written by hand) and its status, computed
from the packaged specs and the kinds tfb has."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import yaml

from tfb.spec.match import match_architecture

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from architecture_map import (  # noqa: E402
    DATA,
    FALLBACK_FFNS,
    FALLBACK_MIXERS,
    SPEC_SWITCHES,
    available_kinds,
    load_data,
    served_by,
    status,
    statuses,
)
from llama_cpp import VERSION, model_sources_dir  # noqa: E402
from support_matrix import OUTPUT  # noqa: E402

MAP = load_data()
FALLBACK = (FALLBACK_MIXERS, FALLBACK_FFNS)


def llama_cpp_graphs() -> dict[str, list[str]]:
    """src/models file stem -> the general.architecture names whose model class that file defines, read
    from llama.cpp itself: llama-model.cpp maps LLM_ARCH_X to class llama_model_<stem>, llama-arch.cpp
    maps LLM_ARCH_X to its name."""
    src = model_sources_dir() / "src"
    names = dict(re.findall(r'\{\s*(LLM_ARCH_\w+),\s*"([^"]+)"\s*\}', (src / "llama-arch.cpp").read_text()))
    built: dict[str, list[str]] = {}
    pairs = re.findall(r"case (LLM_ARCH_\w+):\s*return new llama_model_(\w+)\(", (src / "llama-model.cpp").read_text())
    assert len(pairs) > 150, "llama-model.cpp no longer maps architectures as this test reads them"
    for arch, cls in pairs:
        built.setdefault(cls, []).append(names[arch])
    return {path.stem: built.get(path.stem.replace("-", "_"), []) for path in (src / "models").glob("*.cpp")}


def map_rows() -> list[str]:
    section = OUTPUT.read_text().split("## llama.cpp architectures")[1].split("### What remains")[0]
    return [line for line in section.splitlines() if line.startswith("| `")]


def test_every_architecture_has_one_row_and_the_summary_counts_them() -> None:
    rows = map_rows()
    assert len(rows) == len(MAP.architectures)
    for entry in MAP.architectures.values():
        assert sum(row.startswith(f"| `{entry.arch[0]}`") for row in rows) == 1, entry.arch
    found = statuses(MAP).values()
    served = sum(s.spec is not None for s in found)
    assert f"**{served} of {len(MAP.architectures)} served**" in OUTPUT.read_text()
    assert "| `gpt-oss` (openai-moe.cpp) | served by `gpt-oss` |" in OUTPUT.read_text()


def test_the_data_file_covers_every_models_file_of_the_pinned_version() -> None:
    assert MAP.llama_cpp_python == VERSION, "the llama.cpp pin moved: review the map against its src/models"
    files = set(llama_cpp_graphs())
    listed = set(MAP.architectures) | {file for group in MAP.skipped.values() for file in group}
    assert not files - listed, f"src/models files neither mapped nor skipped: {sorted(files - listed)}"
    assert not listed - files, f"not src/models files: {sorted(listed - files)}"


def test_architecture_names_are_the_ones_llama_cpp_reads() -> None:
    graphs = llama_cpp_graphs()
    wrong = {file: (entry.arch, graphs[file]) for file, entry in MAP.architectures.items()
             if entry.arch != graphs[file]}
    assert not wrong, f"file: (data file's names, llama.cpp's): {wrong}"


def test_a_served_architecture_is_matched_by_its_spec_and_the_data_agrees_with_it() -> None:
    served = {file: s.spec for file, s in statuses(MAP).items() if s.spec is not None}
    assert len(served) >= 20
    for file, name in served.items():
        entry = MAP.architectures[file]
        spec = match_architecture(entry.arch[0])
        assert spec.name == name, f"{file}: tfb picks `{spec.name}`, the map says `{name}`"
        for feature, sets in SPEC_SWITCHES.items():
            assert not sets(spec) or feature in entry.features, \
                f"{file}: spec `{name}` sets {feature}; the data file does not list it"


def test_every_packaged_spec_serves_an_architecture_on_the_map() -> None:
    mapped = {arch for entry in MAP.architectures.values() for arch in entry.arch}
    assert set(served_by()) <= mapped, sorted(set(served_by()) - mapped)


def test_every_kind_and_feature_defined_is_used() -> None:
    used = {name for e in MAP.architectures.values() for name in (*e.mixer, *e.ffn, *e.features)}
    unused = (set(MAP.mixer_kinds) | set(MAP.ffn_kinds) | set(MAP.features)) - used
    assert not unused, sorted(unused)


def test_status_follows_the_kinds_features_and_specs_tfb_has(tmp_path: Path) -> None:
    mamba = MAP.architectures["mamba"]  # Mamba-1: a kind and a feature (no_ffn) to have
    without = MAP.model_copy(update={"spec_features": [f for f in MAP.spec_features if f != "no_ffn"]})
    assert status(mamba, without, {}, FALLBACK).text() == "missing: mamba1, no_ffn"
    with_kind = (FALLBACK_MIXERS | {"mamba1"}, FALLBACK_FFNS)
    assert status(mamba, without, {}, with_kind).text() == "missing: no_ffn"
    assert status(mamba, MAP, {}, with_kind).text() == "needs only a spec"

    (tmp_path / "my-mamba.yaml").write_text("extends: llama\nmatch: [mamba]\n")
    # a spec that names gpt-oss without its switches serves it only in part
    (tmp_path / "plain-oss.yaml").write_text("extends: llama\nmatch: [gpt-oss]\n")
    specs = served_by(tmp_path)
    assert status(mamba, MAP, specs, FALLBACK).text() == "served by `my-mamba`; lacks mamba1, no_ffn"
    oss = status(MAP.architectures["openai-moe"], MAP, specs, FALLBACK)
    assert oss.text() == "served by `plain-oss`; lacks sliding_window, sinks, softmax_selected_gating"


def test_available_kinds_reads_the_registry_and_falls_back_without_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tfb.spec.kinds", None)  # import fails
    assert available_kinds() == FALLBACK
    registry = types.ModuleType("tfb.spec.kinds")
    registry.MIXER_KINDS = {"attention": object()}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tfb.spec.kinds", registry)
    assert available_kinds() == FALLBACK  # a registry without FFN_KINDS is not one yet
    registry.MIXER_KINDS = {"attention": object(), "ssd": object()}  # type: ignore[attr-defined]
    registry.FFN_KINDS = {"dense": object()}  # type: ignore[attr-defined]
    assert available_kinds() == ({"attention", "ssd"}, {"dense"})


def test_an_undefined_kind_or_feature_is_named(tmp_path: Path) -> None:
    raw = yaml.safe_load(DATA.read_text())
    raw["architectures"]["llama"]["features"].append("rope_sclaing")
    raw["architectures"]["llama"]["mixer"] = ["atention"]
    raw["skipped"]["diffusion LMs"].append("llama")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as err:
        load_data(bad)
    message = str(err.value)
    assert "llama.mixer: `atention` is not defined" in message
    assert "llama.features: `rope_sclaing` is not defined" in message
    assert "skipped: `llama` is listed twice, or also under architectures" in message
