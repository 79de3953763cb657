"""Text cleaning and the quality filter.

Cleaning keeps code intact: it never collapses spaces inside a line (indentation matters),
it only normalises unicode (NFC), line endings, trailing spaces, runs of blank lines and
removes control and zero-width characters.
"""

from __future__ import annotations

import re
import unicodedata

from tunelab.data.schema import normalise_text

ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u2060\ufeff"))  # keeps \u200d (emoji joiner)
REFUSAL_PATTERNS = [
    r"\bas an ai(?: language)? model\b",
    r"\bas a(?:n)? (?:large )?language model\b",
    r"\bi(?: am|'m) (?:just )?an ai\b",
    r"^\s*i(?: am|'m) sorry,? (?:but )?i (?:can(?:no|')t|am unable to|won't)\b",
    r"^\s*i (?:can(?:no|')t|am unable to|won't) (?:help|assist|provide|fulfill|comply)\b",
    r"\bi do not have (?:personal )?(?:opinions|feelings|the ability)\b",
]
REFUSAL = re.compile("|".join(REFUSAL_PATTERNS), re.IGNORECASE | re.MULTILINE)
QUALITY_MIN_ANSWER_CHARS = 3


def clean_text(text: str) -> str:
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n").translate(ZERO_WIDTH)
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) != "Cc")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def clean_example(example: dict) -> dict:
    cleaned = {**example, "messages": [{"role": m["role"], "content": clean_text(m["content"])} for m in example["messages"]]}
    if "rejected" in example:  # a preference pair's other answer
        cleaned["rejected"] = {"role": example["rejected"]["role"], "content": clean_text(example["rejected"]["content"])}
    return cleaned


def quality_problem(example: dict, min_answer_chars: int, quality_filter: bool) -> str | None:
    """A drop reason for a low-quality answer, or None. `min_answer_chars` applies always."""
    answer = example["messages"][-1]["content"].strip()
    if len(answer) < min_answer_chars:
        return "short_answer"
    if not quality_filter:
        return None
    if len(answer) < QUALITY_MIN_ANSWER_CHARS:
        return "short_answer"
    if REFUSAL.search(answer):
        return "refusal"
    prompt = next((m["content"] for m in reversed(example["messages"]) if m["role"] == "user"), "")
    if normalise_text(answer) == normalise_text(prompt):
        return "answer_repeats_prompt"
    return None
