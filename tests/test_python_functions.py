"""Python as training data: documented functions in a code benchmark's shape, and the `answers: python` filter."""

from __future__ import annotations

import json
import textwrap

import pytest

from tunelab.config import DataConfig, DataSource
from tunelab.data import python_functions as pf
from tunelab.data.code_problems import CHAT_ANSWER_START, CHAT_REQUEST, code_benchmark_path, problem_half, read_code_problems
from tunelab.data.loaders import load_examples
from tunelab.errors import DataError
from tunelab.evaluate.code import completion_code
from tunelab.io import read_jsonl

SOURCE = textwrap.dedent(
    '''
    """A module of examples."""
    import re
    from collections import Counter

    LIMIT = 10


    def words(text):
        """The words of `text`, lower-cased."""
        found = re.findall(r"\\w+", text)
        return [w.lower() for w in found]


    def most_common(items, k=1):
        """The k most common items."""
        return [item for item, _ in Counter(items).most_common(k)]


    def capped(n):
        """n, at most LIMIT."""
        return min(n, LIMIT)


    def helper_user(x):
        """Calls a helper of its module."""
        return words(x)


    @staticmethod
    def decorated(x):
        """Decorated."""
        return x


    def undocumented(x):
        return x


    def stub(x):
        """Not written yet."""
        raise NotImplementedError


    def _private(x):
        """Private."""
        return x
    '''
)


def test_only_self_contained_documented_functions_are_kept_with_the_imports_they_use(tmp_path):
    (tmp_path / "mod.py").write_text(SOURCE)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_mod.py").write_text(SOURCE)  # test folders are skipped
    found = {f["name"]: f for f in pf.documented_functions(str(tmp_path))}
    # capped reads a module global, helper_user a function of its module: a reader of the prompt lacks both
    assert sorted(found) == ["most_common", "words"]
    assert found["words"]["prompt"].startswith('import re\n\n\ndef words(text):\n    """The words of `text`, lower-cased."""\n')
    assert found["words"]["body"] == '    found = re.findall(r"\\w+", text)\n    return [w.lower() for w in found]\n'
    assert found["most_common"]["prompt"].startswith("from collections import Counter\n\n\ndef most_common(items, k=1):")


def test_an_example_asks_exactly_what_the_code_benchmark_asks(tmp_path):
    (tmp_path / "mod.py").write_text(SOURCE)
    examples = load_examples(DataSource(path=str(tmp_path / "mod.py"), format="python_functions"))
    assert len(examples) == 2
    user, assistant = examples[0]["messages"]
    assert user == {"role": "user", "content": CHAT_REQUEST}
    # the benchmark's chat prompt ends with CHAT_ANSWER_START + the problem's prompt: the model then writes the body
    function = pf.documented_functions(str(tmp_path / "mod.py"))[0]
    start = CHAT_ANSWER_START + function["prompt"]
    assert assistant["content"].startswith(start)
    assert (
        completion_code(function["prompt"], assistant["content"][len(start) :], "chat", "code_block")
        == function["body"].rstrip("\n") + "\n"
    )


def test_the_standard_library_gives_hundreds_of_functions_and_none_shares_13_words_with_humaneval():
    records = pf.python_function_records(pf.STDLIB)
    assert len(records) > 200
    texts = [r["messages"][1]["content"] for r in records]
    from tunelab.data.code_problems import leaked_problems

    assert leaked_problems(texts, read_code_problems(code_benchmark_path("humaneval"))) == {}


def test_a_function_copied_from_humaneval_is_left_out(tmp_path):
    problem = read_code_problems(code_benchmark_path("humaneval"))[0]
    (tmp_path / "copied.py").write_text(SOURCE + "\n\n" + problem.prompt + problem.solution)
    names = {f["name"] for f in pf.documented_functions(str(tmp_path))}
    assert problem.entry_point in names  # it is self-contained and documented ...
    kept = [r["messages"][1]["content"] for r in pf.python_function_records(str(tmp_path))]
    assert len(kept) == 2 and not any(problem.entry_point in k for k in kept)  # ... but shares HumanEval's text


