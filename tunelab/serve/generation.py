"""What the chat UI and the HTTP API share: limits, settings, message clean-up, token counts."""
from __future__ import annotations

import random
from dataclasses import dataclass

from tunelab.errors import TunelabError
from tunelab.models.chat import GenerationSettings


@dataclass
class ServeLimits:
    max_prompt_chars: int = 16_000  # checked before any model work
    max_prompt_tokens: int = 2_048  # checked with the model's tokenizer
    max_tokens: int = 512  # a larger max_tokens request is capped to this
    max_concurrent: int = 2  # generations running at once (each model also runs one at a time)
    max_queue: int = 16  # requests waiting beyond that; more get 429 / "queue full"


class BadRequest(TunelabError):
    """A request the server refuses (HTTP 400 with an OpenAI-style error body)."""

    def __init__(self, message: str, code: str = "invalid_request"):
        super().__init__(message)
        self.code = code


class PromptTooLong(BadRequest):
    def __init__(self, message: str):
        super().__init__(message, code="context_length_exceeded")


def text_of(content) -> str:
    """Message content as plain text: a string, or OpenAI/Gradio content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    if isinstance(content, (list, tuple)):
        return "".join(text_of(part) for part in content if not isinstance(part, dict) or part.get("type", "text") == "text")
    return str(content)


def clean_messages(messages: list[dict], system: str | None = None) -> list[dict]:
    """Plain {role, content} messages with an optional system prompt first; unknown roles refused."""
    out = [{"role": "system", "content": system}] if system and system.strip() else []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in {"system", "user", "assistant"}:
            raise BadRequest(f"messages[{i}].role must be system, user or assistant, not {role!r}", code="invalid_role")
        content = text_of(m.get("content"))
        if role == "assistant" and not content:
            continue
        out.append({"role": role, "content": content})
    if not out or out[-1]["role"] != "user":
        raise BadRequest("the last message must come from the user", code="invalid_messages")
    return out


def check_chars(messages: list[dict], limits: ServeLimits) -> None:
    chars = sum(len(m["content"]) for m in messages)
    if chars > limits.max_prompt_chars:
        raise PromptTooLong(f"the prompt has {chars} characters; this server accepts at most {limits.max_prompt_chars}")


def prompt_tokens(model, messages: list[dict]) -> int:
    """Tokens of the prompt as the model sees it (its own chat template applied)."""
    if hasattr(model, "prompt_tokens"):  # the llama.cpp backend tokenizes its own prompt
        return len(model.prompt_tokens(messages))
    return count_tokens(model, model.prompt_text(messages))


def count_tokens(model, text: str) -> int:
    tok = model.tokenizer
    if hasattr(tok, "apply_chat_template"):  # a transformers tokenizer
        return len(tok(text, add_special_tokens=False)["input_ids"])
    return len(tok.tokenize(text.encode("utf-8"), add_bos=False, special=True))  # llama_cpp's LlamaTokenizer


def check_tokens(model, messages: list[dict], limits: ServeLimits) -> int:
    n = prompt_tokens(model, messages)
    if n > limits.max_prompt_tokens:
        raise PromptTooLong(f"the prompt has {n} tokens; this server accepts at most {limits.max_prompt_tokens}")
    return n


def make_settings(limits: ServeLimits, *, max_tokens: int | None, temperature: float | None, top_p: float | None, repetition_penalty: float | None, seed: int | None) -> GenerationSettings:
    return GenerationSettings(
        max_new_tokens=max(1, min(int(max_tokens or 256), limits.max_tokens)),
        temperature=0.7 if temperature is None else max(0.0, float(temperature)),
        top_p=1.0 if top_p is None else min(1.0, max(0.01, float(top_p))),
        repetition_penalty=1.0 if repetition_penalty is None else max(0.5, float(repetition_penalty)),
        seed=random.randrange(2**31) if seed is None else int(seed),
    )
