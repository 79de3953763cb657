"""What every chat backend offers (the ChatModel protocol) and the settings of one generation.

Two backends implement it: `HFChatModel` (transformers, optionally with a PEFT adapter;
tunelab/models/hf_chat.py) and `LlamaCppChatModel` (a GGUF file; tunelab/models/llama_cpp.py).
`load_chat_model(ref)` in models/chat.py picks one. Callers use only what is declared here,
so no caller needs to know which backend it holds.

`messages` are lists of `{"role": "system"|"user"|"assistant", "content": str}`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0


class ChatModel(Protocol):
    name: str
    backend: str  # "transformers" | "llama.cpp", for reports and messages only: never branch on it
    # The transformers-tokenizer calls scoring makes: apply_chat_template(messages, tokenize=False,
    # add_generation_prompt=...) and tokenizer(text, add_special_tokens=False)["input_ids"].
    tokenizer: object

    def generate(self, conversations: list[list[dict]], settings: GenerationSettings | None = None, batch_size: int = 8) -> list[str]:
        """One answer per conversation; greedy unless settings.temperature > 0."""
        ...

    def stream(self, messages: list[dict], settings: GenerationSettings | None = None) -> Iterator[str]:
        """Text pieces of one answer as they are produced; closing the iterator stops generation."""
        ...

    def stream_ids(self, prompt_ids: list[int], settings: GenerationSettings | None = None) -> Iterator[str]:
        """stream() after prompt ids made by the caller: prompt_tokens(messages), or encode(text) to
        continue plain text (a code completion for a base model)."""
        ...

    def generate_many(
        self, requests: Iterable[tuple[Hashable, list[int], GenerationSettings]], finished: Callable[[Hashable, str], bool]
    ) -> Iterator[tuple[Hashable, str]]:
        """(key, answer) for each request (key, prompt ids, settings), in the order they end: at
        end-of-generation, at max_new_tokens, or as soon as `finished(key, answer so far)`."""
        ...

    def prompt_text(self, messages: list[dict]) -> str:
        """The prompt as the model sees it: its own chat template applied, generation prompt added."""
        ...

    def prompt_tokens(self, messages: list[dict]) -> list[int]:
        """Token ids of prompt_text(messages), as the model is fed them."""
        ...

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` as the model is fed it: special-token text (a chat template's markers) parsed, no BOS added."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` with the model's own tokenizer (no special tokens added)."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text as the tokenizer encodes it by default: a BOS where the tokenizer
        adds one, special-token text not parsed (what lm-evaluation-harness feeds a model)."""
        ...

    def loglikelihood(
        self,
        pairs: list[tuple[list[int], list[int]]],
        batch_size: int = 8,
        on_batch: Callable[[int], None] | None = None,
        bf16: bool = False,
    ) -> list[tuple[float, int]]:
        """For each (prompt ids, continuation ids): (sum of log-probabilities of the continuation, its token count).
        `bf16`: bfloat16 autocast where the backend has it (transformers); others ignore it.
        Raises NotImplementedError where the backend cannot score (llama.cpp, for now)."""
        ...


def generate_one_by_one(
    model: ChatModel, requests: Iterable[tuple[Hashable, list[int], GenerationSettings]], finished: Callable[[Hashable, str], bool]
) -> Iterator[tuple[Hashable, str]]:
    """`generate_many` for a backend that streams one answer at a time."""
    for key, prompt_ids, settings in requests:
        text = ""
        pieces = model.stream_ids(prompt_ids, settings)
        try:
            for piece in pieces:
                text += piece
                if finished(key, text):
                    break
        finally:
            pieces.close()
        yield key, text