def test_a_path_with_no_python_functions_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="not a .py file"):
        pf.python_function_records(str(tmp_path / "missing"))
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(DataError, match="no documented"):
        pf.python_function_records(str(tmp_path / "empty.py"))


@pytest.mark.parametrize(
    "answer, python",
    [
        ("def add(a, b):\n    return a + b", True),
        ("Here it is:\n```python\nfor x in items:\n    print(x)\n```\nDone.", True),
        ("```\ntotal = sum(values)\n```", True),
        ("let arr = [1, 2, 3];", False),
        ("SELECT name FROM users WHERE age > 30;", False),
        ("function area(r) {\n return Math.PI * r * r;\n}", False),
        ("```javascript\nconsole.log(1)\n```", False),
        ("The answer is that lists are mutable.", False),
        ("Paris", False),  # a lone name parses, but says nothing of Python
    ],
)
def test_python_answers(answer, python):
    assert pf.is_python(answer) is python


def test_answers_python_drops_every_other_answer_and_counts_it(tmp_path, tiny_model_dir):
    from tunelab.data.prepare import prepare_data

    rows = [
        {"instruction": "Add two numbers in Python.", "input": "", "output": "def add(a, b):\n    return a + b"},
        {"instruction": "Sum a list.", "input": "", "output": "```python\ntotal = sum(values)\n```"},
        {"instruction": "Select the names.", "input": "", "output": "SELECT name FROM users;"},
        {"instruction": "Declare an array.", "input": "", "output": "let arr = [1, 2, 3];"},
    ] * 3
    for i, r in enumerate(rows):
        r["instruction"] += f" (case {i})"
    path = tmp_path / "code.json"
    path.write_text(json.dumps(rows))
    cfg = DataConfig(sources=[DataSource(path=str(path), answers="python")], test_size=2, validation_size=0, dedup="none")
    card = prepare_data(cfg, tmp_path / "out", model_ref=str(tiny_model_dir), max_seq_length=128)
    assert card["drops"]["answer_not_python"]["count"] == 6
    kept = [ex for split in ("train", "test") for ex in read_jsonl(tmp_path / "out" / f"{split}.jsonl")]
    assert kept and all(pf.is_python(ex["messages"][-1]["content"]) for ex in kept)


def test_problem_halves_interleave():
    assert [problem_half(i) for i in range(5)] == ["dev", "test", "dev", "test", "dev"]


def test_a_sweep_names_the_python_sources_it_changed():
    from tunelab.compare.spec import describe_sources

    sources = [{"path": "../data/code_alpaca_2k.json", "answers": "python"}, {"path": "stdlib", "format": "python_functions"}]
    assert describe_sources(sources) == "code_alpaca_2k.json (python answers) + stdlib functions"


def test_a_file_that_does_not_parse_is_a_clear_error_naming_it(tmp_path):
    """A user's source file that is not Python (a syntax error, another encoding) is named, not silently dropped."""
    (tmp_path / "good.py").write_text('def add(a, b):\n    """Add two numbers."""\n    total = a + b\n    return total\n')
    (tmp_path / "broken.py").write_text("def half(x):\n    return x /\n")
    with pytest.raises(DataError, match=r"broken\.py:2: is not Python this interpreter reads \(SyntaxError: invalid syntax\)"):
        pf.documented_functions(str(tmp_path))
    (tmp_path / "broken.py").write_bytes(b"# caf\xe9\ndef f():\n    pass\n")
    with pytest.raises(DataError, match=r"broken\.py: is not Python this interpreter reads \(UnicodeDecodeError"):
        pf.documented_functions(str(tmp_path))


TEST_HALF_PROBLEM = (
    'def is_sorted(values):\n    """Return True if the values are in ascending order and no value appears more than twice."""\n'
)


