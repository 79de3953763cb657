"""The Hugging Face Space entry point: the chat UI, built from a folder and the environment, and
launched the way a Space expects. Two app.py files call it, each in a few lines:

- the repository's `app.py` (`checkout_ui`): the models in TUNELAB_MODELS (comma-separated run
  directories, merged folders, .gguf files or catalog names) and every run under TUNELAB_RUNS
  (default `runs/` beside app.py); with neither, the default model (as GGUF through llama.cpp
  when llama-cpp-python is installed, else through transformers);
- the `app.py` that `tunelab export RUN --format space` writes (`space_folder_ui`): the tuned GGUF
  and its base that the folder's space.json names, votes in the folder's eval/ or TUNELAB_VOTES.

`launch` listens on 0.0.0.0:7860 on a Space (SPACE_ID set), on 127.0.0.1 elsewhere;
GRADIO_SERVER_NAME and GRADIO_SERVER_PORT (or PORT) override that. TUNELAB_PASSWORD puts the UI
behind a login (user `tunelab`). TUNELAB_MAX_TOKENS, TUNELAB_MAX_CONCURRENT, TUNELAB_CACHE_SIZE
and TUNELAB_TITLE set what their names say; one left unset keeps its default.

Serving GGUF files imports neither torch nor transformers from here (tests/test_serve.py checks
it), so a Space folder's requirements stay small.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tunelab.runs import DEFAULT_RUNS_DIR
from tunelab.serve.generation import ServeLimits
from tunelab.serve.registry import ModelEntry, ModelRegistry, build_registry
from tunelab.serve.run import UI_USER
from tunelab.serve.ui import build_ui

# transformers' tokenizers warn after a fork once they have run in parallel; a served model needs no parallel tokenizing
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The settings an environment variable may give, by setting; one left unset keeps its default.
SETTINGS_FROM_ENVIRONMENT = {
    "max_tokens": "TUNELAB_MAX_TOKENS",
    "max_concurrent": "TUNELAB_MAX_CONCURRENT",
    "cache_size": "TUNELAB_CACHE_SIZE",
}
# A Space folder runs on a free CPU Space (2 cores): short answers, one generation at a time, both models in memory.
SPACE_FOLDER_DEFAULTS = {"max_tokens": 256, "max_concurrent": 1, "cache_size": 2}


def settings_from_environment(**defaults: int) -> tuple[ServeLimits, dict[str, int]]:
    """(the serving limits, the registry's settings) from the variables of SETTINGS_FROM_ENVIRONMENT that are
    set, else `defaults`; a setting in neither is not passed on, so it keeps the default `tunelab serve` has."""
    given = {setting: int(os.environ[name]) for setting, name in SETTINGS_FROM_ENVIRONMENT.items() if os.environ.get(name)}
    settings = {**defaults, **given}
    registry_settings = {"cache_size": settings.pop("cache_size")} if "cache_size" in settings else {}
    return ServeLimits(**settings), registry_settings


def checkout_ui(here: Path):
    """The repository's app.py: models named in TUNELAB_MODELS and the runs under TUNELAB_RUNS."""
    models = [m.strip() for m in os.environ.get("TUNELAB_MODELS", "").split(",") if m.strip()]
    runs = Path(os.environ.get("TUNELAB_RUNS", here / DEFAULT_RUNS_DIR))
    limits, registry_settings = settings_from_environment()
    registry = build_registry(models, runs=runs, **registry_settings)
    return build_ui(registry, limits, title=os.environ.get("TUNELAB_TITLE", "tunelab chat"))


def space_folder_registry(here: Path, space: dict, cache_size: int) -> ModelRegistry:
    """The tuned GGUF and its base, as space.json (written by tunelab/export/space.py) names them."""
    base = ModelEntry(space["base"]["id"], space["base"]["label"], str(here / space["base"]["file"]), "base")
    tuned = ModelEntry(
        space["tuned"]["id"],
        space["tuned"]["label"],
        str(here / space["tuned"]["file"]),
        "gguf",
        base=base.id,
        run=space["run"],
        run_dir=str(here),  # the folder is its own run: data/test.jsonl gives the prompts, eval/ keeps the votes
    )
    return ModelRegistry([tuned, base], allowed_roots=[here / "models"], cache_size=cache_size)


def space_folder_ui(here: Path):
    """The app.py of a folder written by `tunelab export RUN --format space`."""
    space = json.loads((here / "space.json").read_text())
    limits, registry_settings = settings_from_environment(**SPACE_FOLDER_DEFAULTS)
    registry = space_folder_registry(here, space, **registry_settings)
    votes = os.environ.get("TUNELAB_VOTES")
    title = os.environ.get("TUNELAB_TITLE", space["title"])
    return build_ui(registry, limits, title=title, votes_file=Path(votes) if votes else None)


def launch(demo) -> None:
    """Serve the UI: on 0.0.0.0:7860 on a Space (SPACE_ID set), on 127.0.0.1 elsewhere."""
    on_space = bool(os.environ.get("SPACE_ID"))
    password = os.environ.get("TUNELAB_PASSWORD")
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if on_space else "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", os.environ.get("PORT", "7860"))),
        auth=(UI_USER, password) if password else None,
        footer_links=["api"],
    )
