"""An OpenAI-shaped HTTP API: `POST /v1/chat/completions` (streaming with server-sent events)
and `GET /v1/models`, so the `openai` package and curl work unchanged.

Limits (see `ServeLimits`): prompts too long get 400 `context_length_exceeded`; max_tokens is
capped; at most `max_concurrent` generations run while `max_queue` more wait, beyond which
requests get 429 `queue_full`. Out-of-range settings get 400 with OpenAI's error shape, and
`stop` sequences end the answer before them. With an API key, every /v1 route answers 401
without it, before the body is read. A client that disconnects stops its generation at the
next token. Error bodies never show the server's folders (they are logged instead).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException

from tunelab.errors import ModelNotFound, TunelabError
from tunelab.models.interface import ChatModel, GenerationSettings
from tunelab.serve.generation import (
    MAX_STOP_SEQUENCES,
    BadRequest,
    ServeLimits,
    StopText,
    check_chars,
    check_tokens,
    clean_messages,
    make_settings,
)
from tunelab.serve.registry import ModelEntry, ModelRegistry, UnsafeModel

log = logging.getLogger("tunelab.serve")
INT32_MAX = 2**31 - 1  # a larger max_tokens is a mistake, not a wish for "as many as allowed"


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's request fields tunelab uses, with OpenAI's ranges; other fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)  # not in OpenAI's API; accepted as an extension
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    n: int = Field(1, ge=1, le=1, description="only one answer per request")
    stop: str | list[str] | None = None
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(not s for s in stops):
            raise ValueError("a stop sequence must not be empty")
        return stops


def error(
    status: int, message: str, type_: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status)


class QueueFull(TunelabError):
    pass


class Refused(Exception):
    """A request answered with an error before generation starts."""

    def __init__(self, response: JSONResponse):
        self.response = response


class Gate:
    """At most `max_concurrent` generations at once, `max_queue` more waiting, the rest refused."""

    def __init__(self, limits: ServeLimits):
        self.limits = limits
        self.pending = 0
        self._sem: asyncio.Semaphore | None = None

    def reserve(self) -> None:
        if self.pending >= self.limits.max_concurrent + self.limits.max_queue:
            raise QueueFull(f"the server is busy ({self.pending} requests running or queued); retry shortly")
        self.pending += 1

    async def acquire(self) -> None:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.limits.max_concurrent)
        await self._sem.acquire()

    def release(self, acquired: bool) -> None:
        if acquired and self._sem is not None:
            self._sem.release()
        self.pending -= 1


class RequireKey:
    """ASGI middleware: every /v1 route needs `Authorization: Bearer <key>`, checked before the
    body is read (so a client without the key learns nothing from validation errors)."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            given = header[7:].strip() if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), self.key):
                response = error(401, "missing or wrong API key (send 'Authorization: Bearer <key>')", code="invalid_api_key")
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Pydantic's first complaint as OpenAI's 400 body (malformed JSON included)."""
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(x) for x in first.get("loc", []) if x != "body")
    return error(400, f"invalid request: {where or 'body'}: {first.get('msg', 'invalid')}", param=where or None, code="invalid_request")


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own errors (an unreadable body, an unknown /v1 route) in OpenAI's shape too."""
    if not request.url.path.startswith("/v1"):
        return await http_exception_handler(request, exc)  # the UI's routes keep FastAPI's shape
    return error(exc.status_code, str(exc.detail), code="invalid_request" if exc.status_code == 400 else None)


def refusal(exc: BaseException, name: str | None, registry: ModelRegistry) -> JSONResponse | None:
    """The client's error for a refused request; the details with server paths go to the log only."""
    if isinstance(exc, QueueFull):
        return error(429, str(exc), "rate_limit_error", "queue_full")
    if isinstance(exc, UnsafeModel):
        log.warning("refused model %r: %s", name, exc)
        return error(
            403,
            f"model '{name}' is refused: this server loads only its own models (safetensors or GGUF inside its allowed folders)",
            code="unsafe_model",
            param="model",
        )
    if isinstance(exc, ModelNotFound):
        log.info("model %r not found: %s", name, exc)
        return error(
            404, f"model '{name}' is not served here; available: {', '.join(registry.entries)}", code="model_not_found", param="model"
        )
    if isinstance(exc, BadRequest):
        return error(400, str(exc), code=exc.code, param="messages")
    return None


@dataclass
class Job:
    """One admitted request: the model loaded, the prompt checked, a place in the gate reserved."""

    entry: ModelEntry
    model: ChatModel
    messages: list[dict]
    settings: GenerationSettings
    stops: list[str]
    n_prompt: int
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))

    def usage(self, text: str) -> dict:
        n_out = self.model.count_tokens(text)
        return {"prompt_tokens": self.n_prompt, "completion_tokens": n_out, "total_tokens": self.n_prompt + n_out}

    def finish_reason(self, usage: dict, stopped: bool) -> str:
        return "stop" if stopped or usage["completion_tokens"] < self.settings.max_new_tokens else "length"


async def admit(body: ChatRequest, registry: ModelRegistry, limits: ServeLimits, gate: Gate) -> Job:
    """Check the request, reserve a place in the gate and load the model; Refused otherwise."""
    try:
        entry = registry.find(body.model) if body.model else next(iter(registry.entries.values()))
        messages = clean_messages([m.model_dump() for m in body.messages])
        check_chars(messages, limits)
        settings = make_settings(
            limits,
            max_tokens=body.max_completion_tokens or body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            repetition_penalty=body.repetition_penalty,
            seed=body.seed,
        )
        gate.reserve()
    except TunelabError as exc:
        if (response := refusal(exc, body.model, registry)) is not None:
            raise Refused(response) from None
        raise
    # The gate reservation now belongs to this request: released here on failure, else by the answer.
    try:
        model = await asyncio.to_thread(registry.get, entry)
        n_prompt = await asyncio.to_thread(check_tokens, model, messages, limits)
    except BaseException as exc:
        gate.release(False)
        if (response := refusal(exc, body.model, registry)) is not None:
            raise Refused(response) from None
        raise
    return Job(entry, model, messages, settings, body.stop, n_prompt)


