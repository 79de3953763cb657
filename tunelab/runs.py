"""The run directory: every stage reads and writes here. Layout in docs/run-directory.md."""
from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from tunelab.io import atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # top level
    @property
    def recipe(self) -> Path: return self.root / "recipe.yaml"
    @property
    def environment(self) -> Path: return self.root / "environment.json"
    @property
    def state(self) -> Path: return self.root / "state.json"
    @property
    def report_md(self) -> Path: return self.root / "report.md"
    @property
    def report_html(self) -> Path: return self.root / "report.html"
    # data/
    @property
    def data(self) -> Path: return self.root / "data"
    def split(self, name: str) -> Path: return self.data / f"{name}.jsonl"
    @property
    def data_card(self) -> Path: return self.data / "card.json"
    # train/
    @property
    def train(self) -> Path: return self.root / "train"
    @property
    def checkpoints(self) -> Path: return self.train / "checkpoints"
    @property
    def metrics(self) -> Path: return self.train / "metrics.jsonl"
    @property
    def train_summary(self) -> Path: return self.train / "summary.json"
    @property
    def loss_plot(self) -> Path: return self.train / "loss.png"
    # model/ (final adapter or full weights, with tunelab_model.json)
    @property
    def model(self) -> Path: return self.root / "model"
    # eval/
    @property
    def eval(self) -> Path: return self.root / "eval"
    # export/
    @property
    def export(self) -> Path: return self.root / "export"

    def stage_done(self, stage: str) -> bool:
        return self.read_state().get(stage, {}).get("done", False)

    def read_state(self) -> dict:
        return json.loads(self.state.read_text()) if self.state.is_file() else {}

    def mark_done(self, stage: str, **info) -> None:
        state = self.read_state()
        state[stage] = {"done": True, "at": now(), **info}
        atomic_write_json(self.state, state)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    names = ["tunelab", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes", "sacrebleu", "rouge-score", "bert-score", "gguf", "llama_cpp_python", "gradio"]
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine_info() -> dict:
    import os

    info = {"python": sys.version.split()[0], "platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0))}
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def write_environment(run: RunDir) -> None:
    atomic_write_json(run.environment, {"written": now(), "argv": sys.argv, "packages": package_versions(), "machine": machine_info()})


def write_recipe(run: RunDir, recipe) -> None:
    from tunelab.config import dump_recipe

    atomic_write_text(run.recipe, dump_recipe(recipe))
