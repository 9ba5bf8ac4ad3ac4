"""Fuzzing the readers of untrusted input: whatever the bytes, the result is success or a tfb error.

GGUF: byte mutations, truncations with junk appended, structured random headers, random metadata values
(loaded and run when they load). Specs: YAML-ish text, binary junk and random structured spec dicts (run
on the tiny model when they validate). Examples are derandomized and bounded, so that CI is reproducible
and the whole file takes well under a minute.
"""

from __future__ import annotations

import math
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tfb
from tfb.errors import TfbError
from tfb.gguf.reader import GGUFFile
from tfb.spec import load_spec
from tfb.spec.fields import FIELDS
from tfb.spec.schema import GLOBAL_SLOTS, LAYER_SLOTS

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from gguf_layout import FORMATS, TYPE_IDS, Layout, TensorEntry, gguf_string, u32, u64  # noqa: E402
from make_hostile_gguf import make_base  # noqa: E402

# a mutated file or spec may leave tensors unread: tfb.load then warns, which is one of the clean outcomes
pytestmark = pytest.mark.filterwarnings("ignore::tfb.errors.TfbWarning")
FUZZ = settings(derandomize=True, database=None, deadline=2000, max_examples=150,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 31, 32, 33, 255, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32,
               2**62, 2**63 - 1, 2**63, 2**64 - 32, 2**64 - 1]
FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 4.0, 1e-30, 1e-6, 1e4, 1e30, 3e38, 1e300, float("nan"), float("inf"),
          float("-inf")]
WORDS = ["yarn", "linear", "longrope", "none", "llama", "", "\x1b[2J", "\udcff"]
TOKENS = torch.tensor([[1, 3, 4]])


