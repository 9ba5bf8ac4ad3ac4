"""What the serving tools share: start `tfb serve` on a free port, stream a completion over raw HTTP
and time it, read the server's memory."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`tfb serve MODEL ARGS...` on 127.0.0.1, from this checkout; waits until /health answers."""

    def __init__(self, model: Path, *args: str, threads: int | None = None, timeout: float = 600) -> None:
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.proc = subprocess.Popen([sys.executable, "-m", "tfb.cli", "serve", str(model), "--port", str(self.port),
                                      "--alias", "bench", *args], cwd=ROOT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with status {self.proc.returncode}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise SystemExit("the server did not start")
            time.sleep(0.3)

    def get(self, path: str) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) the server has used so far; NaN where /proc is missing."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


@dataclass
class Timed:
    """One streamed request: its text, tokens, and when the first and last arrived (perf_counter)."""

    status: int = 0
    text: str = ""
    tokens: int = 0
    start: float = 0.0
    first: float = 0.0
    last: float = 0.0
    finish: str | None = None
    error: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return self.first - self.start

    @property
    def decode_rate(self) -> float:
        """Tokens per second after the first one."""
        return (self.tokens - 1) / (self.last - self.first) if self.tokens > 1 and self.last > self.first else 0.0


def stream(port: int, path: str, body: dict[str, Any], timeout: float = 600) -> Timed:
    """POST a streaming request and time its server-sent events; usage counts the tokens."""
    out = Timed(start=time.perf_counter())
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        out.status = response.status
        if response.status != 200:
            out.error = response.read().decode(errors="replace")
            return out
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                break
            event = json.loads(line[6:])
            if "error" in event:
                out.error = json.dumps(event)
                break
            now = time.perf_counter()
            if event.get("usage"):
                out.tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices", []):
                piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                if not out.first:
                    out.first = now
                out.last = now
                out.text += piece
                out.finish = choice.get("finish_reason") or out.finish
        return out
    except OSError as e:
        out.error = f"{type(e).__name__}: {e}"
        return out
    finally:
        conn.close()
