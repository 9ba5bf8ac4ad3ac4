"""`tfb serve` as a user runs it: a real server process on 127.0.0.1, driven by the official `openai` client
and by raw HTTP for the error cases. Every wait has a timeout; the server is killed whatever happens."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-key"
MODEL = "tiny"
MAX_BODY = 64 * 1024
# one thread: a tiny model gains nothing from more, and loses much on a machine whose cores are busy
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TFB_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, model: Path, *args: str) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "tfb.cli", "serve", str(model), "--port", str(self.port),
                                      "--alias", MODEL, *args], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=ENV)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.close()
        raise AssertionError("the server did not start in 120 s")

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return response.status, json.loads(data) if data else None
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: Any, key: str | None = KEY, raw: bytes | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.request("POST", path, raw if raw is not None else json.dumps(body).encode(), headers)

    def client(self) -> Any:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=KEY, timeout=60, max_retries=0)

    def health(self) -> dict[str, Any]:
        status, body = self.get("/health")
        assert status == 200
        return dict(body)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tiny_gguf) -> Iterator[Server]:
    s = Server(tiny_gguf(), "--parallel", "8", "--api-key", KEY, "--max-body", str(MAX_BODY))
    try:
        yield s
    finally:
        s.close()


CHAT = [{"role": "user", "content": "Tell me a story"}]


def test_openai_client_chat_and_completions(server: Server) -> None:
    client = server.client()
    assert [m.id for m in client.models.list()] == [MODEL]

    reply = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=0, logprobs=True,
                                           top_logprobs=2)
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and choice.message.role == "assistant" and choice.message.content
    assert reply.usage.completion_tokens == 8 and reply.usage.prompt_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 8
    lps = choice.logprobs.content
    assert len(lps) == 8 and "".join(t.token for t in lps) == choice.message.content
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in lps)

    stream = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # computed from the first request's kept prompt
    assert server.health()["reused_prompt_tokens"] >= reply.usage.prompt_tokens - 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 8

    done = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0)
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 6
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0, stream=True))
    assert streamed == done.choices[0].text

    # a stop string cuts the text before it, and the finish reason says stop
    stop = done.choices[0].text[2:5]
    if stop.strip():
        cut = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0,
                                        stop=[stop])
        assert cut.choices[0].text == done.choices[0].text[:done.choices[0].text.index(stop)]
        assert cut.choices[0].finish_reason == "stop"

    # a seed makes sampling reproducible
    seeded = [client.completions.create(model=MODEL, prompt="Hi", max_tokens=8, temperature=1.0, seed=7,
                                        frequency_penalty=0.5).choices[0].text for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_several_choices(server: Server) -> None:
    """n = 3: each choice has its index, streaming too; greedy choices equal the single answer; with a seed,
    choice 0 is the seed's single answer and the usage counts every choice's tokens."""
    client = server.client()
    single = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6, temperature=0)
    reply = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6, temperature=0, n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert {c.message.content for c in reply.choices} == {single.choices[0].message.content}
    assert reply.usage.completion_tokens == 18 and reply.usage.prompt_tokens == single.usage.prompt_tokens

    def seeded(n: int, stream: bool = False) -> Any:
        return client.completions.create(model=MODEL, prompt="Hi", max_tokens=8, temperature=1.0, seed=7, n=n,
                                         stream=stream, **({"stream_options": {"include_usage": True}} if stream
                                                           else {}))

    one, three = seeded(1), seeded(3)
    texts = [c.text for c in sorted(three.choices, key=lambda c: c.index)]
    assert texts[0] == one.choices[0].text and len(set(texts)) > 1
    chunks = list(seeded(3, stream=True))
    streamed = ["".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == i) for i in range(3)]
    assert streamed == texts
    finishes = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert sorted(f.index for f in finishes) == [0, 1, 2]
    assert chunks[-1].usage.completion_tokens == three.usage.completion_tokens


def test_raw_sse_ends_with_done(server: Server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = json.dumps({"model": MODEL, "messages": CHAT, "max_tokens": 3, "stream": True, "temperature": 0})
    conn.request("POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {KEY}"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("content-type", "").startswith("text/event-stream")
    events = [line for line in response.read().decode().split("\n\n") if line]
    conn.close()
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["choices"][0]["delta"]["role"] == "assistant"


def test_concurrent_greedy_streams_equal_each_alone(server: Server) -> None:
    """8 streams at once are decoded as one batch, and each returns the text it returns alone."""
    client = server.client()
    prompts = [f"Story number {i}: " + "once " * i for i in range(8)]

    def ask(prompt: str) -> str:
        stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stream=True)
        return "".join(c.choices[0].text for c in stream)

    alone = [ask(p) for p in prompts]
    together: list[str | None] = [None] * len(prompts)
    start = threading.Barrier(len(prompts))

    def worker(i: int) -> None:
        start.wait(timeout=30)
        together[i] = ask(prompts[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert together == alone
    assert server.health()["largest_batch"] >= 4  # the requests really shared decoding steps


def _error(status: int, body: Any, expected: int, param: str | None = None) -> dict[str, Any]:
    assert status == expected, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error
    return dict(error)


def test_bad_requests_get_openai_errors(server: Server) -> None:
    chat, completions = "/v1/chat/completions", "/v1/completions"
    ok = {"model": MODEL, "messages": CHAT}
    _error(*server.post(chat, None, raw=b'{"model": "tiny", "messages": ['), 400)
    _error(*server.post(chat, {"model": MODEL}), 400, "messages")
    _error(*server.post(chat, {"model": MODEL, "messages": []}), 400, "messages")
    _error(*server.post(chat, {**ok, "model": "gpt-4"}), 404, "model")
    _error(*server.post(chat, {**ok, "max_tokens": 0}), 400, "max_tokens")
    _error(*server.post(chat, {**ok, "max_completion_tokens": -3}), 400, "max_completion_tokens")
    _error(*server.post(chat, {**ok, "max_tokens": 100_000}), 400, "max_tokens")
    _error(*server.post(completions, {"model": MODEL, "prompt": "word " * 600}), 400, "prompt")
    _error(*server.post(chat, {**ok, "messages": [{"role": "user", "content": "word " * 600}]}), 400, "messages")
    _error(*server.post(chat, {**ok, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}), 400)
    parts = [{"role": "user", "content": [{"type": "text", "text": "Tell me "}, {"type": "text", "text": "a story"}]}]
    status, answer = server.post(chat, {**ok, "messages": parts, "max_tokens": 4, "temperature": 0})
    assert status == 200 and answer == {**answer, **server.post(chat, {**ok, "max_tokens": 4, "temperature": 0})[1],
                                        "id": answer["id"], "created": answer["created"]}  # the same prompt
    assert _error(*server.post(chat, {**ok, "stop": 5}), 400)["param"].startswith("stop")
    assert _error(*server.post(chat, {**ok, "stop": ["a", 5]}), 400)["param"].startswith("stop")
    _error(*server.post(chat, {**ok, "temperature": "hot"}), 400, "temperature")
    _error(*server.post(completions, {"model": MODEL, "prompt": "x", "n": 9}), 400, "n")  # > --parallel 8
    _error(*server.post(completions, {"model": MODEL, "prompt": "x", "n": 0}), 400, "n")
    _error(*server.post(chat, {**ok, "messages": [{"role": "user", "content": "x" * MAX_BODY}]}), 413)
    assert _error(*server.post(chat, ok, key=None), 401)["code"] == "invalid_api_key"
    _error(*server.post(chat, ok, key="sk-wrong"), 401)
    _error(*server.request("GET", "/v1/models"), 401)
    _error(*server.get("/v1/nowhere"), 401)  # the key is checked first under /v1/
    assert server.health()["status"] == "ok"  # the server is still there


def _send(server: Server, body: dict[str, Any]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: " + str(len(data)).encode() +
                 b"\r\n\r\n" + data)
    return sock


def _wait_cancelled(server: Server, count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        health = server.health()
        if health["running"] == 0 and health["cancelled"] >= count:
            break
        time.sleep(0.05)
    assert health["running"] == 0 and health["cancelled"] == count


@pytest.mark.parametrize("streaming", [True, False])
def test_a_client_that_disconnects_frees_its_slot(server: Server, streaming: bool) -> None:
    before = server.health()["cancelled"]
    sock = _send(server, {"model": MODEL, "prompt": "go", "max_tokens": 500, "stream": streaming})
    if streaming:
        received = b""
        while b"data: " not in received:  # streaming has begun
            more = sock.recv(4096)
            assert more, received
            received += more
    else:
        deadline = time.monotonic() + 30
        while server.health()["running"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    sock.close()
    _wait_cancelled(server, before + 1)
    reply = server.client().completions.create(model=MODEL, prompt="still here", max_tokens=2)
    assert reply.usage.completion_tokens == 2


def test_ctrl_c_drains_and_exits(tiny_gguf) -> None:
    s = Server(tiny_gguf(), "--parallel", "2", "--int8-activations")
    try:
        result: dict[str, Any] = {}

        def stream() -> None:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key="none", timeout=60,
                                   max_retries=0)
            chunks = list(client.completions.create(model=MODEL, prompt="a", max_tokens=60, stream=True,
                                                    temperature=0))
            result["finish"] = chunks[-1].choices[0].finish_reason

        t = threading.Thread(target=stream)
        t.start()
        deadline = time.monotonic() + 30
        while s.health()["running"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        s.proc.send_signal(signal.SIGINT)
        t.join(timeout=60)
        assert result.get("finish") == "length"  # the running request finished before the server went
        assert s.proc.wait(timeout=60) == 130  # as `tfb run` after Ctrl-C
        assert s.proc.stderr is not None
        assert f"2 parallel, int8 activations) at http://127.0.0.1:{s.port}/v1" in s.proc.stderr.read()
    finally:
        s.close()


def test_serve_help_does_not_import_torch() -> None:
    code = ("import sys; from tfb.cli import main\ntry: main(['serve', '--help'])\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules and 'fastapi' not in sys.modules, 'imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