class Files:
    """The tiny base model, and one scratch path per test rewritten for each example."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base_path = root / "base.gguf"
        self.base = make_base(self.base_path)
        self.layout = Layout.read(self.base_path)
        with GGUFFile(self.base_path) as f:
            self.header_end = f.data_offset

    def write(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return Files(tmp_path_factory.mktemp("fuzz"))


def read_or_tfb_error(path: Path) -> bool:
    """True when the file parses; any exception but a tfb error fails the test."""
    try:
        GGUFFile(path).close()
    except TfbError:
        return False
    return True


def load_and_run_or_tfb_error(path: Path, spec: Any = None) -> None:
    try:
        model = tfb.load(path, spec=spec)
        with torch.no_grad():
            model(TOKENS)
    except TfbError:
        pass


# ------------------------------------------------------------------------------------------------- GGUF


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), min_size=1, max_size=8))
def test_gguf_byte_mutations(files: Files, edits: list[tuple[int, int]]) -> None:
    data = bytearray(files.base)
    for at, value in edits:  # mostly in the header, where the structure is
        data[at % (files.header_end + 64)] = value
    path = files.write("mutated.gguf", bytes(data))
    if read_or_tfb_error(path):
        load_and_run_or_tfb_error(path)


@FUZZ
@given(at=st.integers(0, 2**20), width=st.sampled_from([4, 8]), value=st.sampled_from(INTERESTING))
def test_gguf_interesting_integers(files: Files, at: int, width: int, value: int) -> None:
    """Counts, lengths, type ids and offsets replaced by boundary values, wherever they fall."""
    data = bytearray(files.base)
    at %= files.header_end - width
    data[at:at + width] = (value % 2 ** (8 * width)).to_bytes(width, "little")
    path = files.write("integer.gguf", bytes(data))
    if read_or_tfb_error(path):
        load_and_run_or_tfb_error(path)


@FUZZ
@given(cut=st.integers(0, 2**20), junk=st.binary(max_size=64))
def test_gguf_truncated_with_junk(files: Files, cut: int, junk: bytes) -> None:
    path = files.write("cut.gguf", files.base[:cut % len(files.base)] + junk)
    read_or_tfb_error(path)


def value_records() -> st.SearchStrategy[bytes]:
    """A typed metadata value: well-formed of any type, or a random type id and payload."""
    numbers = st.sampled_from([n for n in FORMATS if n != "bool"]).flatmap(
        lambda t: st.sampled_from(FLOATS if t.startswith("float") else [*INTERESTING, -1]).map(
            lambda v: _pack(t, v)))
    words = st.one_of(st.sampled_from(WORDS), st.binary(max_size=16))
    strings = words.map(lambda b: u32(8) + gguf_string(b))
    arrays = st.tuples(st.sampled_from([*TYPE_IDS.values(), 13, 99]), st.sampled_from(INTERESTING),
                       st.binary(max_size=32)).map(lambda t: u32(9) + u32(t[0]) + u64(t[1]) + t[2])
    junk = st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=16)).map(lambda t: u32(t[0]) + t[1])
    return st.one_of(numbers, strings, arrays, junk)


def _pack(type_name: str, value: float) -> bytes:
    fmt = FORMATS[type_name]
    if fmt in ("<f", "<d"):
        fits = fmt == "<d" or not math.isfinite(value) or abs(value) <= 3e38  # float32 overflows past that
        return u32(TYPE_IDS[type_name]) + struct.pack(fmt, value if fits else 3e38)
    bits = struct.calcsize(fmt) * 8
    return u32(TYPE_IDS[type_name]) + (value % 2**bits).to_bytes(bits // 8, "little")


tensor_infos = st.builds(
    TensorEntry,
    name=st.sampled_from([b"a", b"b", b"", b"blk.0.attn_q.weight", b"\xff\xfe"]),
    dims=st.lists(st.sampled_from(INTERESTING), min_size=0, max_size=5),
    type_id=st.sampled_from([0, 1, 2, 4, 8, 9, 12, 15, 30, 39, 41, 42, 1000, 2**32 - 1]),
    data=st.binary(max_size=64),
    offset=st.one_of(st.none(), st.sampled_from(INTERESTING)),
)


@FUZZ
@given(version=st.sampled_from([2, 3, 0, 1, 2**24 + 3]),
       kv=st.lists(st.tuples(st.sampled_from(["general.alignment", "general.architecture", "a", "a", ""]),
                             value_records()), max_size=6),
       tensors=st.lists(tensor_infos, max_size=4),
       n_tensors=st.one_of(st.none(), st.sampled_from(INTERESTING)),
       n_kv=st.one_of(st.none(), st.sampled_from(INTERESTING)))
def test_gguf_structured_headers(files: Files, version: int, kv: list[tuple[str, bytes]],
                                 tensors: list[TensorEntry], n_tensors: int | None, n_kv: int | None) -> None:
    layout = Layout(version=version, kv=[(k, gguf_string(k) + v) for k, v in kv], tensors=tensors,
                    alignment=32, n_tensors=n_tensors, n_kv=n_kv)
    path = files.write("structured.gguf", layout.to_bytes())
    read_or_tfb_error(path)


def config_keys() -> list[str]:
    """Every metadata key the `llama` spec reads, and the two that pick the spec and the vocabulary."""
    hparams = load_spec("llama").hparams
    rules = [getattr(hparams, f.name) for f in FIELDS]
    templates = [template for rule in rules if rule is not None for template in rule.keys()]  # noqa: SIM118
    return sorted({t.replace("{arch}", "llama") for t in templates} | {"general.architecture",
                                                                      "tokenizer.ggml.tokens"})


CONFIG_KEYS = config_keys()


@FUZZ
@given(changes=st.lists(st.tuples(st.sampled_from(CONFIG_KEYS), value_records()), min_size=1, max_size=3))
def test_gguf_metadata_values_load_or_fail_cleanly(files: Files, changes: list[tuple[str, bytes]]) -> None:
    """Random values under the keys the config reads: the model loads and runs, or a tfb error says why."""
    layout = files.layout.copy()
    for key, value in changes:
        layout.set(key, value)
    path = files.write("metadata.gguf", layout.to_bytes())
    if read_or_tfb_error(path):
        load_and_run_or_tfb_error(path)


# ------------------------------------------------------------------------------------------------ specs


def load_spec_or_tfb_error(path: Path) -> Any:
    try:
        return load_spec(path)
    except TfbError:
        return None


YAML_PIECES = [*"abxyz_{}[]:,-!&*|>'\"#%@`?.0123456789 \n\t\\",
    "extends: llama\n", "match: [x]\n", "hparams:\n", "  ", "\n- ", "!!python/object/apply:os.system ",
    "&a ", "*a", "<<: ", ".nan", ".inf", "1e400", "~", "\x00", "\ufeff", "\udcff", "!!binary ", "? ",
    "--- ", "...\n", "%YAML 1.1\n", "9" * 50, "norm: ", "rmsnorm", "mixer: {", "}", "[[[[", "]]]]",
]


@FUZZ
@given(pieces=st.lists(st.sampled_from(YAML_PIECES), max_size=60))
def test_spec_yamlish_text(files: Files, pieces: list[str]) -> None:
    path = files.root / "fuzz.yaml"
    path.write_bytes("".join(pieces).encode("utf-8", "surrogatepass"))
    load_spec_or_tfb_error(path)


@FUZZ
@given(data=st.binary(max_size=512))
def test_spec_binary_junk(files: Files, data: bytes) -> None:
    path = files.root / "junk.yaml"
    path.write_bytes(data)
    load_spec_or_tfb_error(path)


JUNK = st.sampled_from([None, 0, -1, 1.5, True, "bogus", "", [], {}, [1, "a"], {"a": 1}, 10**30])


def word(*choices: Any) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(choices), JUNK)


PATTERN = st.one_of(st.sampled_from(["all", "none"]), st.lists(st.booleans(), max_size=3), JUNK)
NUMBER = st.one_of(st.sampled_from([0, 1, 2, 3, 8, 32, -1, 0.5, 1e-6, 2**31, 10**12]), JUNK)
FIELD = st.sampled_from([f.name for f in FIELDS] + ["nosuch"])
DERIVED = st.one_of(
    st.fixed_dictionaries({"field": FIELD}), st.fixed_dictionaries({"quotient": st.tuples(FIELD, NUMBER).map(list)}),
    st.fixed_dictionaries({"product": st.tuples(FIELD, FIELD).map(list)}), st.fixed_dictionaries({"sqrt": FIELD}),
    st.fixed_dictionaries({"inverse_sqrt": NUMBER}), st.fixed_dictionaries({"length_of": st.just("llama.nosuch")}),
    st.fixed_dictionaries({"field": FIELD, "sqrt": FIELD}))
RULE = st.one_of(NUMBER, word("linear", "yarn", "{arch}.x"),
                 st.fixed_dictionaries({}, optional={"key": word("{arch}.nosuch", "{arch}.block_count", "{x}"),
                                                     "default": st.one_of(NUMBER, DERIVED)}))
TEMPLATE = st.one_of(word("blk.{i}.attn_q.weight", "token_embd.weight", "blk.{i}.nosuch", "{j}", "x"),
                     st.fixed_dictionaries({"name": word("blk.{i}.ffn_up.weight")},
                                           optional={"optional": st.booleans(), "if_absent": word("attn_q", "x")}))
SPEC = st.fixed_dictionaries({"extends": word("llama", "gguf-decoder", "nosuch", "qwen2", "x" * 300,
                                              "a\x00b.yaml", "../llama.yaml")}, optional={
    "match": word(["x"], []), "abstract": st.booleans(),
    "norm": st.one_of(word("rmsnorm", "layernorm"), st.fixed_dictionaries({}, optional={
        "kind": word("rmsnorm", "layernorm"), "bias": word("none", "required", "optional"),
        "parametric": st.booleans(), "weight_offset": NUMBER})),
    "mixer": st.fixed_dictionaries({}, optional={
        "qkv": word("separate", "fused", "auto"), "bias": word("none", "qkv", "optional", {"q": "required"}),
        "qk_norm": word(None, "none", "rmsnorm", {"kind": "layernorm", "over": "all"}),
        "rope": st.one_of(word("none"), st.fixed_dictionaries({}, optional={
            "pairing": word("adjacent", "half"), "layers": PATTERN})),
        "sliding_window": PATTERN, "sinks": st.booleans()}),
    "ffn": st.fixed_dictionaries({}, optional={
        "gated": st.booleans(), "gate_up": word("separate", "fused"), "bias": word("none", "optional"),
        "activation": word("silu", "gelu_tanh", "gelu_erf", "relu", "relu_squared"),
        "kind": word("dense", "routed", "nosuch"), "gating": word("softmax", "sigmoid"),
        "layers": st.one_of(PATTERN, word({"below": "leading_dense_block_count"}, {"nonzero": "expert_count"},
                                          {"every": "nosuch"}, {"below": "x", "every": "y"})),
        "shared": word(None, {"gate": "sigmoid"})}),
    "block": st.fixed_dictionaries({}, optional={
        "residual": word("sequential", "parallel"), "pre_norm": st.booleans(), "post_norm": st.booleans()}),
    "embedding": st.fixed_dictionaries({}, optional={"positions": word("none", "learned")}),
    "output": st.fixed_dictionaries({}, optional={"norm": st.booleans(), "bias": word("none", "optional")}),
    "hparams": st.dictionaries(FIELD, RULE, max_size=4),
    "tensors": st.fixed_dictionaries({}, optional={
        "global": st.dictionaries(st.sampled_from([*GLOBAL_SLOTS, "nosuch"]), TEMPLATE, max_size=2),
        "layer": st.dictionaries(st.sampled_from([*LAYER_SLOTS, "nosuch"]), TEMPLATE, max_size=3)}),
})


@settings(FUZZ, max_examples=200, deadline=3000)
@given(spec=SPEC)
def test_spec_structured_dicts_validate_and_run_or_fail_cleanly(files: Files, spec: dict[str, Any]) -> None:
    """Random switches and rules over a packaged spec: a spec that validates must load the tiny model and
    run it, or say in a tfb error why not."""
    path = files.root / "fuzzed.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    loaded = load_spec_or_tfb_error(path)
    if loaded is not None:
        load_and_run_or_tfb_error(files.base_path, spec=loaded)
