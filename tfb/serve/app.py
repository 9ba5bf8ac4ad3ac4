"""The ASGI application: OpenAI's routes over an Engine, streaming as server-sent events.

A request is checked (body size, API key, fields, the prompt against the context) before it reaches the
engine; every refusal is an OpenAI-style JSON error with a 4xx status. A client that goes away, streaming
or not, cancels its job, which frees its slot at the next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tfb.errors import TfbError
from tfb.serve.engine import Chunk, Engine, Job, TokenLogprob
from tfb.serve.protocol import ApiError, ChatCompletionRequest, CompletionRequest, _Generation, error_body
from tfb.text.sampling import Sampling

DEFAULT_MAX_BODY = 4 * 1024 * 1024


@dataclass
class ServeConfig:
    model_id: str
    api_key: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    chat_template_fallback: str = ""  # used when the file has no chat template


def create_app(engine: Engine, config: ServeConfig) -> ASGIApp:
    """The application for `engine`; the engine thread is started and stopped with the app's lifespan."""

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine._thread is None:
            engine.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, engine.stop)

    app = FastAPI(title="tfb", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    tokenizer = engine.tokenizer
    if tokenizer.chat_template is None and config.chat_template_fallback:
        tokenizer.chat_template = config.chat_template_fallback
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            return JSONResponse(error_body(f"the body is not valid JSON: {first.get('msg', '')}",
                                           code="invalid_json"), status_code=400)
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid')}" if param else str(first.get("msg", "invalid request"))
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problems)"
        return JSONResponse(error_body(message, param=param, code=str(first.get("type", "")) or None),
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(error_body(str(e.detail), param=None, code=code), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}", kind="server_error"),
                            status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **engine.stats()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": config.model_id, "object": "model", "created": created,
                                            "owned_by": "tfb"}]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> Any:
        body = await _parse(request, ChatCompletionRequest)
        _check_model(body)
        if body.tools:
            raise ApiError(400, "tools are not supported by this server", "tools", "unsupported_parameter")
        messages = [m.for_template() for m in body.messages]
        try:  # off the event loop: a template may take its whole (bounded) time
            prompt = await run_in_threadpool(tokenizer.encode_chat, messages, True)
        except TfbError as e:
            raise ApiError(400, f"the chat template could not render the messages: {e}", "messages",
                           "template_error") from None
        limit, field = body.token_limit()
        top = (body.top_logprobs or 0) if body.logprobs else None
        job = _job(body, prompt, limit, field, top)
        return await _answer(request, job, body, "chat.completion", partial(_chat_choice, tokenizer),
                             partial(_chat_delta, tokenizer))

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Any:
        body = await _parse(request, CompletionRequest)
        _check_model(body)
        if isinstance(body.prompt, list) and body.prompt and isinstance(body.prompt[0], int):
            prompt = [int(t) for t in body.prompt]  # token ids
            if any(t < 0 or t >= tokenizer.vocab_size for t in prompt):
                raise ApiError(400, f"prompt token ids must be in [0, {tokenizer.vocab_size})", "prompt")
        else:
            text = body.prompt if isinstance(body.prompt, str) else str(body.prompt[0])
            prompt = await run_in_threadpool(tokenizer.encode, text, True)
        limit, field = body.token_limit()
        job = _job(body, prompt, limit, field, body.logprobs)
        return await _answer(request, job, body, "text_completion", partial(_text_choice, tokenizer),
                             partial(_text_delta, tokenizer))

    def _check_model(body: _Generation) -> None:
        if body.model != config.model_id:
            raise ApiError(404, f"the model `{body.model}` does not exist; this server serves "
                                f"`{config.model_id}` (GET /v1/models)", "model", "model_not_found")

    def _job(body: _Generation, prompt: list[int], limit: int | None, field: str, top: int | None) -> Job:
        context = engine.context
        if not prompt:
            raise ApiError(400, "the prompt has no tokens", "prompt")
        if len(prompt) >= context:
            where = "messages" if isinstance(body, ChatCompletionRequest) else "prompt"
            raise ApiError(400, f"the prompt has {len(prompt)} tokens; the context holds {context} (start the "
                                "server with a larger --ctx-size)", where, "context_length_exceeded")
        if limit is not None and limit <= 0:
            raise ApiError(400, f"{field} must be at least 1, got {limit}", field, "invalid_value")
        room = context - len(prompt)
        if limit is not None and limit > room:
            raise ApiError(400, f"{field} = {limit} is more than the context leaves: {context} tokens, "
                                f"{len(prompt)} of them the prompt", field, "context_length_exceeded")
        if body.n > engine.parallel:
            raise ApiError(400, f"n = {body.n} is more choices than the server decodes at once ({engine.parallel}; "
                                "start it with a larger --parallel)", "n", "invalid_value")
        sampling = _sampling(body)
        return Job(n=body.n, prompt=prompt, max_tokens=limit if limit is not None else room, emit=lambda chunk: None,
                   sampling=sampling, stop=body.stops(), top_logprobs=top,
                   presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty)

    async def _answer(request: Request, job: Job, body: _Generation, kind: str,
                      choice: Callable[[int, str, list[TokenLogprob], str | None], dict[str, Any]],
                      delta: Callable[[Chunk, bool], dict[str, Any]]) -> Any:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[Chunk] = asyncio.Queue()

        def emit(chunk: Chunk) -> None:  # called on the engine's thread
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, chunk)
            except RuntimeError:  # the loop is closed: the server is going away
                job.cancel()

        job.emit = emit
        ident = f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        now = int(time.time())
        engine.submit(job)
        if body.stream:
            return EventStream(_events(job, chunks, body, ident, now, kind, delta), job)
        try:
            results = await _until_done(request, chunks, job.n)
        finally:
            job.cancel()  # a no-op once finished; frees the slots when the client went away
        for _, _, last in results:
            if last.finish == "error":
                raise ApiError(500, f"generation failed: {last.error}", kind="server_error")
        return {"id": ident, "object": kind, "created": now, "model": config.model_id,
                "choices": [choice(i, text, logprobs, last.finish) for i, (text, logprobs, last) in enumerate(results)],
                "usage": _usage([last for _, _, last in results])}

    async def _events(job: Job, chunks: asyncio.Queue[Chunk], body: _Generation, ident: str, now: int,
                      kind: str, delta: Callable[[Chunk, bool], dict[str, Any]]) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if kind == "chat.completion" else "text_completion"
        head = {"id": ident, "object": obj, "created": now, "model": config.model_id}
        started: set[int] = set()
        last: dict[int, Chunk] = {}  # each choice's last chunk
        try:
            while len(last) < job.n:
                chunk = await chunks.get()
                if chunk.finish == "error":
                    yield _sse(error_body(f"generation failed: {chunk.error}", kind="server_error"))
                    break
                yield _sse({**head, "choices": [delta(chunk, chunk.index not in started)]})
                started.add(chunk.index)
                if chunk.finish is not None:
                    last[chunk.index] = chunk
            else:
                if body.include_usage():
                    yield _sse({**head, "choices": [], "usage": _usage(list(last.values()))})
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()

    return BodyLimit(app, config.max_body, config.api_key)


