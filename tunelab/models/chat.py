"""One interface to talk to any model tunelab can load.

`load_chat_model(ref)` accepts a catalog name, hub id, Hugging Face folder, a LoRA adapter
folder, a tunelab run directory (its `model/`), a merged export, or a `.gguf` file (served
by llama.cpp). Every backend offers:

- `generate(conversations, **settings) -> list[str]`: batched, greedy unless temperature > 0;
- `stream(messages, **settings) -> Iterator[str]`: text pieces as they are produced.

`messages` are lists of `{"role": "system"|"user"|"assistant", "content": str}`.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from tunelab.errors import ModelNotFound


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0


class ChatModel(Protocol):
    name: str
    tokenizer: object

    def generate(self, conversations: list[list[dict]], settings: GenerationSettings | None = None, batch_size: int = 8) -> list[str]: ...

    def stream(self, messages: list[dict], settings: GenerationSettings | None = None) -> Iterator[str]: ...


def trained_model_dir(ref: str | Path) -> Path | None:
    """The `model/` folder of a tunelab run directory, or the folder itself if it is one."""
    path = Path(ref)
    if (path / "model" / "tunelab_model.json").is_file():
        return path / "model"
    if (path / "tunelab_model.json").is_file():
        return path
    return None


class HFChatModel:
    """A transformers model (optionally with a PEFT adapter) behind the ChatModel interface."""

    def __init__(self, model, tokenizer, name: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self._lock = threading.Lock()  # one generate at a time per model object

    def _generate_kwargs(self, s: GenerationSettings) -> dict:
        kw = dict(max_new_tokens=s.max_new_tokens, repetition_penalty=s.repetition_penalty, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id)
        if s.temperature and s.temperature > 0:
            kw.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def prompt_text(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, conversations, settings=None, batch_size=8):
        import torch

        s = settings or GenerationSettings()
        torch.manual_seed(s.seed)
        outputs: list[str] = []
        tok = self.tokenizer
        old_side = tok.padding_side
        tok.padding_side = "left"
        try:
            # Sort by length so each batch pads little; restore order at the end.
            order = sorted(range(len(conversations)), key=lambda i: len(self.prompt_text(conversations[i])))
            results: dict[int, str] = {}
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                texts = [self.prompt_text(conversations[i]) for i in idx]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
                with self._lock, torch.inference_mode():
                    out = self.model.generate(**enc, **self._generate_kwargs(s))
                for j, i in enumerate(idx):
                    results[i] = tok.decode(out[j, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
            outputs = [results[i] for i in range(len(conversations))]
        finally:
            tok.padding_side = old_side
        return outputs

    def stream(self, messages, settings=None):
        import torch
        from transformers import TextIteratorStreamer

        s = settings or GenerationSettings()
        enc = self.tokenizer(self.prompt_text(messages), return_tensors="pt", add_special_tokens=False).to(self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)

        from transformers import StoppingCriteria, StoppingCriteriaList

        # Closing this generator (a client went away) sets `stop`, which ends generate() at
        # the next token; an error in the generation thread is re-raised here, not left to hang.
        stop = threading.Event()
        failure: list[BaseException] = []

        class StopWhenClosed(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        def work():
            try:
                with self._lock, torch.inference_mode():
                    torch.manual_seed(s.seed)
                    self.model.generate(**enc, **self._generate_kwargs(s), streamer=streamer, stopping_criteria=StoppingCriteriaList([StopWhenClosed()]))
            except BaseException as exc:  # surfaced to the consumer below
                failure.append(exc)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            yield from streamer
        finally:
            stop.set()
            thread.join()
        if failure:
            raise failure[0]


def load_hf_model(ref: str | Path, *, dtype: str = "float32", trust_remote_code: bool = False):
    """(model, tokenizer, name) for a base model reference, adapter folder or run directory."""
    from tunelab.models.load import load_causal_lm, load_tokenizer
    from tunelab.models.resolve import resolve_model

    trained = trained_model_dir(ref)
    if trained is not None:
        info = json.loads((trained / "tunelab_model.json").read_text())
        tokenizer = load_tokenizer(trained)
        if (trained / "adapter_config.json").is_file():
            from peft import PeftModel

            base = resolve_model(info["base_model"])
            model = load_causal_lm(base.path, dtype=dtype, trust_remote_code=trust_remote_code)
            model = PeftModel.from_pretrained(model, str(trained))
        else:
            model = load_causal_lm(trained, dtype=dtype, trust_remote_code=trust_remote_code)
        name = Path(ref).name if Path(ref).name != "model" else Path(ref).parent.name
        return model, tokenizer, name
    resolved = resolve_model(str(ref))
    tokenizer = load_tokenizer(resolved.path, trust_remote_code=trust_remote_code)
    model = load_causal_lm(resolved.path, dtype=dtype, trust_remote_code=trust_remote_code)
    return model, tokenizer, resolved.name


def load_chat_model(ref: str | Path, *, dtype: str = "float32", n_threads: int | None = None, n_ctx: int = 4096, trust_remote_code: bool = False) -> ChatModel:
    """Any model tunelab can load, behind one interface (see module docstring)."""
    path = Path(ref)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFound(f"GGUF file {path} does not exist")
        from tunelab.export.llama_cpp import LlamaCppChatModel

        return LlamaCppChatModel(path, n_threads=n_threads, n_ctx=n_ctx)
    model, tokenizer, name = load_hf_model(ref, dtype=dtype, trust_remote_code=trust_remote_code)
    return HFChatModel(model, tokenizer, name)
