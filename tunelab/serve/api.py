"""An OpenAI-shaped HTTP API: `POST /v1/chat/completions` (streaming with server-sent events)
and `GET /v1/models`, so the `openai` package and curl work unchanged.

Limits (see `ServeLimits`): prompts too long get 400 `context_length_exceeded`; max_tokens is
capped; at most `max_concurrent` generations run while `max_queue` more wait, beyond which
requests get 429. A client that disconnects stops its generation at the next token.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from tunelab.errors import ModelNotFound, TunelabError
from tunelab.serve.generation import BadRequest, ServeLimits, check_chars, check_tokens, clean_messages, count_tokens, make_settings
from tunelab.serve.registry import ModelEntry, ModelRegistry, UnsafeModel


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessage]
    stream: bool = False
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None  # not in OpenAI's API; accepted as an extension
    seed: int | None = None
    n: int = 1
    stream_options: StreamOptions | None = None


def error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}}, status_code=status)


class QueueFull(TunelabError):
    pass


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


async def generate_pieces(registry: ModelRegistry, entry: ModelEntry, messages: list[dict], settings, cancel: threading.Event) -> AsyncIterator[str]:
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


def create_api(registry: ModelRegistry, limits: ServeLimits | None = None, api_key: str | None = None, app: FastAPI | None = None) -> FastAPI:
    """Add the /v1 routes to `app` (a new FastAPI app if None) and return it."""
    limits = limits or ServeLimits()
    app = app or FastAPI(title="tunelab API", docs_url="/v1/docs", openapi_url="/v1/openapi.json")
    gate = Gate(limits)
    app.state.gate = gate
    app.state.registry = registry
    created = int(time.time())

    def unauthorized(request: Request) -> JSONResponse | None:
        if not api_key:
            return None
        header = request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            return error(401, "missing or wrong API key (send 'Authorization: Bearer <key>')", "invalid_request_error", "invalid_api_key")
        return None

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", []) if x != "body")
        return error(400, f"invalid request: {where}: {first.get('msg', 'invalid')}", param=where or None, code="invalid_request")

    @app.get("/v1/models")
    async def list_models(request: Request):
        if (resp := unauthorized(request)) is not None:
            return resp
        await asyncio.to_thread(registry.refresh)
        return {"object": "list", "data": [{"id": e.id, "object": "model", "created": created, "owned_by": "tunelab", "label": e.label, "kind": e.kind, "base": e.base} for e in registry.entries.values()]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str, request: Request):
        if (resp := unauthorized(request)) is not None:
            return resp
        e = registry.entries.get(model_id)
        if e is None:
            return error(404, f"model '{model_id}' is not served here", code="model_not_found", param="model")
        return {"id": e.id, "object": "model", "created": created, "owned_by": "tunelab", "label": e.label, "kind": e.kind, "base": e.base}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        if (resp := unauthorized(request)) is not None:
            return resp
        if body.n != 1:
            return error(400, "only n=1 is supported", param="n", code="invalid_request")
        try:
            entry = registry.find(body.model) if body.model else next(iter(registry.entries.values()))
            messages = clean_messages([m.model_dump() for m in body.messages])
            check_chars(messages, limits)
            settings = make_settings(limits, max_tokens=body.max_completion_tokens or body.max_tokens, temperature=body.temperature, top_p=body.top_p, repetition_penalty=body.repetition_penalty, seed=body.seed)
            gate.reserve()
        except QueueFull as exc:
            return error(429, str(exc), "rate_limit_error", "queue_full")
        except UnsafeModel as exc:
            return error(403, str(exc), code="unsafe_model", param="model")
        except ModelNotFound as exc:
            return error(404, str(exc), code="model_not_found", param="model")
        except BadRequest as exc:
            return error(400, str(exc), code=exc.code, param="messages")

        # The gate reservation now belongs to this request: released below, or by the stream.
        try:
            model = await asyncio.to_thread(registry.get, entry)
            n_prompt = await asyncio.to_thread(check_tokens, model, messages, limits)
        except BaseException as exc:
            gate.release(False)
            if isinstance(exc, BadRequest):
                return error(400, str(exc), code=exc.code, param="messages")
            if isinstance(exc, UnsafeModel):
                return error(403, str(exc), code="unsafe_model", param="model")
            if isinstance(exc, ModelNotFound):
                return error(404, str(exc), code="model_not_found", param="model")
            raise
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        now = int(time.time())

        def usage(text: str) -> dict:
            n_out = count_tokens(model, text)
            return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}

        def finish_reason(u: dict) -> str:
            return "length" if u["completion_tokens"] >= settings.max_new_tokens else "stop"

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                stream_events(request, gate, registry, entry, messages, settings, completion_id, now, include_usage, usage, finish_reason),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )

        cancel = threading.Event()
        acquired = False
        parts: list[str] = []
        try:
            await gate.acquire()
            acquired = True
            async for piece in generate_pieces(registry, entry, messages, settings, cancel):
                parts.append(piece)
                if await request.is_disconnected():
                    cancel.set()
                    break
        finally:
            cancel.set()
            gate.release(acquired)
        text = "".join(parts).strip()
        u = usage(text)
        return {
            "id": completion_id, "object": "chat.completion", "created": now, "model": entry.id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason(u), "logprobs": None}],
            "usage": u,
        }

    return app


async def stream_events(request: Request, gate: Gate, registry: ModelRegistry, entry: ModelEntry, messages, settings, completion_id: str, created: int, include_usage: bool, usage, finish_reason):
    """Server-sent events in OpenAI's chat.completion.chunk shape, ending with `data: [DONE]`."""

    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": entry.id, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    cancel = threading.Event()
    acquired = False
    try:
        await gate.acquire()
        acquired = True
        yield chunk({"role": "assistant", "content": ""})
        parts: list[str] = []
        async for piece in generate_pieces(registry, entry, messages, settings, cancel):
            if await request.is_disconnected():
                cancel.set()
                return
            parts.append(piece)
            if piece:
                yield chunk({"content": piece})
        u = usage("".join(parts).strip())
        yield chunk({}, finish_reason(u))
        if include_usage:
            body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": entry.id, "choices": [], "usage": u}
            yield f"data: {json.dumps(body)}\n\n"
        yield "data: [DONE]\n\n"
    except Exception as exc:  # the response has started: report the error as an event, as OpenAI does
        logging.getLogger("tunelab.serve").exception("generation failed for %s", entry.id)
        yield f"data: {json.dumps({'error': {'message': f'{type(exc).__name__}: {exc}', 'type': 'server_error', 'param': None, 'code': None}})}\n\n"
    finally:
        cancel.set()
        gate.release(acquired)
