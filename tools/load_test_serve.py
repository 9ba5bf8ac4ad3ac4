"""A load test of `tfb serve`: 200 requests from 16 concurrent clients (chat and completions, streaming and
not, some with several choices, a few clients that hang up mid-stream), then the verdict: 0 errors, and
the server's RSS after warm-up against its RSS at the end. Not a test (minutes of wall time); run by hand:

    python tools/load_test_serve.py                   # a tiny random qwen3 model made by make_tiny_gguf.py
    python tools/load_test_serve.py --model F.gguf --requests 200 --clients 16

Exit status 0 when every request succeeded and RSS grew less than --rss-slack after the warm-up.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_client import ServerProcess, stream

WORDS = ["the", "sea", "wave", "light", "keeper", "counts", "night",
         "stone", "ship", "harbor", "wind", "salt", "rope", "bell", "tide"]


def tiny_model(out: Path) -> Path:
    from make_tiny_gguf import make

    vocab = Path(__file__).resolve().parent.parent / "tests" / "data" / "vocab" / "ggml-vocab-llama-spm.gguf"
    make("qwen3", out, {"hidden_size": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16,
                        "intermediate_size": 128, "context_length": 512}, "F32", vocab)
    return out


def plain(port: int, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def hang_up(port: int, body: dict[str, Any]) -> str:
    """Start a stream, read its first event, and close the connection (not an error: a client's choice)."""
    data = json.dumps({**body, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
        received = b""
        while b"data: " not in received:
            more = sock.recv(4096)
            if not more:
                return f"closed before any event: {received[:200]!r}"
            received += more
    return ""


def one(port: int, i: int, rng: random.Random) -> str:
    """Request i: returns '' when it went right, else what went wrong."""
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))
    tokens = rng.randint(4, 48)
    choices = rng.randint(2, 3) if i % 7 == 3 else 1
    common = {"model": "bench", "max_tokens": tokens, "temperature": rng.choice([0, 0.7, 1.0]), "seed": i,
              "n": choices}
    kind = i % 5
    if kind == 4 and i % 10 == 4:
        return hang_up(port, {**common, "prompt": words, "max_tokens": 200})
    if kind in (0, 1):
        path, body = "/v1/chat/completions", {**common, "messages": [{"role": "user", "content": words}]}
    else:
        path, body = "/v1/completions", {**common, "prompt": words}
    if kind % 2 == 0:
        timed = stream(port, path, body)
        if timed.error or timed.status != 200:
            return f"{path} stream: {timed.status} {timed.error[:200]}"
        return "" if timed.finish in ("stop", "length") else f"{path} stream: finish {timed.finish}"
    status, answer = plain(port, path, body)
    if status != 200:
        return f"{path}: {status} {json.dumps(answer)[:200]}"
    finishes = [c["finish_reason"] for c in sorted(answer["choices"], key=lambda c: c["index"])]
    return "" if len(finishes) == choices and all(f in ("stop", "length") for f in finishes) else f"{path}: {answer}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a GGUF file (default: a tiny random model)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=40, help="requests before the first RSS reading")
    parser.add_argument("--rss-slack", type=float, default=0.10, help="allowed RSS growth after warm-up")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or tiny_model(Path(tmp) / "tiny.gguf")
        server = ServerProcess(model, "--parallel", str(args.parallel), threads=args.threads)
        try:
            return run(server, args)
        finally:
            server.close()


def run(server: ServerProcess, args: argparse.Namespace) -> int:
    errors: list[str] = []
    readings: dict[str, float] = {}
    lock = threading.Lock()
    counter = iter(range(args.requests))
    done = [0]

    def client(c: int) -> None:
        rng = random.Random(c)
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            problem = one(server.port, i, rng)
            with lock:
                done[0] += 1
                if problem:
                    errors.append(f"request {i}: {problem}")
                if done[0] == args.warmup:
                    readings["warm"] = server.rss_mib()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    start = server.rss_mib()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 30  # the last hung-up streams are noticed at the engine's next step
    while (health := server.get("/health")[1])["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    end = server.rss_mib()
    warm = readings.get("warm", start)
    growth = (end - warm) / warm
    print(f"{args.requests} requests from {args.clients} clients: {len(errors)} errors; "
          f"{health['cancelled']} hung up mid-stream and were cancelled; largest batch {health['largest_batch']}; "
          f"{health['reused_prompt_tokens']} prompt tokens taken from kept caches")
    print(f"server RSS: {start:.0f} MiB at start, {warm:.0f} MiB after {args.warmup} requests, {end:.0f} MiB at "
          f"the end ({growth * 100:+.1f}% after warm-up); running {health['running']}, waiting {health['waiting']}")
    for e in errors[:10]:
        print(" ", e)
    return 0 if not errors and growth < args.rss_slack and health["running"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
