"""The cases of the hostile GGUF corpus (tools/make_hostile_gguf.py).

Each case takes the valid base model, as an editable `Layout` and as raw bytes, and returns the bytes of
one broken file. It states the stage that must reject the file ("reader": opening it with GGUFFile;
"config" or "weights": tfb.load), the tfb error class, a fragment of the message and the place the
message must name (a byte offset, a metadata key or a tensor).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from gguf_layout import Layout, array, gguf_string, scalar, u32, u64

U64_MAX = 2**64 - 1
ARCH = "llama"
HEADS = f"{ARCH}.attention.head_count"
EPS = f"{ARCH}.attention.layer_norm_rms_epsilon"
NORM = "output_norm.weight"  # an F32 vector [32]
MATRIX = "blk.0.attn_k.weight"  # a Q8_0 matrix [16, 32]
Q8_0, Q8_1, I32, F32 = 8, 9, 26, 0


@dataclass(frozen=True)
class Case:
    name: str
    stage: str  # "reader", "config" or "weights"
    error: str  # the tfb error class
    expect: str  # a fragment of the message
    place: str  # what the message must point at; "" when the whole file is the place
    about: str
    make: Callable[[Layout, bytes], bytes]


CASES: list[Case] = []


def add(stage: str, error: str, name: str, expect: str, place: str, about: str,
        change: Callable[[Layout], object]) -> None:
    """A case that edits the base layout and writes it out."""

    def make(layout: Layout, raw: bytes) -> bytes:
        change(layout)
        return layout.to_bytes()

    CASES.append(Case(name, stage, error, expect, place, about, make))


def add_raw(name: str, expect: str, place: str, about: str, make: Callable[[bytes], bytes]) -> None:
    """A case that cuts or patches the base file's bytes."""
    CASES.append(Case(name, "reader", "GGUFError", expect, place, about, lambda layout, raw: make(raw)))


def reader(name: str, expect: str, place: str, about: str, change: Callable[[Layout], object]) -> None:
    add("reader", "GGUFError", name, expect, place, about, change)


def config(name: str, expect: str, place: str, about: str, change: Callable[[Layout], object],
           error: str = "ConfigError") -> None:
    add("config", error, name, expect, place, about, change)


def weights(name: str, expect: str, place: str, about: str, change: Callable[[Layout], object]) -> None:
    add("weights", "WeightError", name, expect, place, about, change)


def assign(obj: object, **values: object) -> object:
    for attribute, value in values.items():
        setattr(obj, attribute, value)
    return obj


