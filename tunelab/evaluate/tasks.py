"""Task scoring where answers are checkable: exact match, contains, GSM8K final number.

Multiple-choice accuracy needs the model's log-likelihoods and lives in likelihood.py; the
choice/answer fields are read here.
"""

from __future__ import annotations

import re
import string

GENERATION_TASKS = ("exact_match", "contains", "keywords", "gsm8k")

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def normalize(text: str) -> str:
    """Lower-case, drop punctuation at the ends and collapse whitespace."""
    text = " ".join(text.lower().split())
    return text.strip(string.punctuation + " ")


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def contains(prediction: str, reference: str) -> float:
    ref = normalize(reference)
    return float(bool(ref) and ref in normalize(prediction))


def final_number(text: str) -> float | None:
    """The answer of a GSM8K-style solution: the number after the last '####', else the last number."""
    if "####" in text:
        tail = text.rsplit("####", 1)[1]
        found = _NUMBER.findall(tail)
        if found:
            return _to_float(found[0])
    found = _NUMBER.findall(text)
    return _to_float(found[-1]) if found else None


def _to_float(token: str) -> float | None:
    try:
        return float(token.replace(",", "").replace("$", ""))
    except ValueError:
        return None


def gsm8k(prediction: str, reference: str) -> float:
    want, got = final_number(reference), final_number(prediction)
    return float(want is not None and got is not None and abs(want - got) < 1e-6 * max(1.0, abs(want)))


def keywords_kept(prediction: str, reference: str, keywords: list[str]) -> float:
    """1 when the answer contains every keyword (case-insensitive) that its reference contains.

    For facts a model must learn, such as a new name: `keywords: [Tuna]` scores whether the
    answer says "Tuna" wherever the reference does (a reference without any keyword scores 1).
    """
    pred, ref = prediction.lower(), reference.lower()
    return float(all(k.lower() in pred for k in keywords if k.lower() in ref))


SCORERS = {"exact_match": exact_match, "contains": contains, "gsm8k": gsm8k}


def score_task(task: str, predictions: list[str], references: list[str], keywords: list[str] | None = None) -> list[float]:
    if task == "keywords":
        return [keywords_kept(p, r, keywords or []) for p, r in zip(predictions, references)]
    fn = SCORERS[task]
    return [fn(p, r) for p, r in zip(predictions, references)]


def answer_index(example: dict) -> int:
    """The correct choice of a multiple-choice example: an index, a letter (A, B, ...) or the choice text."""
    choices, answer = example["choices"], example["answer"]
    if isinstance(answer, bool):
        raise ValueError("answer must be an index, a letter or one of the choices")
    if isinstance(answer, int):
        if 0 <= answer < len(choices):
            return answer
        raise ValueError(f"answer index {answer} is outside the {len(choices)} choices")
    answer = str(answer).strip()
    if answer in choices:
        return choices.index(answer)
    if len(answer) == 1 and answer.upper() in string.ascii_uppercase[: len(choices)]:
        return string.ascii_uppercase.index(answer.upper())
    if answer.isdigit() and int(answer) < len(choices):
        return int(answer)
    raise ValueError(f"answer {answer!r} is neither an index, a letter nor one of the choices")
