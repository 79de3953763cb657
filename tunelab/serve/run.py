"""`tunelab serve` (chat UI, optionally with the API mounted) and `tunelab api` (HTTP API only).

Both bind to 127.0.0.1 unless told otherwise and run one uvicorn server. `ServerThread` runs
the same app in a background thread (tests, benchmarks).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from tunelab.progress import console
from tunelab.runs import DEFAULT_RUNS_DIR
from tunelab.serve.generation import ServeLimits
from tunelab.serve.registry import MODEL_CACHE_SIZE, ModelRegistry, build_registry

UI_USER = "tunelab"


def build_app(
    registry: ModelRegistry,
    limits: ServeLimits | None = None,
    *,
    ui: bool = True,
    api: bool = False,
    password: str | None = None,
    api_key: str | None = None,
):
    """A FastAPI app with the OpenAI-style API under /v1 (if `api`) and the Gradio UI at / (if `ui`)."""
    from fastapi import FastAPI  # fastapi, gradio and uvicorn: the serve extra, imported where they are used

    limits = limits or ServeLimits()
    app = FastAPI(title="tunelab", docs_url=None, redoc_url=None)
    if api:
        from tunelab.serve.api import create_api  # it imports fastapi (the serve extra)

        create_api(registry, limits, api_key=api_key, app=app)
    if ui:
        import gradio as gr  # ~3 s to import (measured): an API-only server does without it

        from tunelab.serve.ui import build_ui  # it imports gradio

        demo = build_ui(registry, limits)
        app = gr.mount_gradio_app(app, demo, path="", auth=(UI_USER, password) if password else None, footer_links=["api"])
    return app


def _describe(registry: ModelRegistry) -> None:
    console.print(f"Serving {len(registry.entries)} model(s) (loaded on first use, at most {registry.cache_size} kept in memory):")
    for e in registry.entries.values():
        console.print(f"  [bold]{e.id}[/]  {e.label}  [dim]{e.ref}[/]")


def _warn_public(host: str, secret: str | None, what: str) -> None:
    if host not in {"127.0.0.1", "localhost", "::1"} and not secret:
        console.print(f"[yellow]warning:[/] listening on {host} without a {what}: anyone who can reach this machine can use the models")


def _run(app, host: str, port: int) -> None:
    import uvicorn  # the serve extra

    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)


def serve_cli(
    models: list[str],
    *,
    runs: Path = DEFAULT_RUNS_DIR,
    host: str = "127.0.0.1",
    port: int = 7860,
    password: str | None = None,
    api: bool = False,
    limits: ServeLimits | None = None,
    cache_size: int = MODEL_CACHE_SIZE,
) -> None:
    registry = build_registry(models, runs=runs, cache_size=cache_size)
    _describe(registry)
    _warn_public(host, password, "password (--password)")
    app = build_app(registry, limits, ui=True, api=api, password=password, api_key=password)
    console.print(
        f"Chat UI: http://{host}:{port}/"
        + (f"   API: http://{host}:{port}/v1 (key: the password)" if api else "")
        + (f"   (user '{UI_USER}' + password)" if password else "")
    )
    _run(app, host, port)


def api_cli(
    models: list[str],
    *,
    runs: Path = DEFAULT_RUNS_DIR,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    limits: ServeLimits | None = None,
    cache_size: int = MODEL_CACHE_SIZE,
) -> None:
    registry = build_registry(models, runs=runs, cache_size=cache_size)
    _describe(registry)
    _warn_public(host, api_key, "API key (--api-key)")
    app = build_app(registry, limits, ui=False, api=True, api_key=api_key)
    console.print(f"OpenAI-style API: http://{host}:{port}/v1   (POST /v1/chat/completions, GET /v1/models)")
    _run(app, host, port)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    """Run an ASGI app with uvicorn in a background thread: `with ServerThread(app) as url: ...`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None, start_timeout: float = 60):
        import uvicorn  # the serve extra

        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, log_level="warning", timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="uvicorn")
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.05)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
