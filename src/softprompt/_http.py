"""The HTTP API of ``softprompt serve``: OpenAI's completions and chat completions, and ``/v1/classify``.

FastAPI routes on uvicorn. A request is checked (API key, body, task, lengths) before anything is
queued, so bad input costs nothing and gets one line saying what is wrong; the rows then go to the
engine, whose events come back to the event loop through an ``asyncio.Queue`` and are decoded here,
on the web thread. Streams are server-sent events as OpenAI sends them (``data: {chunk}`` ...
``data: [DONE]``); a client that goes away mid-stream cancels its rows, which leave the batch at the
next decoding step. Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException

from ._collate import word_tags
from ._engine import Generation, QueueFull, Scoring, ShuttingDown

if TYPE_CHECKING:
    from .serve import Served, Server


class ApiError(Exception):
    """An HTTP error with a one-line message, answered in OpenAI's error shape."""

    def __init__(self, status: int, message: str, kind: str | None = None, *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers
        self.kind = kind or {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error",
                             503: "server_error", 500: "server_error"}.get(status, "invalid_request_error")

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# -- request bodies ------------------------------------------------------------------------------
class _Body(BaseModel):
    # Strict: "5" is not 5; unknown fields are errors, so a misspelled option is never silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Body):
    include_usage: bool = False


UNSUPPORTED: dict[str, tuple] = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False), "best_of": (None, 1),
    "suffix": (None, ""), "logit_bias": (None, {}), "frequency_penalty": (None, 0), "presence_penalty": (None, 0),
    "tools": (None, []), "tool_choice": (None, "none", "auto"), "parallel_tool_calls": (None, True, False),
    "functions": (None, []), "function_call": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
}
"""OpenAI parameters this server does not implement, with the values that ask for nothing: those pass, others get 400."""


def _same(value: Any, neutral: Any) -> bool:
    if isinstance(value, bool) or isinstance(neutral, bool):  # False is not 0 here: logprobs=0 asks for something
        return value is neutral
    if isinstance(value, (int, float)) and isinstance(neutral, (int, float)):
        return value == neutral
    return type(value) is type(neutral) and value == neutral


