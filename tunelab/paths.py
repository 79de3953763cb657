"""Where tunelab keeps its cache and finds the shared example data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of tunelab's cache (converted models, wheels). `TUNELAB_CACHE` overrides it."""
    root = os.environ.get("TUNELAB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tunelab"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_cache_dir() -> Path:
    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_data_dir() -> Path | None:
    """The folder of public example datasets: `TUNELAB_DATA_DIR`, else `../shared/data` beside the checkout."""
    env = os.environ.get("TUNELAB_DATA_DIR")
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parent.parent
    candidates += [repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    return None


def hub_offline() -> bool:
    """True when hub access is disabled (HF_HUB_OFFLINE=1); tunelab then never waits on the network."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}
