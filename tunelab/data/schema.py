"""The one example schema every stage reads, and the checks and hashes that go with it.

An example is `{"id": str, "messages": [{"role": ..., "content": str}, ...], "source": "<file>:<record>"}`
with roles `system` (first turn only), `user` and `assistant`; the last turn is the
assistant's answer. Record numbers count from 0, like the index into the file's list.

A preference pair is an example with one more field, `"rejected": {"role": "assistant", "content": str}`:
the worse answer to the same prompt. Its `messages` end with the chosen (better) answer, so
every reader of `messages` sees the pair as the chosen conversation: supervised fine-tuning
trains on the chosen answers, and evaluation takes the chosen answer as the reference.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata

from tunelab.errors import DataError

ROLES = ("system", "user", "assistant")


class InvalidRecord(DataError):
    """A DataError about one record, with a short `reason` used to count drops."""

    def __init__(self, file: str, record: int | str | None, field: str | None, problem: str, reason: str):
        super().__init__(file, record, field, problem)
        self.reason = reason


def where(example: dict) -> tuple[str, int | str]:
    """(file, record) of an example, parsed from its `source` ("identity.json:12")."""
    file, _, record = str(example.get("source", "?")).rpartition(":")
    return (file or str(example.get("source", "?")), int(record) if record.isdigit() else record)


def validate_example(example: dict) -> None:
    """Raise InvalidRecord when the example breaks the schema; names the failing message field."""
    file, record = where(example)
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRecord(file, record, "messages", "no messages", "bad_record")
    for i, m in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise InvalidRecord(file, record, field, "a message needs a 'role' and a text 'content'", "bad_record")
        if m.get("role") not in ROLES:
            raise InvalidRecord(
                file, record, f"{field}.role", f"unknown role {m.get('role')!r} (expected one of {', '.join(ROLES)})", "unknown_role"
            )
        if m["role"] == "system" and i != 0:
            raise InvalidRecord(file, record, f"{field}.role", "a system message may only come first", "system_not_first")
        if not m["content"].strip():
            problem = "empty answer" if m["role"] == "assistant" else f"empty {m['role']} turn"
            raise InvalidRecord(file, record, f"{field}.content", problem, "empty_turn")
    if not any(m["role"] == "user" for m in messages):
        raise InvalidRecord(file, record, "messages", "no user turn", "no_user_turn")
    if messages[-1]["role"] != "assistant":
        raise InvalidRecord(
            file,
            record,
            f"messages[{len(messages) - 1}].role",
            f"the last turn is '{messages[-1]['role']}', not the assistant's answer",
            "last_turn_not_assistant",
        )
    if "rejected" in example:
        validate_rejected(example, file, record)


def validate_rejected(example: dict, file: str, record: int | str) -> None:
    """A preference pair's rejected answer: an assistant message with text that differs from the chosen answer."""
    rejected = example["rejected"]
    if not isinstance(rejected, dict) or not isinstance(rejected.get("content"), str):
        raise InvalidRecord(file, record, "rejected", "the rejected answer needs a 'role' and a text 'content'", "bad_record")
    if rejected.get("role") != "assistant":
        raise InvalidRecord(
            file, record, "rejected.role", f"the rejected answer's role is {rejected.get('role')!r}, not 'assistant'", "wrong_role"
        )
    if not rejected["content"].strip():
        raise InvalidRecord(file, record, "rejected.content", "empty rejected answer", "empty_turn")
    if normalise_text(rejected["content"]) == normalise_text(example["messages"][-1]["content"]):
        raise InvalidRecord(
            file, record, "rejected", "the chosen and the rejected answer are the same text: the pair prefers nothing", "identical_answers"
        )


def is_pair(example: dict) -> bool:
    return "rejected" in example


def conversations(example: dict) -> list[list[dict]]:
    """What training renders of an example: its messages, and for a pair also the prompt with the rejected answer."""
    if not is_pair(example):
        return [example["messages"]]
    return [example["messages"], [*example["messages"][:-1], example["rejected"]]]


def normalise_text(text: str) -> str:
    """The form used for hashing and duplicate detection: NFC, case-folded, whitespace collapsed."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip().casefold()


def content_hash(example: dict) -> str:
    """sha256 of the normalised messages, and of a pair's rejected answer (ids and sources do not count).

    Two pairs with the same prompt and chosen answer but different rejected answers are two pairs.
    """
    turns = [[m["role"], normalise_text(m["content"])] for m in example["messages"]]
    if is_pair(example):
        turns.append(["rejected", normalise_text(example["rejected"]["content"])])
    return hashlib.sha256(json.dumps(turns, ensure_ascii=False).encode("utf-8")).hexdigest()


def split_hash(examples: list[dict]) -> str:
    """sha256 over the content hashes of a split, in order."""
    return hashlib.sha256("\n".join(content_hash(e) for e in examples).encode()).hexdigest()


def last_user_index(example: dict) -> int | None:
    for i in range(len(example["messages"]) - 1, -1, -1):
        if example["messages"][i]["role"] == "user":
            return i
    return None
