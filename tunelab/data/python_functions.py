"""Python as training data: documented functions in HumanEval's shape, and answers that are Python.

`format: python_functions` reads Python source (a folder, a .py file, or `stdlib`: the standard
library of the Python running tunelab) and makes one example per documented top-level function,
in the shape a code benchmark asks (tunelab/data/code_problems.py): the user asks to complete the
function, and the answer is a code block holding the function's imports, signature and docstring
(what a HumanEval prompt holds) followed by its body. These are the lab's "annotated Python
scripts": real, reviewed code whose docstring says what it does.

A function is kept only when a reader of the prompt has everything the body uses: every name it
reads is a parameter, a local, a builtin or a module the prompt imports (no module globals, no
helpers defined elsewhere in its file). Decorated functions, stubs, and bodies too long for a short
training example are left out. Functions sharing a run of 13 words with a HumanEval problem or its
solution are dropped (the benchmark's own leakage test), so nothing of the test reaches training.

`format: passing_answers` reads a code benchmark's folder (`tunelab benchmark … --half dev`) and
makes one example per distinct answer that passed its problem's tests, in the same shape:
rejection sampling (Yuan et al. 2023's RFT, STaR), a model tuned on its own answers that ran.
Only dev-half problems are read: an answer to a test-half problem is refused, since the test half
is what a code sweep reports, and an answer sharing a run of 13 words with a test-half problem is
left out (HumanEval has near-twins across the halves: 56 and 61, 40 and 43, 46 and 63).

`answers: python` on any source keeps only examples whose answer is Python that parses: the code
block of the answer if it has one, else the whole answer (code_alpaca mixes Python with SQL,
JavaScript, HTML and prose).
"""

from __future__ import annotations

import ast
import builtins
import json
import re
import sysconfig
from pathlib import Path

from tunelab.data.code_problems import (
    CHAT_ANSWER_START,
    CHAT_REQUEST,
    LEAK_NGRAM,
    REPORTED_HALF,
    code_benchmark_path,
    ngrams,
    problem_half,
    problem_ngrams,
    read_code_problems,
)
from tunelab.errors import DataError
from tunelab.io import read_jsonl
from tunelab.progress import console
from tunelab.runs import BenchmarkDir

STDLIB = "stdlib"  # the `path` that names the standard library of the running Python
SKIPPED_FOLDERS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"}
MAX_BODY_LINES = 30  # a body longer than this rarely fits a 512-token example with its docstring
BUILTIN_NAMES = set(dir(builtins))
FENCED = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.DOTALL)


# ---------------------------------------------------------------- finding the functions
def source_files(path: str) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"]) if path == STDLIB else Path(path).expanduser()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(path, None, None, f"not a .py file, a folder of them, or '{STDLIB}'")
    return sorted(p for p in root.rglob("*.py") if not SKIPPED_FOLDERS & set(p.relative_to(root).parts))


def module_imports(tree: ast.Module) -> dict[str, str]:
    """{name bound at module level by an import: the import statement that binds it}."""
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not (isinstance(node, ast.ImportFrom) and node.level):
            for alias in node.names:
                if alias.name != "*":
                    name = (alias.asname or alias.name).split(".")[0]
                    found[name] = ast.unparse(type(node)(**{**node.__dict__, "names": [alias]}))
    return found


def names_read_from_outside(fn: ast.FunctionDef) -> set[str]:
    """Names the function reads that it does not bind itself (parameters, assignments, nested defs, imports)."""
    bound, read = set(), set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node is not fn:
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return read - bound - BUILTIN_NAMES


def function_parts(fn: ast.FunctionDef, lines: list[str], imports: dict[str, str]) -> tuple[str, str] | None:
    """(prompt, body) of a self-contained documented function, or None when it is not one."""
    if fn.decorator_list or fn.name.startswith("_") or ast.get_docstring(fn) is None or len(fn.body) < 2:
        return None
    outside = names_read_from_outside(fn)
    if not outside <= set(imports):
        return None
    docstring_end = fn.body[0].end_lineno
    body = lines[docstring_end : fn.end_lineno]
    if len(body) > MAX_BODY_LINES or all(isinstance(s, (ast.Pass, ast.Raise)) for s in fn.body[1:]):
        return None
    header = "".join(imports[name] + "\n" for name in sorted(outside))
    prompt = (header + "\n\n" if header else "") + "".join(lines[fn.lineno - 1 : docstring_end])
    return prompt, "".join(body)


def documented_functions(path: str) -> list[dict]:
    """[{"where": file:line, "name", "prompt", "body"}] for every self-contained documented function under `path`."""
    found = []
    for file in source_files(path):
        try:
            text = file.read_text(encoding="utf-8")
            tree = ast.parse(text)
        except (UnicodeDecodeError, SyntaxError, ValueError) as err:
            if path == STDLIB:
                continue  # the standard library ships a few files of another Python version or encoding on purpose
            line = getattr(err, "lineno", None)  # a user's file that does not parse is a mistake to see, not data to lose
            raise DataError(
                f"{file}:{line}" if line else str(file),
                None,
                None,
                f"is not Python this interpreter reads ({type(err).__name__}: {getattr(err, 'msg', err)}): fix it, or move it out of the source",
            ) from None
        lines, imports = text.splitlines(keepends=True), module_imports(tree)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and (parts := function_parts(node, lines, imports)):
                found.append({"where": f"{file}:{node.lineno}", "name": node.name, "prompt": parts[0], "body": parts[1]})
    return found