def resize(layout: Layout, name: str, dims: list[int], type_id: int, type_size: int, block: int) -> None:
    """Give a tensor new dims and type, with data of the matching size (so only the claim is wrong)."""
    t = layout.tensor(name)
    n = 1
    for d in dims:
        n *= d
    assign(t, dims=dims, type_id=type_id, data=bytes(n // block * type_size))


# --------------------------------------------------------------------------------------- file framing

add_raw("empty", "empty file", "", "a file of zero bytes", lambda raw: b"")
add_raw("magic_short", "not a GGUF file", "", "two bytes, shorter than the magic", lambda raw: b"GG")
add_raw("magic_wrong", "not a GGUF file (magic b'GGUX'", "", "a wrong magic", lambda raw: b"GGUX" + raw[4:])
add_raw("text_file", "not a GGUF file", "", "a text file", lambda raw: b"hello, world\n" * 40)
add_raw("version_1", "GGUF version 1 is not supported", "", "the first GGUF version (32-bit counts)",
        lambda raw: raw[:4] + u32(1) + raw[8:])
add_raw("version_future", "GGUF version 4096 is not supported", "", "a version from the future",
        lambda raw: raw[:4] + u32(4096) + raw[8:])
add_raw("big_endian", "big-endian GGUF v3", "", "a big-endian file (version bytes swapped)",
        lambda raw: raw[:4] + struct.pack(">I", 3) + raw[8:])
add_raw("header_truncated", "truncated: metadata key count needs 8 bytes", "at byte 16",
        "the file ends inside the header", lambda raw: raw[:20])
add_raw("last_tensor_truncated", "extend past the end of the file", "tensor 'blk.0.ffn_gate.weight'",
        "the last byte of tensor data is missing", lambda raw: raw[:-1])
CASES.append(Case("data_section_missing", "reader", "GGUFError", "data section", "", "the file ends right "
                  "after the tensor infos", lambda layout, raw: raw[:len(layout.header())]))


# ---------------------------------------------------------------------------------------------- counts

reader("tensor_count_huge", f"claims {U64_MAX} tensors", "at byte 24", "tensor count 2**64-1",
       lambda f: assign(f, n_tensors=U64_MAX))
reader("tensor_count_plus_one", "tensor #12 '' has 3155874304 dimensions", "at byte 1603",
       "one tensor more than the file describes: padding and data are read as its info",
       lambda f: assign(f, n_tensors=13))
reader("kv_count_huge", f"claims {2**63} metadata keys", "at byte 24", "key count 2**63",
       lambda f: assign(f, n_kv=2**63))
reader("kv_count_plus_one", "name of tensor #0 claims 2251799813685248 bytes", "at byte 941",
       "one key more than the file holds: the first tensor info is read as a key", lambda f: assign(f, n_kv=18))
reader("key_length_huge", f"name of metadata key #0 claims {U64_MAX} bytes, over the 65536-byte limit",
       "at byte 32", "the first key's length is 2**64-1",
       lambda f: f.raw("general.architecture", u64(U64_MAX) + b"general.architecture"))
reader("key_length_past_end", "truncated: name of metadata key #0 needs 60000 bytes", "at byte 32",
       "a key length under the limit but past the end of the file",
       lambda f: f.raw("general.architecture", u64(60000) + b"general.architecture"))
reader("string_length_huge", f"truncated: value of 'general.name' needs {2**63} bytes", "'general.name'",
       "a string value claiming 2**63 bytes",
       lambda f: f.raw("general.name", gguf_string("general.name") + u32(8) + u64(2**63) + b"tiny"))
reader("string_array_count_huge", f"metadata array 'tokenizer.ggml.tokens' claims {2**62} strings",
       "'tokenizer.ggml.tokens'", "an array of 2**62 strings",
       lambda f: f.set("tokenizer.ggml.tokens", array("string", ["a"], count=2**62)))
reader("string_in_array_huge", f"string #1 of array 'tokenizer.ggml.tokens' claims {2**40} bytes",
       "'tokenizer.ggml.tokens'", "the second string of an array claims 2**40 bytes",
       lambda f: f.set("tokenizer.ggml.tokens", array("string", ["a"], count=2) + u64(2**40) + b"b"))
reader("numeric_array_count_1e9", "metadata array 'tokenizer.ggml.scores' claims 1000000000 x 4 bytes",
       "'tokenizer.ggml.scores'", "an array of 10**9 floats in a 9 KB file",
       lambda f: f.set("tokenizer.ggml.scores", array("float32", [0.0] * 8, count=10**9)))
reader("array_of_arrays", "'tokenizer.ggml.scores' is an array of arrays", "'tokenizer.ggml.scores'",
       "an array whose elements are arrays",
       lambda f: f.set("tokenizer.ggml.scores", u32(9) + u32(9) + u64(1) + u32(4) + u64(1) + u32(7)))
reader("unknown_value_type", "metadata key 'general.name' has unknown value type 13", "'general.name'",
       "value type 13", lambda f: f.set("general.name", u32(13) + u64(0)))
reader("unknown_value_type_huge", f"unknown value type {2**32 - 1}", "'general.name'", "value type 2**32-1",
       lambda f: f.set("general.name", u32(2**32 - 1) + u64(0)))
reader("unknown_element_type", "metadata array 'tokenizer.ggml.scores' has unknown element type 99",
       "'tokenizer.ggml.scores'", "array element type 99",
       lambda f: f.set("tokenizer.ggml.scores", u32(9) + u32(99) + u64(0)))
reader("duplicate_key", "metadata key 'general.name' appears twice", "'general.name'", "a key given twice",
       lambda f: f.kv.append(("dup", gguf_string("general.name") + scalar("string", "again"))))
reader("alignment_uint64", "general.alignment is uint64, must be uint32", "general.alignment",
       "alignment of the wrong type", lambda f: f.set("general.alignment", scalar("uint64", 32)))
reader("alignment_string", "general.alignment is string, must be uint32", "general.alignment",
       "alignment as a string", lambda f: f.set("general.alignment", scalar("string", "32")))
reader("alignment_zero", "general.alignment 0 is not a power of two", "general.alignment", "alignment 0",
       lambda f: f.set("general.alignment", scalar("uint32", 0)))
reader("alignment_not_power_of_two", "general.alignment 24 is not a power of two", "general.alignment",
       "alignment 24", lambda f: f.set("general.alignment", scalar("uint32", 24)))
reader("alignment_huge", "data section (from byte 2147483648) is missing", "", "alignment 2**31: the data "
       "section would start past the end", lambda f: f.set("general.alignment", scalar("uint32", 2**31)))

# --------------------------------------------------------------------------------------------- tensors

reader("n_dims_zero", "tensor #2 'output_norm.weight' has 0 dimensions", "'output_norm.weight'", "n_dims 0",
       lambda f: assign(f.tensor(NORM), dims=[]))
reader("n_dims_five", "tensor #2 'output_norm.weight' has 5 dimensions", "'output_norm.weight'", "n_dims 5",
       lambda f: assign(f.tensor(NORM), dims=[32, 1, 1, 1, 1]))
reader("n_dims_huge", f"has {2**32 - 1} dimensions", "'output_norm.weight'", "n_dims 2**32-1",
       lambda f: assign(f.tensor(NORM), info=gguf_string(NORM) + u32(2**32 - 1) + u64(32) * 4))
reader("dim_over_int64", f"dimension {2**63} is out of range", "'output_norm.weight'", "a dimension of 2**63",
       lambda f: assign(f.tensor(NORM), dims=[32, 2**63]))
reader("dims_overflow_int64", "has more elements than a 64-bit count holds", "'output_norm.weight'",
       "dims [2**32, 2**31]: 2**63 elements", lambda f: assign(f.tensor(NORM), dims=[2**32, 2**31]))
reader("dims_wrap_uint64", "has more elements than a 64-bit count holds", "'output_norm.weight'",
       "dims [2**32, 2**32]: 2**64 elements, 0 after a 64-bit wrap",
       lambda f: assign(f.tensor(NORM), dims=[2**32, 2**32]))
reader("tensor_type_unknown", "tensor #2 'output_norm.weight' has unknown ggml type 1000", "'output_norm.weight'",
       "ggml type 1000", lambda f: assign(f.tensor(NORM), type_id=1000))
reader("tensor_type_removed", "has unknown ggml type 4", "'output_norm.weight'",
       "ggml type 4 (Q4_2, removed from ggml)", lambda f: assign(f.tensor(NORM), type_id=4))
reader("row_not_whole_blocks", "tensor #5 'blk.0.attn_k.weight' of type Q8_0 has rows of 33 elements, not a "
       "multiple of its block size 32", f"'{MATRIX}'",
       "a Q8_0 matrix with rows of 33 elements", lambda f: assign(f.tensor(MATRIX), dims=[33, 16]))
reader("offset_past_end", "extend past the end of the file", f"'{NORM}'", "a data offset 1 MiB past the end",
       lambda f: assign(f.tensor(NORM), offset=2**20))
reader("offset_wraps_uint64", "extend past the end of the file", f"'{NORM}'",
       "data offset 2**64-32: start + size wraps around in 64 bits",
       lambda f: assign(f.tensor(NORM), offset=2**64 - 32))
reader("size_past_end", "extend past the end of the file", f"'{NORM}'",
       "a vector claiming 2**40 elements", lambda f: assign(f.tensor(NORM), dims=[2**40]))
reader("tensors_overlap", "overlap", "'token_embd.weight'", "two tensors at the same data offset",
       lambda f: assign(f.tensor(NORM), offset=0))
reader("offset_misaligned", "data offset 33 is not a multiple of the alignment 32", f"'{NORM}'",
       "a data offset off the alignment",
       lambda f: assign(f.tensor(NORM), offset=33))
reader("duplicate_tensor", "the name appears twice", "'token_embd.weight'", "two tensors with one name",
       lambda f: assign(f.tensor(NORM), name=b"token_embd.weight"))
reader("tensor_name_huge", f"name of tensor #2 claims {2**63} bytes, over the 65536-byte limit", "at byte",
       "a tensor name claiming 2**63 bytes", lambda f: assign(f.tensor(NORM), info=u64(2**63) + b"x"))

# ------------------------------------------------------------------------------------------- metadata

config("head_count_string", f"metadata {HEADS} is string '4', expected an integer", HEADS,
       "a head count that is a string", lambda f: f.set(HEADS, scalar("string", "4")))
config("head_count_negative", "`n_heads` = -4", HEADS, "a head count of -4 (int32)",
       lambda f: f.set(HEADS, scalar("int32", -4)))
config("head_count_zero", "`n_heads` = 0 and `n_kv_heads` = 2 must be positive in an attention layer", HEADS,
       "a head count of 0", lambda f: f.set(HEADS, scalar("uint32", 0)))
config("head_count_float", f"metadata {HEADS} is float32 4.0, expected an integer", HEADS,
       "a head count that is a float", lambda f: f.set(HEADS, scalar("float32", 4.0)))
config("head_count_1e12", f"`n_heads` = 1000000000000 ({HEADS}) is beyond any real model", HEADS,
       "a head count of 10**12",
       lambda f: f.set(HEADS, scalar("uint64", 10**12)))
config("head_count_per_layer_wrong_length",
       f"metadata {HEADS} has 3 values, expected one per layer: block_count = 1", HEADS,
       "a per-layer head count array of 3 values for 1 layer", lambda f: f.set(HEADS, array("uint32", [4, 2, 2])))
config("head_count_string_array", f"metadata {HEADS} is array[string]", HEADS, "a head count array of strings",
       lambda f: f.set(HEADS, array("string", ["4"])))
config("head_count_empty_array", f"metadata {HEADS} is array[uint32]", HEADS, "an empty head count array",
       lambda f: f.set(HEADS, array("uint32", [])))
config("head_count_bool", f"metadata {HEADS} is bool", HEADS, "a head count that is a bool",
       lambda f: f.set(HEADS, scalar("bool", True)))
config("context_length_zero", "`context_length` = 0", f"{ARCH}.context_length", "a context length of 0",
       lambda f: f.set(f"{ARCH}.context_length", scalar("uint32", 0)))
config("epsilon_nan", "`norm_eps` = nan", EPS, "epsilon NaN", lambda f: f.set(EPS, scalar("float32", float("nan"))))
config("epsilon_inf", "`norm_eps` = inf", EPS, "epsilon inf", lambda f: f.set(EPS, scalar("float64", float("inf"))))
config("epsilon_negative", "`norm_eps` = -1e-05", EPS, "a negative epsilon",
       lambda f: f.set(EPS, scalar("float64", -1e-5)))
config("block_count_huge", "n_layers = 1000000 is more than 4096", "n_layers", "a million layers",
       lambda f: f.set(f"{ARCH}.block_count", scalar("uint32", 10**6)))
config("heads_not_dividing_hidden", "`head_dim` = hidden_size / n_heads = 32 / 3 is not a whole number",
       "head_dim", "3 heads over a width of 32, with no key_length to say otherwise",
       lambda f: (f.drop(f"{ARCH}.attention.key_length"), f.set(HEADS, scalar("uint32", 3)),
                  f.set(f"{ARCH}.attention.head_count_kv", scalar("uint32", 1))))
config("kv_heads_not_dividing_heads", "n_heads = 4 is not a multiple of n_kv_heads = 3", "n_kv_heads",
       "4 query heads over 3 key/value heads",
       lambda f: f.set(f"{ARCH}.attention.head_count_kv", scalar("uint32", 3)))
config("rope_dims_odd", "rope_dims = 7 must be even", "rope_dims", "rope over 7 dimensions",
       lambda f: f.set(f"{ARCH}.rope.dimension_count", scalar("uint32", 7)))
config("rope_dims_over_head_dim", "rope_dims = 16 must be even and at most head_dim = 8", "rope_dims",
       "rope over more dimensions than a head has",
       lambda f: f.set(f"{ARCH}.rope.dimension_count", scalar("uint32", 16)))
config("rope_base_one_with_yarn", "rope_base = 1 cannot be used with YaRN scaling", "rope_base",
       "YaRN over a rope base of 1 (found by fuzzing: divided by log(1) in the forward pass)",
       lambda f: (f.set(f"{ARCH}.rope.scaling.type", scalar("string", "yarn")),
                  f.set(f"{ARCH}.rope.freq_base", scalar("float32", 1.0))))
config("rope_scaling_unknown", "is not supported for `rope_scaling`", f"{ARCH}.rope.scaling.type",
       "an unknown rope scaling kind", lambda f: f.set(f"{ARCH}.rope.scaling.type", scalar("string", "bogus")))
config("experts_used_over_count", "expert_used_count = 8 must be between 1 and expert_count = 4",
       "expert_used_count", "8 of 4 experts per token",
       lambda f: (f.set(f"{ARCH}.expert_count", scalar("uint32", 4)),
                  f.set(f"{ARCH}.expert_used_count", scalar("uint32", 8))))
config("expert_groups_not_dividing_experts", "expert_group_count = 3 does not divide expert_count = 4",
       "expert_group_count", "4 experts in 3 groups (grouped top-k)",
       lambda f: (f.set(f"{ARCH}.expert_count", scalar("uint32", 4)), f.set(f"{ARCH}.expert_used_count", scalar(
           "uint32", 2)), f.set(f"{ARCH}.expert_group_count", scalar("uint32", 3)),
                  f.set(f"{ARCH}.expert_group_used_count", scalar("uint32", 1))))
config("expert_groups_used_over_count", "expert_group_used_count = 3 must be between 1 and expert_group_count = 2",
       "expert_group_used_count", "3 of 2 expert groups kept",
       lambda f: (f.set(f"{ARCH}.expert_count", scalar("uint32", 4)), f.set(f"{ARCH}.expert_used_count", scalar(
           "uint32", 2)), f.set(f"{ARCH}.expert_group_count", scalar("uint32", 2)),
                  f.set(f"{ARCH}.expert_group_used_count", scalar("uint32", 3))))
config("embedding_length_missing", f"metadata key {ARCH}.embedding_length is missing", f"{ARCH}.embedding_length",
       "no width", lambda f: f.drop(f"{ARCH}.embedding_length"))
config("architecture_missing", "general.architecture is missing", "general.architecture", "no architecture",
       lambda f: f.drop("general.architecture"), error="TfbError")
config("architecture_unknown", "no spec serves architecture `nosuch`", "", "an architecture no spec serves",
       lambda f: f.set("general.architecture", scalar("string", "nosuch")), error="TfbError")
config("architecture_not_string", "general.architecture is uint32, must be a string", "general.architecture",
       "an architecture that is a number", lambda f: f.set("general.architecture", scalar("uint32", 7)),
       error="GGUFError")
config("architecture_control_chars", "is not an architecture name", "general.architecture",
       "terminal escape codes in the architecture",
       lambda f: f.set("general.architecture", scalar("string", "llama\x1b[2J\n")), error="GGUFError")

# ---------------------------------------------------------------------------------------------- weights

weights("tensor_missing", "needs tensors the file lacks: blk.0.attn_q.weight", "blk.0.attn_q.weight",
        "a required tensor is absent", lambda f: f.drop_tensor("blk.0.attn_q.weight"))
weights("layer_missing", "needs tensors the file lacks: blk.1.attn_norm.weight", "blk.1.attn_norm.weight",
        "two layers claimed, one stored", lambda f: f.set(f"{ARCH}.block_count", scalar("uint32", 2)))
weights("matrix_shape_mismatch", "has shape [8, 32], expected [16, 32]", f"'{MATRIX}'",
        "a key projection with 8 rows where the config says 16",
        lambda f: resize(f, MATRIX, [32, 8], Q8_0, 34, 32))
weights("vector_shape_mismatch", "has shape [16], expected [32]", f"'{NORM}'", "a norm of 16 where 32 belong",
        lambda f: resize(f, NORM, [16], F32, 4, 1))
weights("vocab_mismatch", "has shape [8, 32], expected [9, 32]", "'token_embd.weight'",
        "vocab_size 9 against an embedding of 8 rows", lambda f: f.set(f"{ARCH}.vocab_size", scalar("uint32", 9)))
weights("matrix_type_unsupported", "storage type Q8_1 is not supported", f"'{MATRIX}'",
        "a matrix in Q8_1, a ggml type that model files never use",
        lambda f: resize(f, MATRIX, [32, 16], Q8_1, 36, 32))
weights("vector_type_unsupported", "storage type I32 is not supported", f"'{NORM}'", "a norm stored as I32",
        lambda f: resize(f, NORM, [32], I32, 4, 1))

assert len({c.name for c in CASES}) == len(CASES), "case names must be unique"
