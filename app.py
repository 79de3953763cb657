"""Hugging Face Space entry point (Gradio SDK, CPU): `python app.py`.

Serves tunelab's chat UI for the models listed in TUNELAB_MODELS (comma-separated: run
directories, merged folders, .gguf files or catalog names), plus every run under TUNELAB_RUNS
(default `runs/` next to this file); with neither, the default model (SmolLM2-135M-Instruct,
as GGUF through llama.cpp when llama-cpp-python is installed, else through transformers).

On a Space (SPACE_ID is set) it listens on 0.0.0.0:7860 as Spaces expect; elsewhere on
127.0.0.1. TUNELAB_PASSWORD, if set, puts the UI behind a login (user `tunelab`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # use this checkout's tunelab even when it is not pip-installed
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tunelab.runs import DEFAULT_RUNS_DIR  # noqa: E402
from tunelab.serve.generation import ServeLimits  # noqa: E402
from tunelab.serve.registry import build_registry  # noqa: E402
from tunelab.serve.ui import build_ui  # noqa: E402

models = [m.strip() for m in os.environ.get("TUNELAB_MODELS", "").split(",") if m.strip()]
runs = Path(os.environ.get("TUNELAB_RUNS", HERE / DEFAULT_RUNS_DIR))


def from_environment(**variables: str) -> dict[str, int]:
    """{setting: its integer value} for the settings whose environment variable is set; one left out keeps
    the default of ServeLimits or the registry, the same as `tunelab serve` without the option."""
    return {setting: int(os.environ[name]) for setting, name in variables.items() if os.environ.get(name)}


limits = ServeLimits(**from_environment(max_tokens="TUNELAB_MAX_TOKENS", max_concurrent="TUNELAB_MAX_CONCURRENT"))
registry = build_registry(models, runs=runs, **from_environment(cache_size="TUNELAB_CACHE_SIZE"))
demo = build_ui(registry, limits, title=os.environ.get("TUNELAB_TITLE", "tunelab chat"))

if __name__ == "__main__":
    on_space = bool(os.environ.get("SPACE_ID"))
    password = os.environ.get("TUNELAB_PASSWORD")
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if on_space else "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", os.environ.get("PORT", "7860"))),
        auth=("tunelab", password) if password else None,
        footer_links=["api"],
    )
