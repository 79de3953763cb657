"""Models as the evaluation stage loads them: which models a command compares, and each model
loaded for scoring with its LoRA adapter folded in, then its memory returned."""

from __future__ import annotations

import gc
from pathlib import Path

import torch

from tunelab.models.chat import load_chat_model
from tunelab.models.hf_chat import HFChatModel
from tunelab.progress import console
from tunelab.runs import RunDir, read_model_info, require_base_model, trained_model_dir


def unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def with_base_model(models: list[str], names: list[str] | None, compare_base: bool) -> tuple[list[str], list[str] | None]:
    """A lone run directory is compared with its base model, which goes first (the baseline)."""
    models = list(models)
    if not (compare_base and len(models) == 1 and trained_model_dir(models[0]) is not None):
        return models, names
    model_dir = trained_model_dir(models[0])
    base_model = require_base_model(model_dir, read_model_info(model_dir))
    console.print(f"comparing against the base model {base_model} (--no-base to skip)")
    return [base_model, *models], (["base", *names] if names else None)


def run_dirs_among(models: list[str]) -> list[Path]:
    """The tunelab run directories among the models, in order."""
    return [Path(m) for m in models if RunDir(m).has_model()]


def merge_adapter(chat) -> bool:
    """Fold a LoRA adapter into its (unquantized) base weights: same function, no adapter overhead
    per token (generation ran about 3x faster here). Returns whether it merged."""
    model = getattr(chat, "model", None)
    if not isinstance(chat, HFChatModel) or not hasattr(model, "merge_and_unload"):
        return False
    if getattr(model.config, "quantization_config", None):  # 4-bit bases: merging would re-round the weights
        return False
    chat.model = model.merge_and_unload().eval()
    return True


def load_for_scoring(ref: str):
    """(chat model, backend description): any model tunelab loads, a LoRA adapter merged in."""
    chat = load_chat_model(ref)
    merged = merge_adapter(chat)
    return chat, type(chat).__name__ + (" (LoRA adapter merged)" if merged else "")


def free_memory() -> None:
    """Return a deleted model's memory before the next one loads."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
