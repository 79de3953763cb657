"""The transformers backend: a Hugging Face model (optionally with a PEFT adapter) behind the
ChatModel interface of tunelab/models/interface.py. It imports torch and transformers; callers
that may get a GGUF instead go through tunelab.models.chat.load_chat_model, which imports this
module only for a model that is not a GGUF file.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from tunelab.models.interface import GenerationSettings, generate_one_by_one
from tunelab.models.interpolate import interpolate_toward_base
from tunelab.models.likelihood import continuation_logprobs
from tunelab.models.load import load_causal_lm, load_tokenizer
from tunelab.models.resolve import resolve_model
from tunelab.runs import is_adapter, model_interpolation, read_model_info, require_base_model, trained_model_dir


class HFChatModel:
    """A transformers model (optionally with a PEFT adapter) behind the ChatModel interface."""

    backend = "transformers"

    def __init__(self, model, tokenizer, name: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self._lock = threading.Lock()  # one generate at a time per model object

    def _generate_kwargs(self, s: GenerationSettings) -> dict:
        kw = dict(
            max_new_tokens=s.max_new_tokens,
            repetition_penalty=s.repetition_penalty,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        if s.temperature and s.temperature > 0:
            kw.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def prompt_text(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prompt_tokens(self, messages: list[dict]) -> list[int]:
        # the template writes the special tokens itself, so the tokenizer adds none
        return self.tokenizer(self.prompt_text(messages), add_special_tokens=False)["input_ids"]

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def loglikelihood(self, pairs, batch_size: int = 8, on_batch=None, bf16: bool = False) -> list[tuple[float, int]]:
        with self._lock:
            return continuation_logprobs(self.model, self.tokenizer, pairs, batch_size, on_batch, bf16=bf16)

    def generate(self, conversations, settings=None, batch_size=8):
        s = settings or GenerationSettings()
        torch.manual_seed(s.seed)
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
                    results[i] = tok.decode(out[j, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
            return [results[i] for i in range(len(conversations))]
        finally:
            tok.padding_side = old_side

    def generate_many(self, requests, finished):
        return generate_one_by_one(self, requests, finished)

    def stream(self, messages, settings=None):
        return self.stream_ids(self.prompt_tokens(messages), settings)

    def stream_ids(self, prompt_ids: list[int], settings=None):
        s = settings or GenerationSettings()
        ids = torch.tensor([prompt_ids], device=self.model.device)
        enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)

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
                    self.model.generate(
                        **enc, **self._generate_kwargs(s), streamer=streamer, stopping_criteria=StoppingCriteriaList([StopWhenClosed()])
                    )
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
    trained = trained_model_dir(ref)
    if trained is not None:
        tokenizer = load_tokenizer(trained)
        info = read_model_info(trained)
        alpha = model_interpolation(trained, info)
        base = resolve_model(require_base_model(trained, info)) if is_adapter(trained) or alpha != 1.0 else None
        if is_adapter(trained):
            # peft imports bitsandbytes and torch._inductor: several seconds, paid only when an adapter loads
            from peft import PeftModel

            model = load_causal_lm(base.path, dtype=dtype, trust_remote_code=trust_remote_code)
            model = PeftModel.from_pretrained(model, str(trained))
        else:
            model = load_causal_lm(trained, dtype=dtype, trust_remote_code=trust_remote_code)
        model = interpolate_toward_base(model, alpha, base.path if base else None)
        name = Path(ref).name if Path(ref).name != "model" else Path(ref).parent.name
        return model, tokenizer, name
    resolved = resolve_model(str(ref))
    tokenizer = load_tokenizer(resolved.path, trust_remote_code=trust_remote_code)
    model = load_causal_lm(resolved.path, dtype=dtype, trust_remote_code=trust_remote_code)
    return model, tokenizer, resolved.name
