"""Token texts llama.cpp uses to find special tokens that a GGUF file does not name by id.

Converters do not always write `tokenizer.ggml.eot_token_id` and friends, so llama.cpp recognises these
tokens by their text (llama_vocab::impl::load). The tables are copied from there as data.
"""

from __future__ import annotations

from collections.abc import Iterable

# role -> texts that mark a token of that role, tried in this order when the file names no id
ROLE_TEXTS: dict[str, tuple[str, ...]] = {
    "eot": ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
            "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"),
    "eom": ("<|eom_id|>",),
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}

# texts of tokens that end generation (besides EOS, EOT, EOM and the FIM pad/repo/file-separator tokens)
END_OF_GENERATION: tuple[str, ...] = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
)

# tokens that are always written out when decoding, even when control tokens are skipped
ALWAYS_RENDERED: tuple[str, ...] = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")

# (markers, token, what it becomes): when every marker text ends generation too, `token` does not, and is
# decoded as an always-written token ("user_defined") or as ordinary text ("normal")
_CONFLICTS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("<|return|>", "<|call|>"), "<|end|>", "user_defined"),
    (("<|call|>", "<|flush|>"), "<|end|>", "user_defined"),
    (("<|calls|>", "<|flush|>"), "<|end|>", "user_defined"),
    (("<|tool_response>",), "</s>", "normal"),
    (("<|plamo:eos|>",), "</s>", "normal"),
)


def drop_conflicting_end_markers(stop_ids: Iterable[int], tokens: list[str]) -> dict[int, str]:
    """Ids to take out of the end-of-generation set, with what each becomes, by llama.cpp's rules for
    vocabularies where a marker such as <|end|> only ends a message, not the reply."""
    by_text = {tokens[i]: i for i in stop_ids if 0 <= i < len(tokens)}
    drop: dict[int, str] = {}
    for markers, text, becomes in _CONFLICTS:
        if text in by_text and all(m in by_text for m in markers):
            drop[by_text[text]] = becomes
    return drop
