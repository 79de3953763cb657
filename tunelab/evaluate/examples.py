"""A held-out example split into what the model is asked (every message before the reference
answer) and the reference itself: what `tunelab eval` scores and the serve UI's Evaluate tab asks.
Plain data, no model: the Evaluate tab imports it without the evaluation stage's dependencies.
"""

from __future__ import annotations

from tunelab.errors import DataError
from tunelab.evaluate import tasks


def split_example(example: dict, index: int, source: str, task: str = "none") -> dict:
    """{"id", "prompt": messages before the last assistant turn, "reference": its content, ...}.

    Multiple-choice examples ("choices" + "answer") may have no assistant turn: the correct
    choice is then the reference.
    """
    ex_id = example.get("id", index) if isinstance(example, dict) else index
    if not isinstance(example, dict):
        raise DataError(source, index, None, "an example must be an object with 'messages'")
    messages = example.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) and "role" in m and isinstance(m.get("content"), str) for m in messages)
    ):
        raise DataError(source, ex_id, "messages", "must be a non-empty list of {role, content} turns")
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    row = {"id": str(ex_id), "source": example.get("source")}
    if task == "multiple_choice":
        choices = example.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise DataError(source, ex_id, "choices", "multiple_choice needs a list of at least two non-empty answer strings")
        if "answer" not in example:
            raise DataError(source, ex_id, "answer", "multiple_choice needs the correct answer (index, letter or choice text)")
        try:
            row["answer_index"] = tasks.answer_index(example)
        except ValueError as err:
            raise DataError(source, ex_id, "answer", str(err)) from None
        row["choices"] = choices
        if last is None:
            row["prompt"], row["reference"] = messages, choices[row["answer_index"]]
            return row
    if last is None:
        raise DataError(source, ex_id, "messages", "has no assistant turn: the reference answer is missing")
    reference = messages[last]["content"]
    if not reference.strip():
        raise DataError(source, ex_id, f"messages[{last}].content", "the reference answer is empty")
    prompt = messages[:last]
    if not any(m["role"] == "user" for m in prompt):
        raise DataError(source, ex_id, "messages", "has no user turn before the reference answer")
    row["prompt"], row["reference"] = prompt, reference
    return row