def _refuse_unsupported(values: Any) -> Any:
    if isinstance(values, dict):
        for name in list(values):
            if name in UNSUPPORTED:
                if not any(_same(values[name], neutral) for neutral in UNSUPPORTED[name]):
                    raise PydanticCustomError("unsupported", f"{name} is not supported by this server (got "
                                              f"{json.dumps(values[name])[:60]}); leave it out")
                del values[name]
    return values


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    """0 is greedy decoding, the answer `softprompt generate` gives."""
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = Field(None, max_length=16)
    seed: int | None = None
    """Seeds the sampler of the request's first choice; choice j of `n` samples with seed + j."""
    n: int = Field(1, ge=1, le=64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _neutral(cls, values: Any) -> Any:
        return _refuse_unsupported(dict(values) if isinstance(values, dict) else values)

    @model_validator(mode="after")
    def _streamed(self):
        if self.stream_options is not None and not self.stream:
            raise PydanticCustomError("unsupported", "stream_options is only allowed with \"stream\": true")
        return self


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(min_length=1)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    """developer is OpenAI's newer name for system, and reaches the chat template as system."""
    content: str | list[TextPart]

    def for_template(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "\n".join(part.text for part in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class ClassifyRequest(_Body):
    model: str
    input: str | list[str] = Field(min_length=1)


class PromptRequest(_Body):
    name: str = Field(min_length=1)
    path: str = Field(min_length=1)


# -- text as tokens arrive -----------------------------------------------------------------------
class TextStream:
    """A row's text as its tokens arrive: the part that can be sent so far, cut at the first stop string.

    The text is always the whole row decoded (skipping special tokens, stripped where the task's
    answers are, as ``softprompt generate`` strips them); a delta holds back what may still change --
    an incomplete character, trailing space a strip would drop, the start of a stop string.
    """

    def __init__(self, tokenizer, strip: bool, stops: list[str]) -> None:
        self.tokenizer, self.strip, self.stops = tokenizer, strip, [s for s in stops if s]
        self.tokens: list[int] = []
        self.sent = ""
        self.final: str | None = None

    def _text(self) -> str:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        return text.strip() if self.strip else text

    def add(self, token: int) -> tuple[str, bool]:
        """(new text to send, whether a stop string ended the row)."""
        self.tokens.append(token)
        text = self._text()
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            return self._close(text[: min(cuts)]), True
        safe = text.rstrip("\ufffd")
        held = max((k for s in self.stops for k in range(1, len(s)) if safe.endswith(s[:k])), default=0)
        safe = safe[: len(safe) - held]
        if not safe.startswith(self.sent):
            return "", False
        delta, self.sent = safe[len(self.sent):], safe
        return delta, False

    def finish(self) -> str:
        """The rest of the text once the row has ended."""
        return self._close(self._text())

    def _close(self, text: str) -> str:
        self.final = text.rstrip() if self.strip else text
        delta = self.final[len(self.sent):] if self.final.startswith(self.sent) else ""
        self.sent = self.final
        return delta


class _Rows:
    """One request's rows in the engine; their events come back as (index, text delta, finish reason or None).

    Each prompt gets `n` rows, in OpenAI's order: choice i * n + j is the j-th answer to prompt i.
    """

    def __init__(self, server: Server, served: Served, ids: list[list[int]], max_tokens: int, body: _Sampling,
                 strip: bool) -> None:
        loop = asyncio.get_running_loop()
        self.server = server
        self.events: asyncio.Queue = asyncio.Queue()
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        every = [(row, j) for row in ids for j in range(body.n)]
        self.texts = [TextStream(server.tokenizer, strip, stops) for _ in every]
        self.rows = [Generation(served.key, row, max_tokens, partial(self._emit, loop, i), body.temperature, body.top_p,
                                None if body.seed is None else body.seed + j) for i, (row, j) in enumerate(every)]
        self.prompt_tokens = sum(len(row) for row in ids)  # each prompt counted once, whatever n is, as OpenAI counts
        self.reasons: list[str | None] = [None] * len(every)

    def _emit(self, loop: asyncio.AbstractEventLoop, index: int, event: str, value: Any) -> None:
        loop.call_soon_threadsafe(self.events.put_nowait, (index, event, value))  # from the engine's thread

    def submit(self) -> None:
        _submit(self.server, self.rows)

    @property
    def usage(self) -> dict[str, int]:
        completion = sum(len(t.tokens) for t in self.texts)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    async def stream(self) -> AsyncIterator[tuple[int, str, str | None]]:
        running = set(range(len(self.rows)))
        try:
            while running:
                index, event, value = await self.events.get()
                if index not in running:
                    continue  # a row cut at a stop string, whose cancellation the engine confirms
                text = self.texts[index]
                if event == "token":
                    delta, stopped = text.add(value)
                    if stopped:
                        self.server.engine.cancel(self.rows[index], "stop")
                    if stopped or delta:
                        yield index, delta, self._end(running, index, "stop") if stopped else None
                elif event == "finish":
                    yield index, text.finish(), self._end(running, index, "length" if value == "length" else "stop")
                else:
                    raise ApiError(500, f"generation failed: {value}")
        finally:  # the request ended, or its client went away: free every row still decoding
            for row in self.rows:
                self.server.engine.cancel(row)

    def _end(self, running: set[int], index: int, reason: str) -> str:
        running.discard(index)
        self.reasons[index] = reason
        return reason

    async def collect(self, request: Request) -> list[str]:
        """Every row's whole text; a client that goes away first frees the rows (and gets no answer)."""
        async def drain() -> None:
            async for _ in self.stream():
                pass

        work, gone = asyncio.ensure_future(drain()), asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()  # the stream's own cleanup cancels the rows
        if work.cancelled():
            raise ApiError(499, "the client closed the connection before the answer was ready")
        work.result()  # an error in generation
        return [t.final or "" for t in self.texts]


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body has been read, so the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _submit(server: Server, rows: list[Generation] | list[Scoring]) -> None:
    if len(rows) > server.engine.max_queue:
        raise ApiError(400, f"the request has {len(rows)} rows (texts times n) but the server queues at most "
                            f"{server.engine.max_queue}; send fewer in each request")
    try:
        server.engine.submit(rows)
    except QueueFull as exc:
        raise ApiError(429, f"the server is busy: {exc}", headers={"Retry-After": "1"}) from None
    except ShuttingDown as exc:
        raise ApiError(503, str(exc), headers={"Retry-After": "5"}) from None


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


# -- the app -------------------------------------------------------------------------------------
class _Gate:
    """ASGI middleware: the API key on every /v1 route (before the body is read) and the request counter."""

    def __init__(self, app, server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def counted(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            key = self.server.api_key
            if key is not None and scope["path"].startswith("/v1/") and not _authorized(scope, key):
                error = ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                                 code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                return await error.response()(scope, receive, counted)
            await self.app(scope, receive, counted)
        finally:
            route = scope.get("route")
            self.server.metrics.requests.labels(getattr(route, "path", "unmatched"), str(status)).inc()


def _authorized(scope, key: str) -> bool:
    header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), key.encode())


def _invalid(exc: RequestValidationError) -> str:
    error = exc.errors()[0]
    if error.get("type") == "unsupported":
        return error["msg"]
    if error.get("type") in ("too_short", "string_too_short") and error.get("input") in ("", []):
        where = ".".join(str(p) for p in error["loc"][1:2])
        return f"{where} is empty; send at least one {'character' if error['input'] == '' else 'item'}"
    if error.get("type") == "json_invalid":
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error', error['msg'])}); send a JSON object"
    # Union members appear in the location ("prompt.str"); the field is what the caller wrote.
    where = ".".join(str(p) for p in error["loc"][1:] if not (isinstance(p, str) and ("[" in p or p in ("str", "int"))))
    return f"{where or 'body'}: {error['msg']}" + (f" (got {json.dumps(error['input'])[:80]})" if where and "input" in error else "")


def create_app(server: Server) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.engine.start()
        yield
        await asyncio.to_thread(server.engine.stop)  # every accepted row finishes first

    app = FastAPI(title="softprompt", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(_Gate, server=server)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return ApiError(400, _invalid(exc)).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return ApiError(exc.status_code, str(exc.detail), headers=exc.headers).response()

    def model_entry(served: Served) -> dict[str, Any]:
        return {"id": served.name, "object": "model", "created": served.created, "owned_by": "softprompt",
                "base_model": server.name, "method": served.method, "task_type": served.kind,
                "serves": "generate" if served.kind == "generation" else "classify", "endpoint": served.endpoint,
                "chat": served.kind == "generation" and bool(getattr(server.tokenizer, "chat_template", None)),
                "labels": served.collator.labels if served.collator and served.kind != "generation" else None,
                "prompt_tokens": server.prompt_tokens(served), "source": served.source}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(resources.files("softprompt").joinpath("static/index.html").read_text())

    @app.get("/health")
    async def health() -> JSONResponse:
        alive = server.engine.alive
        body = {"status": "ok" if alive else "engine stopped", "models": len(server.tasks),
                "active_rows": server.engine.active, "waiting_rows": server.engine.waiting}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_entry(s) for s in server.tasks.values()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict:
        return model_entry(server.lookup(name))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        served = server.lookup(body.model, "generation")
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        ids = [server.completion_ids(served, text) for text in texts]
        rows = _Rows(server, served, ids, server.budget(served, ids, body.max_tokens), body, strip=served.collator is not None)
        rows.submit()
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": served.name}
        if body.stream:
            def chunk(index: int, delta: str, reason: str | None) -> dict:
                return {**head, "choices": [{"index": index, "text": delta, "finish_reason": reason, "logprobs": None}]}
            return _streaming(rows, chunk, head, body)
        texts = await rows.collect(request)
        choices = [{"index": i, "text": t, "finish_reason": r, "logprobs": None} for i, (t, r) in enumerate(zip(texts, rows.reasons))]
        return {**head, "choices": choices, "usage": rows.usage}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        served = server.lookup(body.model, "generation")
        ids = [server.chat_ids(served, [m.for_template() for m in body.messages])]
        rows = _Rows(server, served, ids, server.budget(served, ids, body.max_completion_tokens or body.max_tokens), body,
                     strip=False)
        rows.submit()
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": served.name}
        if body.stream:
            def chunk(index: int, delta: str, reason: str | None) -> dict:
                return {**head, "object": "chat.completion.chunk",
                        "choices": [{"index": index, "delta": {"content": delta} if delta else {}, "finish_reason": reason}]}
            return _streaming(rows, chunk, {**head, "object": "chat.completion.chunk"}, body,
                              first=[{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                                     for i in range(len(rows.rows))])
        texts = await rows.collect(request)
        choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r}
                   for i, (t, r) in enumerate(zip(texts, rows.reasons))]
        return {**head, "choices": choices, "usage": rows.usage}

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest):
        served = server.lookup(body.model, "classify")
        texts = [body.input] if isinstance(body.input, str) else body.input
        prepared = [server.classify_row(served, text) for text in texts]
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in prepared]

        def settle(future: asyncio.Future, result: torch.Tensor | BaseException) -> None:
            if not future.done():
                (future.set_exception if isinstance(result, BaseException) else future.set_result)(result)

        rows = [Scoring(served.key, ids, lambda result, f=f: loop.call_soon_threadsafe(settle, f, result))
                for (ids, _, _), f in zip(prepared, futures)]
        _submit(server, rows)
        try:
            results = await asyncio.gather(*futures)
        except Exception as exc:
            raise ApiError(500, f"classification failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        labels = served.collator.labels
        data = []
        for index, (logits, (ids, word_ids, words)) in enumerate(zip(results, prepared)):
            if served.kind == "token-classification":
                best = logits[:, : len(labels)].argmax(-1).tolist()  # (T,)
                data.append({"index": index, "words": words, "tags": word_tags(best, word_ids, len(words), labels, False)})
            else:
                scores = torch.softmax(logits[: len(labels)], -1).tolist()  # (C,)
                data.append({"index": index, "label": labels[int(logits[: len(labels)].argmax())],
                             "scores": dict(zip(labels, scores))})
        tokens = sum(len(ids) for ids, _, _ in prepared)
        return {"object": "list", "model": served.name, "data": data, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/prompts", status_code=201)
    async def add_prompt(body: PromptRequest):
        taken = f"a model named {body.name!r} is served already; DELETE /v1/prompts/{body.name} first"
        if body.name in server.tasks:
            raise ApiError(409, taken)
        try:  # the prompt joins the model in the engine's thread, between two steps
            served = await asyncio.wrap_future(server.engine.call(partial(server.load, body.name, body.path)))
        except ShuttingDown as exc:
            raise ApiError(503, str(exc)) from None
        except (ValueError, OSError) as exc:  # CheckpointError, a missing folder, another base model
            raise ApiError(400, str(exc).splitlines()[0], param="path") from None
        if body.name in server.tasks:  # another request took the name meanwhile
            server.engine.retire(served.key)
            raise ApiError(409, taken)
        server.tasks[body.name] = served
        return model_entry(served)

    @app.delete("/v1/prompts/{name:path}")
    async def remove_prompt(name: str):
        server.remove(name)
        return {"id": name, "object": "model", "deleted": True}

    return app


def _streaming(rows: _Rows, chunk, head: dict, body: _Sampling, first: list[dict] = ()) -> StreamingResponse:
    """Server-sent events as OpenAI sends them: a chunk per piece of text, then (with stream_options.include_usage)
    one with no choices and the usage -- every chunk before it has "usage": null -- then [DONE]."""
    counted = body.stream_options is not None and body.stream_options.include_usage
    extra = {"usage": None} if counted else {}

    async def events() -> AsyncIterator[str]:
        for choice in first:
            yield _sse({**head, "choices": [choice], **extra})
        try:
            async for index, delta, reason in rows.stream():
                yield _sse({**chunk(index, delta, reason), **extra})
        except ApiError as exc:
            yield _sse({"error": {"message": exc.message, "type": exc.kind, "param": None, "code": None}})
            return
        if counted:
            yield _sse({**head, "choices": [], "usage": rows.usage})
        yield _sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