Body = TypeVar("Body", bound=BaseModel)


async def _parse(request: Request, kind: type[Body]) -> Body:
    """The body as JSON whatever its Content-Type says (curl's -d sends a form type)."""
    try:
        return kind.model_validate_json(await request.body())
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None


Result = tuple[str, list[TokenLogprob], Chunk]  # a choice's text, log-probabilities and last chunk


async def _until_done(request: Request, chunks: asyncio.Queue[Chunk], n: int) -> list[Result]:
    """Collect a job's chunks until each of its n choices has its last one (or one failed). A client that
    disconnects meanwhile ends the wait with an error nobody reads (the caller then cancels the job)."""

    async def collect() -> list[Result]:
        texts: list[list[str]] = [[] for _ in range(n)]
        logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
        last: dict[int, Chunk] = {}
        while len(last) < n:
            chunk = await chunks.get()
            texts[chunk.index].append(chunk.text)
            logprobs[chunk.index].extend(chunk.logprobs)
            if chunk.finish == "error":
                return [("", [], chunk)]
            if chunk.finish is not None:
                last[chunk.index] = chunk
        return [("".join(texts[i]), logprobs[i], last[i]) for i in range(n)]

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    done = asyncio.ensure_future(collect())
    watch = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({done, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not done.done():
            done.cancel()
        await asyncio.gather(done, watch, return_exceptions=True)
    if done.cancelled():
        raise ApiError(499, "the client closed the connection")
    return done.result()


def _sampling(body: _Generation) -> Sampling:
    """OpenAI's defaults (temperature 1, top_p 1) and nothing else of llama.cpp's chain unless asked."""
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    if top_p == 0.0:  # only the most likely token
        temperature, top_p = 0.0, 1.0
    return Sampling(temperature=temperature, top_k=0, top_p=top_p, min_p=0.0, seed=body.seed)


def _usage(lasts: list[Chunk]) -> dict[str, int]:
    """The prompt once, the completion tokens of every choice."""
    prompt, completion = lasts[0].prompt_tokens, sum(c.completion_tokens for c in lasts)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class EventStream(StreamingResponse):
    """Server-sent events that stop (and cancel the job) as soon as the client disconnects, whatever the
    ASGI server's spec version (Starlette otherwise notices only on the next failed write)."""

    def __init__(self, content: AsyncIterator[str], job: Job) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job = job

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = asyncio.ensure_future(self.stream_response(send))
        gone = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait({stream, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, gone):
                task.cancel()
            await asyncio.gather(stream, gone, return_exceptions=True)
            self.job.cancel()


def _token_text(tokenizer: Any, token: int) -> tuple[str, list[int]]:
    raw = tokenizer.token_bytes(token)
    return raw.decode("utf-8", errors="replace"), list(raw)


def _chat_logprobs(tokenizer: Any, logprobs: list[TokenLogprob]) -> dict[str, Any]:
    content = []
    for lp in logprobs:
        text, raw = _token_text(tokenizer, lp.token)
        top = []
        for token, value in lp.top:
            t, b = _token_text(tokenizer, token)
            top.append({"token": t, "logprob": value, "bytes": b})
        content.append({"token": text, "logprob": lp.logprob, "bytes": raw, "top_logprobs": top})
    return {"content": content}


def _text_logprobs(tokenizer: Any, logprobs: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    tokens, values, tops, offsets = [], [], [], []
    for lp in logprobs:
        text, _ = _token_text(tokenizer, lp.token)
        tokens.append(text)
        values.append(lp.logprob)
        tops.append({_token_text(tokenizer, t)[0]: v for t, v in lp.top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def _chat_choice(tokenizer: Any, index: int, text: str, logprobs: list[TokenLogprob],
                 finish: str | None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "message": {"role": "assistant", "content": text},
                              "finish_reason": finish, "logprobs": None}
    if logprobs:
        choice["logprobs"] = _chat_logprobs(tokenizer, logprobs)
    return choice


def _chat_delta(tokenizer: Any, chunk: Chunk, first: bool) -> dict[str, Any]:
    delta: dict[str, Any] = {"role": "assistant", "content": chunk.text} if first else {"content": chunk.text}
    choice: dict[str, Any] = {"index": chunk.index, "delta": delta, "finish_reason": chunk.finish, "logprobs": None}
    if chunk.logprobs:
        choice["logprobs"] = _chat_logprobs(tokenizer, chunk.logprobs)
    return choice


def _text_choice(tokenizer: Any, index: int, text: str, logprobs: list[TokenLogprob],
                 finish: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "finish_reason": finish,
            "logprobs": _text_logprobs(tokenizer, logprobs) if logprobs else None}


def _text_delta(tokenizer: Any, chunk: Chunk, first: bool) -> dict[str, Any]:
    return {"index": chunk.index, "text": chunk.text, "finish_reason": chunk.finish,
            "logprobs": _text_logprobs(tokenizer, chunk.logprobs) if chunk.logprobs else None}


class BodyLimit:
    """The outermost layer: refuses bodies over `limit` bytes (413) before the app reads them, and
    requests to /v1/ without the API key when one is set (401)."""

    def __init__(self, app: FastAPI, limit: int, api_key: str | None) -> None:
        self.app, self.limit, self.api_key = app, limit, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.api_key is not None and scope["path"].startswith("/v1/") and not self._authorized(scope):
            await _send_json(send, 401, error_body("a valid API key is needed: send `Authorization: Bearer "
                                                   "KEY`", param=None, code="invalid_api_key"))
            return
        headers = dict(scope.get("headers", []))
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _send_json(send, 413, self._too_large())
            return
        body, more, messages = bytearray(), True, []
        while more:
            message = await receive()
            if message["type"] != "http.request":
                messages.append(message)
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await _send_json(send, 413, self._too_large())
                return
        replay: list[Message] = [{"type": "http.request", "body": bytes(body), "more_body": False}, *messages]

        async def replayed() -> Message:
            return replay.pop(0) if replay else await receive()

        await self.app(scope, replayed, send)

    def _too_large(self) -> dict[str, Any]:
        return error_body(f"the request body is over the server's limit of {self.limit} bytes (--max-body)",
                          code="request_too_large")

    def _authorized(self, scope: Scope) -> bool:
        assert self.api_key is not None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, key = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(key.strip(), self.api_key)
        return False


async def _send_json(send: Callable[[Message], Awaitable[None]], status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
