"""Rules of the code base that a machine can check: lint, types, and no model-specific Python."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FAMILY = re.compile(r"\b(llama\d*|mistral\d*|mixtral|qwen\d*(moe)?|phi\d*|starcoder\d*|gemma\d*|granite|olmo\d*|"
                    r"smollm\d*|stablelm|gpt2|gpt-oss|glm\d*|deepseek\w*|falcon|mpt|bloom)\b", re.IGNORECASE)


def test_ruff_finds_nothing() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "tfb", "tests", "tools"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", "tfb"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_interpreter_names_no_family_or_spec() -> None:
    """Nothing under tfb/ may name an architecture family or a spec: behaviour comes from specs only.
    Docstrings and comments are code too here, so that nobody reads a family into the interpreter."""
    specs = {p.stem for p in (ROOT / "specs").glob("*.yaml")}
    offenders = []
    for path in sorted((ROOT / "tfb").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            text = line.replace("llama.cpp", "the engine")  # the engine is not a family
            words = set(re.findall(r"[A-Za-z][\w-]*", text))
            found = FAMILY.search(text) or (words & specs)
            if found:
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "family or spec names in the interpreter:\n" + "\n".join(offenders)


def test_readme_support_table_is_current() -> None:
    """Every spec appears in the README's support table with its current line count."""
    sys.path.insert(0, str(ROOT / "tools"))
    from line_counts import code_lines

    readme = (ROOT / "README.md").read_text()
    for path in sorted((ROOT / "specs").glob("*.yaml")):
        row = re.search(rf"^\| `{re.escape(path.stem)}` \|[^|]*\| (\d+) \|", readme, re.MULTILINE)
        assert row, f"README's support table has no row for {path.stem}"
        assert int(row.group(1)) == code_lines(path), f"{path.stem}: README says {row.group(1)} lines"


def test_every_package_ships() -> None:
    """A non-editable install ships only the packages pyproject lists: a new subpackage must be listed."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "tfb").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"
