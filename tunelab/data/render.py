"""Render conversations with the model's own chat template and mask everything but the answers.

`render_example` returns `input_ids` and `labels` where every token that is not part of an
assistant turn is -100, so the loss is computed on the answers only. Assistant spans are
found on the rendered text: for each assistant turn, the template is rendered up to the
turn with the generation prompt (where the answer begins) and including the turn (where it
ends, with its end-of-turn token); the tokens whose characters fall in between are labels.
This works for any template whose renderings of a conversation's prefixes are prefixes of
the whole rendering, which holds for ChatML (SmolLM2, Qwen), Gemma, Llama 3 and tunelab's
default template; a template that breaks it gets a clear error.
"""

from __future__ import annotations

from tunelab.errors import TunelabError

IGNORE_INDEX = -100


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def conversation_text(tokenizer, messages: list[dict]) -> str:
    """A whole conversation as the model sees it in training: its chat template, answers included."""
    return _render(tokenizer, messages, add_generation_prompt=False)


def assistant_char_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The full rendered text and the (start, end) character spans of every assistant answer."""
    text = _render(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        through = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not text.startswith(through) or not through.startswith(before):
            raise TunelabError(
                "the chat template does not render conversation prefixes as prefixes of the whole "
                "conversation, so answer tokens cannot be located; use a template that does (see docs/data.md)"
            )
        spans.append((len(before), len(through)))
    return text, spans


def render_example(tokenizer, messages: list[dict], max_seq_length: int | None = None) -> dict:
    """Token ids and labels (answers only) for one conversation; truncated to `max_seq_length`."""
    text, spans = assistant_char_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(input_ids)
    span_index = 0
    for t, (start, end) in enumerate(enc["offset_mapping"]):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index < len(spans) and start >= spans[span_index][0] and end > start:
            labels[t] = input_ids[t]
    if max_seq_length is not None and len(input_ids) > max_seq_length:
        input_ids, labels = input_ids[:max_seq_length], labels[:max_seq_length]
    return {"input_ids": input_ids, "labels": labels}