# ---------------------------------------------------------------- as examples
def as_benchmark_answer(prompt: str, body: str) -> str:
    """The assistant's answer a code benchmark asks for: the prompt, then the body, in one closed code block."""
    return CHAT_ANSWER_START + prompt + body.rstrip("\n") + "\n```"


def python_function_records(path: str) -> list[dict]:
    """One chat record per function under `path`, leaving out any that shares 13 words with HumanEval."""
    problems = read_code_problems(code_benchmark_path("humaneval"))
    test_ngrams = set().union(*map(problem_ngrams, problems))
    records = []
    for f in documented_functions(path):
        if ngrams(f["prompt"] + f["body"]) & test_ngrams:
            continue
        answer = as_benchmark_answer(f["prompt"], f["body"])
        records.append({"messages": [{"role": "user", "content": CHAT_REQUEST}, {"role": "assistant", "content": answer}]})
    if not records:
        raise DataError(path, None, None, "no documented, self-contained top-level functions found")
    return records


def passing_answer_records(path: str) -> list[dict]:
    """One chat record per distinct passing answer in a code benchmark's folder (its predictions.jsonl),
    every model's answers alike; a test-half problem, or a row written before halves were recorded, is an error."""
    folder = Path(path).expanduser()
    bench = BenchmarkDir(folder.parent if folder.name == "predictions.jsonl" else folder)
    predictions = bench.predictions
    if not predictions.is_file():
        raise DataError(
            path, None, None, "not a code benchmark's folder (no predictions.jsonl): make one with `tunelab benchmark … --half dev`"
        )
    test_ngrams = reported_half_ngrams(bench.benchmark_json)
    records, twins = [], set()
    for index, row in enumerate(read_jsonl(predictions)):
        if row.get("half") in (None, REPORTED_HALF):
            found = f"problem {row.get('id')} is in the {row['half']} half" if row.get("half") else "no declared half recorded"
            raise DataError(str(predictions), index, "half", f"{found}; train only on dev-half answers (`tunelab benchmark … --half dev`)")
        samples = [s for value in row.values() if isinstance(value, list) for s in value if isinstance(s, dict) and s.get("passed")]
        for completion in dict.fromkeys(s["completion"] for s in samples):  # distinct, in order
            # a prompt whose trailing newline the model wrote itself (see asked_prompt) is given without it
            prompt = row["prompt"].rstrip("\n") if completion.startswith("\n") else row["prompt"]
            answer = as_benchmark_answer(prompt, completion)
            if ngrams(answer) & test_ngrams:  # a dev problem with a twin in the test half (HumanEval/56 and 61)
                twins.add(row.get("id"))
                continue
            records.append({"messages": [{"role": "user", "content": CHAT_REQUEST}, {"role": "assistant", "content": answer}]})
    if twins:
        console.print(
            f"{path}: left out the answers to {len(twins)} dev problem(s) sharing {LEAK_NGRAM} words with a test-half problem: "
            + ", ".join(sorted(twins))
        )
    if not records:
        raise DataError(
            str(predictions), None, None, f"no answer in it passed its tests (and shares no {LEAK_NGRAM} words with the test half)"
        )
    return records


def reported_half_ngrams(benchmark_json: Path) -> set[tuple[str, ...]]:
    """The LEAK_NGRAM-word runs of the test-half problems of the file a code benchmark folder scored (its benchmark.json)."""
    try:
        result = json.loads(benchmark_json.read_text(encoding="utf-8"))
        problems = read_code_problems(Path(result["file"]), result.get("fields") or {})
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(str(benchmark_json), None, "file", f"cannot read the problems it scored ({err})") from None
    return set().union(*(problem_ngrams(p) for i, p in enumerate(problems) if problem_half(i) == REPORTED_HALF))


# ---------------------------------------------------------------- answers that are Python
def answer_code(answer: str) -> str:
    """The code of an answer: its fenced blocks marked python (or unmarked), else the whole answer."""
    blocks = [code for lang, code in FENCED.findall(answer) if lang.lower() in ("", "python", "py", "python3")]
    return "\n".join(blocks) if blocks else answer


def is_python(answer: str) -> bool:
    """The answer's code parses as Python and is more than a lone name or constant (which prose can be)."""
    try:
        tree = ast.parse(answer_code(answer))
    except (SyntaxError, ValueError):
        return False
    return any(not (isinstance(s, ast.Expr) and isinstance(s.value, (ast.Name, ast.Constant))) for s in tree.body)
