"""One interface to talk to any model tunelab can load.

`load_chat_model(ref)` accepts a catalog name, hub id, Hugging Face folder, a LoRA adapter
folder, a tunelab run directory (its `model/`), a merged export, a `.gguf` file, or a folder
holding a LoRA adapter GGUF and its base model's GGUF (`export/gguf-lora/`; both served by
llama.cpp, tunelab/models/llama_cpp.py). Every backend implements the ChatModel protocol
of tunelab/models/interface.py: generate, stream, prompt text and tokens, token counts and,
where the backend has logits, log-likelihoods.

This module imports neither torch nor transformers: serving GGUF files (`tunelab serve x.gguf`,
a Space) runs without them. The transformers backend (tunelab/models/hf_chat.py) is imported
when a model that is not a GGUF file is loaded.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import ModelNotFound
from tunelab.models.interface import ChatModel, GenerationSettings
from tunelab.models.llama_cpp import LlamaCppChatModel, lora_pair

__all__ = ["ChatModel", "GenerationSettings", "load_chat_model"]


def load_chat_model(
    ref: str | Path, *, dtype: str = "float32", n_threads: int | None = None, n_ctx: int = 4096, trust_remote_code: bool = False
) -> ChatModel:
    """Any model tunelab can load, behind one interface (see module docstring)."""
    path = Path(ref)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFound(f"GGUF file {path} does not exist")
        return LlamaCppChatModel(path, n_threads=n_threads, n_ctx=n_ctx)
    pair = lora_pair(path) if path.is_dir() else None
    if pair is not None:
        base, adapter = pair
        return LlamaCppChatModel(base, n_threads=n_threads, n_ctx=n_ctx, lora=adapter)
    # here: torch and transformers (seconds to import, 1.9 GB to install) only for a model that is not a GGUF file
    from tunelab.models.hf_chat import HFChatModel, load_hf_model

    model, tokenizer, name = load_hf_model(ref, dtype=dtype, trust_remote_code=trust_remote_code)
    return HFChatModel(model, tokenizer, name)
