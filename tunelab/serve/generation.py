"""What the chat UI and the HTTP API share: limits, settings, message clean-up, token counts."""

from __future__ import annotations

import random
import re
from collections.abc import Generator
from dataclasses import dataclass

from tunelab.errors import TunelabError
from tunelab.models.interface import ChatModel, GenerationSettings

MAX_STOP_SEQUENCES = 4  # as OpenAI; the chat UI takes as many as the API
CHARS_PER_TOKEN = 8  # a prompt may hold about this many characters per token before it is refused untokenized


@dataclass
class ServeLimits:
    """The serving limits and their defaults, for `tunelab serve`, `tunelab api` and app.py alike."""

    max_prompt_chars: int | None = None  # checked before any model work; default: CHARS_PER_TOKEN × max_prompt_tokens
    max_prompt_tokens: int = 2_048  # checked with the model's tokenizer
    max_tokens: int = 512  # a larger max_tokens request is capped to this
    max_concurrent: int = 2  # generations running at once (each model also runs one at a time)
    max_queue: int = 16  # requests waiting beyond that; more get 429 / "queue full"

    def __post_init__(self):
        if self.max_prompt_chars is None:
            self.max_prompt_chars = CHARS_PER_TOKEN * self.max_prompt_tokens


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


def check_tokens(model: ChatModel, messages: list[dict], limits: ServeLimits) -> int:
    """Tokens of the prompt as the model sees it (its own chat template applied), refused above the limit."""
    n = len(model.prompt_tokens(messages))
    if n > limits.max_prompt_tokens:
        raise PromptTooLong(f"the prompt has {n} tokens; this server accepts at most {limits.max_prompt_tokens}")
    return n


def make_settings(
    limits: ServeLimits,
    *,
    max_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    repetition_penalty: float | None,
    seed: int | None,
) -> GenerationSettings:
    """Settings within the server's cap. The API refuses out-of-range values before this (400);
    the clamps here keep the UI's sliders and any other caller inside what the backends accept."""
    return GenerationSettings(
        max_new_tokens=max(1, min(int(max_tokens or 256), limits.max_tokens)),
        temperature=0.7 if temperature is None else max(0.0, float(temperature)),
        top_p=1.0 if top_p is None else min(1.0, max(0.01, float(top_p))),
        repetition_penalty=1.0 if repetition_penalty is None else max(0.5, float(repetition_penalty)),
        seed=random.randrange(2**31) if seed is None else int(seed) % 2**32,  # llama.cpp takes a 32-bit seed
    )


class StopText:
    """Cuts streamed text before the first stop sequence, as OpenAI's `stop` does.

    `feed(piece)` returns the text that is now safe to send: a tail that could be the start of a
    stop sequence is held back until the next piece decides it. After a stop sequence `hit` is
    True and the caller ends generation; `flush()` returns what was held back at the end."""

    def __init__(self, stops: list[str] | None):
        self.stops = [s for s in stops or [] if s]
        self.held = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        if self.hit:
            return ""
        text = self.held + piece
        first = self._first_stop(text)
        # a stop sequence that starts before the first complete one and runs past the end of the text
        # may still complete (stops '<' and '><<' on the pieces '><', '<'): wait for the next piece
        pending = self._pending_start(text, len(text) if first is None else first)
        if first is not None and pending is None:
            self.hit, self.held = True, ""
            return text[:first]
        cut = len(text) if pending is None else pending
        self.held = text[cut:]
        return text[:cut]

    def flush(self) -> str:
        """At the end of generation: what was held back, up to its first complete stop sequence."""
        text, self.held = ("" if self.hit else self.held), ""
        first = self._first_stop(text)
        if first is None:
            return text
        # a stop held back behind a longer one that never completed ('|' behind '>|<' on '>|') is a hit too
        self.hit = True
        return text[:first]

    def _first_stop(self, text: str) -> int | None:
        return min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=None)

    def _pending_start(self, text: str, before: int) -> int | None:
        """The earliest position before `before` from which the rest of `text` is a proper prefix of a stop sequence."""
        longest = max((len(s) for s in self.stops), default=1)
        for start in range(max(0, len(text) - longest + 1), before):
            tail = text[start:]
            if any(len(s) > len(tail) and s.startswith(tail) for s in self.stops):
                return start
        return None


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def stop_sequences_from_lines(text: str | None) -> list[str]:
    """The chat UI's stop-sequence box: one sequence per line, kept exactly as typed (spaces
    included); lines of nothing or only spaces are skipped. A line break cannot be typed inside
    a line, so `\\n` stands for one (`\\t` for a tab, `\\\\` for a backslash). At most
    MAX_STOP_SEQUENCES, as the API."""
    stops = [re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], line) for line in (text or "").splitlines() if line.strip()]
    if len(stops) > MAX_STOP_SEQUENCES:
        raise BadRequest(f"at most {MAX_STOP_SEQUENCES} stop sequences (one per line), not {len(stops)}")
    return stops


def cut_at_stops(pieces: Generator[str, None, None], stops: list[str] | None) -> Generator[str, None, None]:
    """The pieces of a streamed answer with everything from the first stop sequence on removed,
    also when a stop sequence arrives split over pieces (StopText holds a possible start back).
    `pieces` is closed as soon as a stop sequence is seen, so generation ends there too."""
    stop = StopText(stops)
    try:
        for piece in pieces:
            if text := stop.feed(piece):
                yield text
            if stop.hit:
                return
    finally:
        pieces.close()
    if tail := stop.flush():
        yield tail