def _answers_folder(tmp_path, rows):
    """A code benchmark's folder as `tunelab benchmark --half dev` writes it, over a file of two problems
    (T/0 in the dev half, T/1 in the test half)."""
    from tunelab.io import atomic_write_json, atomic_write_jsonl
    from tunelab.runs import BenchmarkDir

    problems = tmp_path / "problems.jsonl"
    test = {"test": "def check(candidate):\n    pass\n", "entry_point": "f"}
    atomic_write_jsonl(
        problems, [{"task_id": "T/0", "prompt": "def f():\n", **test}, {"task_id": "T/1", "prompt": TEST_HALF_PROBLEM, **test}]
    )
    folder = tmp_path / "answers"
    atomic_write_jsonl(BenchmarkDir(folder).predictions, rows)
    atomic_write_json(BenchmarkDir(folder).benchmark_json, {"file": str(problems), "half": "dev"})
    return folder


def test_passing_answers_make_one_example_per_distinct_answer_that_passed(tmp_path):
    """Rejection sampling: a code benchmark's own passing answers, in the shape the benchmark asks."""
    prompt = 'def add(a, b):\n    """Return a + b."""\n'
    good, other, bad = "    return a + b\n", "    return b + a\n", "    return a - b\n"
    samples = [{"completion": c, "passed": c != bad} for c in (good, good, other, bad)]
    rows = [
        {"id": "T/0", "half": "dev", "prompt": prompt, "m": samples},
        {"id": "T/2", "half": "dev", "prompt": prompt, "m": [{"completion": bad, "passed": False}]},
    ]
    folder = _answers_folder(tmp_path, rows)
    examples = load_examples(DataSource(path=str(folder), format="passing_answers"))
    answers = [e["messages"][1]["content"] for e in examples]
    assert answers == [CHAT_ANSWER_START + prompt + good.rstrip("\n") + "\n```", CHAT_ANSWER_START + prompt + other.rstrip("\n") + "\n```"]
    assert all(e["messages"][0] == {"role": "user", "content": CHAT_REQUEST} for e in examples)
    # a body the model began with the prompt's newline itself (a tokenizer that merges it) does not double it
    rows[0]["m"] = [{"completion": "\n" + good, "passed": True}]
    folder = _answers_folder(tmp_path, rows)
    (only,) = load_examples(DataSource(path=str(folder / "predictions.jsonl"), format="passing_answers"))
    assert only["messages"][1]["content"] == CHAT_ANSWER_START + prompt + good.rstrip("\n") + "\n```"


def test_passing_answers_leave_out_a_dev_problem_twinned_with_the_test_half(tmp_path, capsys):
    """HumanEval has near-twins across the halves (56 and 61): a dev answer sharing 13 words with a
    test-half problem would leak that problem into training."""
    twin = TEST_HALF_PROBLEM.replace("is_sorted", "is_ordered")
    rows = [
        {"id": "T/0", "half": "dev", "prompt": twin, "m": [{"completion": "    return True\n", "passed": True}]},
        {"id": "T/2", "half": "dev", "prompt": "def g():\n", "m": [{"completion": "    return 1\n", "passed": True}]},
    ]
    examples = load_examples(DataSource(path=str(_answers_folder(tmp_path, rows)), format="passing_answers"))
    assert [e["messages"][1]["content"] for e in examples] == [CHAT_ANSWER_START + "def g():\n    return 1\n```"]
    said = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "left out the answers to 1 dev problem(s) sharing 13 words with a test-half problem: T/0" in said


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"id": "T/1", "half": "test", "prompt": "def f():\n", "m": []}],
            "predictions.jsonl, record 0, field 'half'.*T/1 is in the test half",
        ),
        ([{"id": "T/0", "prompt": "def f():\n", "m": []}], "record 0, field 'half'.*no declared half recorded"),
        ([{"id": "T/0", "half": "dev", "prompt": "def f():\n", "m": [{"completion": "x", "passed": False}]}], "no answer in it passed"),
    ],
)
def test_passing_answers_refuse_the_test_half_and_say_what_is_wrong(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        load_examples(DataSource(path=str(_answers_folder(tmp_path, rows)), format="passing_answers"))
    (tmp_path / "problems.jsonl").unlink()
    with pytest.raises(DataError, match="benchmark.json, field 'file': cannot read the problems it scored"):
        load_examples(DataSource(path=str(tmp_path / "answers"), format="passing_answers"))
    with pytest.raises(DataError, match="no predictions.jsonl"):
        load_examples(DataSource(path=str(tmp_path / "missing"), format="passing_answers"))
