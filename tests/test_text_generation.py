"""Text in, text out: the library API and the `tfb run` / `tfb chat` commands."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import tfb
import tfb.nn.linear
from tfb.cli.generate import ProgressBar

ROOT = Path(__file__).resolve().parent.parent


def tfb_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tfb.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          input=stdin, timeout=300)


def test_generate_streams_text_with_stats(tiny_gguf) -> None:
    path = tiny_gguf()
    model, tok = tfb.load(path), tfb.load_tokenizer(path)
    gen = tfb.generate(model, tok, "Hello world", max_tokens=12, sampling=tfb.Sampling(temperature=0.0))
    text = "".join(gen)
    assert gen.stats.prompt_tokens == len(tok.encode("Hello world")) and gen.stats.generated_tokens == 12
    assert text == tok.decode(gen.tokens, skip_special=True)
    stop = text[3:6]
    if stop.strip():
        cut = "".join(tfb.generate(model, tok, "Hello world", max_tokens=12, stop=[stop],
                                   sampling=tfb.Sampling(temperature=0.0)))
        assert cut == text[: text.index(stop)]


def test_session_reuses_the_shared_prefix(tiny_gguf) -> None:
    path = tiny_gguf()
    model, tok = tfb.load(path), tfb.load_tokenizer(path)
    session = tfb.Session(model.new_cache())
    first = tfb.generate(model, tok, "one two three", max_tokens=4, session=session)
    list(first)
    follow = tok.encode("one two three") + first.tokens + tok.encode(" four", add_special=False)
    second = tfb.generate(model, tok, follow, max_tokens=4, session=session)
    fresh = tfb.generate(model, tok, follow, max_tokens=4)
    assert list(second) == list(fresh)
    assert second.stats.prompt_tokens < fresh.stats.prompt_tokens  # only the new tokens were computed


def test_run_streams_and_reports_speed(tiny_gguf) -> None:
    result = tfb_cli("run", str(tiny_gguf()), "-p", "Once upon", "-n", "8", "--temp", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Once upon")
    assert "prompt:" in result.stderr and "tok/s" in result.stderr and "generation: 8 tokens" in result.stderr


def test_run_with_int8_activations(tiny_gguf) -> None:
    """The option reaches the model: its quantized products round activations (and text still comes out)."""
    from tfb.cli import build_parser
    from tfb.cli.generate import load_model

    path = tiny_gguf(qtype="Q8_0")
    args = build_parser().parse_args(["run", str(path), "-p", "x", "--int8-activations"])
    model, _ = load_model(args)
    assert all(m.int8_activations for m in model.modules() if isinstance(m, tfb.nn.linear.Linear))
    result = tfb_cli("run", str(path), "-p", "Once upon", "-n", "6", "--temp", "0", "--int8-activations")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Once upon") and "generation: 6 tokens" in result.stderr


def test_run_seed_is_reproducible(tiny_gguf) -> None:
    runs = [tfb_cli("run", str(tiny_gguf()), "-p", "a", "-n", "10", "--temp", "1.0", "--seed", "5").stdout
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_chat_keeps_history_and_falls_back_to_chatml(tiny_gguf) -> None:
    result = tfb_cli("chat", str(tiny_gguf()), "-n", "5", "--temp", "0", "-v", stdin="hello\nand again\n\n")
    assert result.returncode == 0, result.stderr
    assert "no chat template; using ChatML" in result.stderr
    assert result.stderr.count("generation: 5 tokens") == 2
    # the second turn reuses the cached first turn: it computes fewer prompt tokens than the whole history
    first, second = [int(line.split("prompt: ")[1].split(" ")[0]) for line in result.stderr.splitlines()
                     if line.startswith("prompt:")]
    assert 0 < second < first + 10


def test_ctrl_c_stops_cleanly(tiny_gguf) -> None:
    # a context far larger than the generation can reach in the test's time, so Ctrl-C is what stops it
    # SIGINT at its default, as a terminal gives it: a runner started in the background (`cmd &`) passes it on
    # ignored, and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen([sys.executable, "-m", "tfb.cli", "run", str(tiny_gguf()), "-p", "go", "-n", "1000000",
                             "-c", "1000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    proc.stdout.read(12)  # the prompt and some generated text are out: generation is running
    time.sleep(0.5)
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "stop: interrupted" in err and "Traceback" not in err


def test_progress_bar_draws_on_a_terminal_only() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    bar = ProgressBar("loading", screen)
    bar(0, 4 << 20)
    bar(4 << 20, 4 << 20)
    assert "[" in screen.getvalue() and "4/4 MiB" in screen.getvalue()
    quiet = io.StringIO()
    ProgressBar("loading", quiet)(1, 1)
    assert quiet.getvalue() == ""


def test_bad_model_path_is_one_line() -> None:
    result = tfb_cli("run", "/nonexistent.gguf", "-p", "x")
    assert result.returncode == 1 and result.stderr.startswith("tfb: ") and "Traceback" not in result.stderr