async def generate_pieces(
    registry: ModelRegistry, entry: ModelEntry, messages: list[dict], settings, cancel: threading.Event
) -> AsyncIterator[str]:
    """Run the model's stream in a worker thread and hand its pieces to the event loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    def put(item):
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (server shutting down)
            cancel.set()

    def work():
        pieces = registry.stream(entry, messages, settings)
        try:
            for piece in pieces:
                if cancel.is_set():
                    break
                put(piece)
        except BaseException as exc:
            put(exc)
        finally:
            pieces.close()  # stops generation if we left early
            put(done)

    threading.Thread(target=work, daemon=True, name=f"generate-{entry.id}").start()
    try:
        while True:
            item = await queue.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.set()


async def answer_pieces(request: Request, registry: ModelRegistry, job: Job, stop: StopText, cancel: threading.Event) -> AsyncIterator[str]:
    """The answer's text pieces, cut before any stop sequence; ends early if the client leaves.
    The caller sets `cancel` when it is done (that ends generation, however the caller ended)."""
    async for piece in generate_pieces(registry, job.entry, job.messages, job.settings, cancel):
        if await request.is_disconnected():
            return
        if text := stop.feed(piece):
            yield text
        if stop.hit:
            return
    if tail := stop.flush():
        yield tail


async def complete(request: Request, gate: Gate, registry: ModelRegistry, job: Job) -> dict:
    """A whole chat.completion (non-streaming)."""
    stop, cancel = StopText(job.stops), threading.Event()
    acquired = False
    parts: list[str] = []
    try:
        await gate.acquire()
        acquired = True
        async for piece in answer_pieces(request, registry, job, stop, cancel):
            parts.append(piece)
    finally:
        cancel.set()
        gate.release(acquired)
    text = "".join(parts).strip()
    usage = job.usage(text)
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": job.finish_reason(usage, stop.hit)}
    return {
        "id": job.id,
        "object": "chat.completion",
        "created": job.created,
        "model": job.entry.id,
        "choices": [{**choice, "logprobs": None}],
        "usage": usage,
    }


async def stream_events(request: Request, gate: Gate, registry: ModelRegistry, job: Job, include_usage: bool):
    """Server-sent events in OpenAI's chat.completion.chunk shape, ending with `data: [DONE]`."""

    def event(choices: list, **extra) -> str:
        body = {"id": job.id, "object": "chat.completion.chunk", "created": job.created, "model": job.entry.id, "choices": choices}
        return f"data: {json.dumps({**body, **extra}, ensure_ascii=False)}\n\n"

    def chunk(delta: dict, finish: str | None = None) -> str:
        return event([{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}])

    stop, cancel = StopText(job.stops), threading.Event()
    acquired = False
    try:
        await gate.acquire()
        acquired = True
        yield chunk({"role": "assistant", "content": ""})
        parts: list[str] = []
        async for piece in answer_pieces(request, registry, job, stop, cancel):
            parts.append(piece)
            yield chunk({"content": piece})
        if await request.is_disconnected():
            return
        usage = job.usage("".join(parts).strip())
        yield chunk({}, job.finish_reason(usage, stop.hit))
        if include_usage:
            yield event([], usage=usage)
        yield "data: [DONE]\n\n"
    except Exception as exc:  # the response has started: report the error as an event, as OpenAI does
        log.exception("generation failed for %s", job.entry.id)
        message = {"message": f"{type(exc).__name__}: {exc}", "type": "server_error", "param": None, "code": None}
        yield f"data: {json.dumps({'error': message})}\n\n"
    finally:
        cancel.set()  # ends generation however the stream ended (done, stop sequence, client gone)
        gate.release(acquired)


def add_model_routes(app: FastAPI, registry: ModelRegistry) -> None:
    created = int(time.time())

    def card(e: ModelEntry) -> dict:
        return {"id": e.id, "object": "model", "created": created, "owned_by": "tunelab", "label": e.label, "kind": e.kind, "base": e.base}

    @app.get("/v1/models")
    async def list_models():
        await asyncio.to_thread(registry.refresh)
        return {"object": "list", "data": [card(e) for e in registry.entries.values()]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str):
        e = registry.entries.get(model_id)
        if e is None:
            return error(404, f"model '{model_id}' is not served here", code="model_not_found", param="model")
        return card(e)


def add_chat_route(app: FastAPI, registry: ModelRegistry, limits: ServeLimits, gate: Gate) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        try:
            job = await admit(body, registry, limits, gate)
        except Refused as refused:
            return refused.response
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                stream_events(request, gate, registry, job, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await complete(request, gate, registry, job)


def create_api(
    registry: ModelRegistry, limits: ServeLimits | None = None, api_key: str | None = None, app: FastAPI | None = None
) -> FastAPI:
    """Add the /v1 routes to `app` (a new FastAPI app if None) and return it."""
    limits = limits or ServeLimits()
    app = app or FastAPI(title="tunelab API", docs_url="/v1/docs", openapi_url="/v1/openapi.json")
    gate = Gate(limits)
    app.state.gate = gate
    app.state.registry = registry
    if api_key:
        app.add_middleware(RequireKey, api_key=api_key)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    add_model_routes(app, registry)
    add_chat_route(app, registry, limits, gate)
    return app
