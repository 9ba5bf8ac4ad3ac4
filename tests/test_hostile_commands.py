"""Every command that reads a model answers a broken file with a non-zero exit and a one-line message, no
traceback: the hostile corpus (tools/make_hostile_gguf.py) through run, chat, serve, check and draft."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile_cases import CASES
from make_hostile_gguf import write_corpus

from tfb.cli import main

# one case or more of each stage: the reader, the config, the weights
SAMPLE = ["empty", "magic_wrong", "big_endian", "last_tensor_truncated", "numeric_array_count_1e9", "tensors_overlap",
          "offset_wraps_uint64", "head_count_string", "heads_not_dividing_hidden", "architecture_unknown",
          "tensor_missing", "matrix_shape_mismatch", "matrix_type_unsupported"]
COMMANDS = [["run", "{path}", "-p", "hi", "-n", "2"], ["chat", "{path}"], ["serve", "{path}", "--port", "0"]]
# draft and check report on files they can read; a file they cannot read is one line too
UNREADABLE = [c for c in SAMPLE if next(x for x in CASES if x.name == c).stage == "reader"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hostile")
    write_corpus(out)
    return out


def test_sample_names_exist() -> None:
    assert set(SAMPLE) <= {c.name for c in CASES}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("case", SAMPLE)
def test_model_commands_fail_in_one_line(corpus: Path, capsys: pytest.CaptureFixture[str], command: list[str],
                                         case: str) -> None:
    path = corpus / f"{case}.gguf"
    code = main([arg.format(path=path) for arg in command])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfb: "), err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["check", "draft"])
@pytest.mark.parametrize("case", UNREADABLE)
def test_authoring_commands_fail_in_one_line_on_unreadable_files(corpus: Path, capsys: pytest.CaptureFixture[str],
                                                                  command: str, case: str) -> None:
    code = main([command, str(corpus / f"{case}.gguf")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and err.startswith("tfb: "), err


@pytest.mark.parametrize("case", [c for c in SAMPLE if c not in UNREADABLE])
def test_check_reports_what_is_wrong(corpus: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    code = main(["check", str(corpus / f"{case}.gguf")])
    out = capsys.readouterr()
    assert code == 1, out.out
    assert "Traceback" not in out.err + out.out
