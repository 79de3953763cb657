"""The command line passes on only the options a user gave: every default lives in one place
(the recipe's models in tunelab/config.py, ServeLimits, the registry's cache size), never retyped in cli.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import tunelab.serve.run as serve_run
from tunelab.cli import OLD_EVAL_SPELLINGS, app
from tunelab.config import CodeEvalConfig, EvalConfig
from tunelab.serve.generation import CHARS_PER_TOKEN, ServeLimits
from tunelab.serve.registry import MODEL_CACHE_SIZE

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture
def started(monkeypatch) -> list[dict]:
    """The keyword arguments each `serve`/`api` command passed on to serve_cli/api_cli (nothing is started)."""
    calls: list[dict] = []
    monkeypatch.setattr(serve_run, "serve_cli", lambda models, **kw: calls.append(kw))
    monkeypatch.setattr(serve_run, "api_cli", lambda models, **kw: calls.append(kw))
    return calls


@pytest.mark.parametrize("command", ["serve", "api"])
def test_serve_and_api_pass_on_only_the_options_given(started, command):
    res = CliRunner().invoke(app, [command])
    assert res.exit_code == 0, res.output
    assert started[-1]["limits"] == ServeLimits()
    assert not {"runs", "host", "port", "cache_size"} & started[-1].keys()  # serve_cli's and api_cli's own defaults apply

    res = CliRunner().invoke(app, [command, "--max-tokens", "64", "--cache-size", "1", "--runs", "elsewhere", "--port", "9"])
    assert res.exit_code == 0, res.output
    assert started[-1]["limits"] == ServeLimits(max_tokens=64)
    assert started[-1]["cache_size"] == 1 and started[-1]["runs"] == Path("elsewhere") and started[-1]["port"] == 9
    assert "host" not in started[-1]


def test_serve_limits_have_one_set_of_defaults():
    limits = ServeLimits(max_prompt_tokens=100)
    assert limits.max_prompt_chars == CHARS_PER_TOKEN * 100  # derived unless given
    assert ServeLimits(max_prompt_chars=50).max_prompt_chars == 50


def test_docs_show_the_serving_defaults_the_code_has():
    """docs/serve.md's synopsis is the one place people read the defaults: it must say what the code does."""
    synopsis = (DOCS / "serve.md").read_text().split("```")[1]
    defaults = ServeLimits()
    expected = {
        "--max-tokens": defaults.max_tokens,
        "--max-prompt-tokens": defaults.max_prompt_tokens,
        "--max-concurrent": defaults.max_concurrent,
        "--max-queue": defaults.max_queue,
        "--cache-size": MODEL_CACHE_SIZE,
    }
    for option, value in expected.items():
        shown = re.findall(rf"\[{option} (\S+)\]", synopsis)
        assert shown == [str(value)] * 2, (option, shown)  # once for serve, once for api


@pytest.fixture
def prepared(monkeypatch) -> list[dict]:
    """What each `tunelab data prepare` handed to prepare_data (nothing is prepared)."""
    import tunelab.data.prepare as prepare_stage

    calls: list[dict] = []

    def record(config, out, **kw):
        calls.append({"config": config, "out": out, **kw})
        return {"counts": {}}

    monkeypatch.setattr(prepare_stage, "prepare_data", record)
    return calls


def test_data_prepare_takes_the_recipe_defaults_for_options_left_out(prepared):
    from tunelab.config import DataConfig, DataSource
    from tunelab.runs import DEFAULT_RUNS_DIR

    res = CliRunner().invoke(app, ["data", "prepare", "a.jsonl"])
    assert res.exit_code == 0, res.output
    assert prepared[-1]["config"] == DataConfig(sources=[DataSource(path="a.jsonl")])
    assert prepared[-1]["out"] == DEFAULT_RUNS_DIR / "data"

    res = CliRunner().invoke(app, ["data", "prepare", "a.jsonl", "--dedup", "exact", "--strict", "--format", "alpaca", "--seed", "7"])
    assert res.exit_code == 0, res.output
    given = DataConfig(sources=[DataSource(path="a.jsonl", format="alpaca")], dedup="exact", strict=True, seed=7)
    assert prepared[-1]["config"] == given


# ---------------------------------------------------------------- eval, benchmark, votes: options that do not apply are errors
EVALUATION_COMMANDS = ("eval", "benchmark", "votes")


@pytest.fixture
def evaluated(monkeypatch) -> list[tuple[str, dict]]:
    """(which evaluation, its keyword arguments) for each evaluation command that got past its checks (nothing is scored)."""
    import tunelab.evaluate.benchmark as benchmark_stage
    import tunelab.evaluate.code as code_stage
    import tunelab.evaluate.human as human_stage
    import tunelab.evaluate.run as evaluate_stage

    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(evaluate_stage, "evaluate_cli", lambda models, **kw: calls.append(("held-out", kw)))
    monkeypatch.setattr(benchmark_stage, "benchmark_cli", lambda models, bench, **kw: calls.append(("benchmark", kw)))
    monkeypatch.setattr(code_stage, "code_benchmark_cli", lambda models, cfg, **kw: calls.append(("code", {"config": cfg, **kw})))
    monkeypatch.setattr(human_stage, "human_cli", lambda target, **kw: calls.append(("human", kw)) or {})
    return calls


def words(output: str) -> str:
    """The output as one line of words: the console wraps long lines, inside an error panel's borders."""
    return " ".join(output.replace("│", " ").split())


def refusal(args: list[str]) -> str:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    return words(res.output)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["benchmark", "runs/x", "--benchmark", "arc-easy", "--max-examples", "40"],
            "--max-examples does not apply to `tunelab benchmark` (a multiple-choice or code benchmark); "
            "use --max-questions (multiple choice) or --max-problems (code)",
        ),
        (
            ["eval", "runs/x", "--max-questions", "40"],
            "--max-questions does not apply to `tunelab eval` (held-out examples); use --max-examples",
        ),
        (
            ["benchmark", "runs/x", "--benchmark", "arc-easy", "--data", "q.jsonl"],
            "--data does not apply to `tunelab benchmark` (a multiple-choice or code benchmark); give the file itself as --benchmark FILE",
        ),
        (
            ["eval", "runs/x", "--precision", "bf16"],
            "--precision does not apply to `tunelab eval` (held-out examples); use --set generation_precision=",
        ),
        (
            ["benchmark", "runs/x", "--benchmark", "arc-easy", "--temperature", "0.5"],
            "--temperature does not apply to a multiple-choice benchmark; it applies to a code benchmark only",
        ),
        (
            ["votes", "runs/x", "--data", "q.jsonl"],
            "--data does not apply to `tunelab votes` (people's blind A/B votes); it is an option of `tunelab eval` (held-out examples)",
        ),
        (
            ["votes", "runs/x", "--no-base"],
            "--no-base does not apply to `tunelab votes` (people's blind A/B votes); it is an option of "
            "`tunelab eval` (held-out examples) and `tunelab benchmark` (a multiple-choice or code benchmark)",
        ),
        (
            ["eval", "runs/x", "--seed", "3"],
            "--seed does not apply to `tunelab eval` (held-out examples); it is an option of `tunelab benchmark`",
        ),
        (["benchmark", "runs/x", "--benchmark", "arc-easy", "--set", "batch_size=4"], "a benchmark's settings are its own options"),
        (["votes", "runs/x", "--set", "metrics=[bleu]"], "--set does not apply to `tunelab votes`"),
        # the old spellings are refused alike, in the words of the command they now run
        (["eval", "runs/x", "--benchmark", "arc-easy", "--max-examples", "40"], "--max-examples does not apply to `tunelab benchmark`"),
        (["eval", "--human", "runs/x", "--data", "q.jsonl"], "--data does not apply to `tunelab votes`"),
        (["eval", "runs/x", "--human", "--benchmark", "arc-easy"], "--benchmark and --human are two different evaluations"),
    ],
)
def test_an_evaluation_option_that_does_not_apply_is_an_error_naming_what_does(evaluated, args, message):
    assert message in refusal(args)
    assert evaluated == []  # refused before any work


def command_options(name: str) -> set[str]:
    command = typer.main.get_command(app).commands[name]
    return {o for p in command.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)}


@pytest.mark.parametrize(
    "command, option",
    sorted(
        (command, option)
        for command in EVALUATION_COMMANDS
        for other in EVALUATION_COMMANDS
        for option in command_options(other) - command_options(command)
        if not (command == "eval" and option in OLD_EVAL_SPELLINGS)  # the deprecated spellings, tested below
    ),
)
def test_every_evaluation_command_refuses_the_options_of_the_others(evaluated, command, option):
    """An option of `eval`, `benchmark` or `votes` given to one of the others is refused, never ignored."""
    assert f"{option} does not apply to `tunelab {command}`" in refusal([command, "runs/x", option, "1"])
    assert evaluated == []


def test_evaluation_options_that_apply_are_passed_on(evaluated):
    res = CliRunner().invoke(app, ["benchmark", "runs/x", "--benchmark", "arc-easy", "--max-questions", "40", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    kind, passed = evaluated[-1]
    assert kind == "benchmark" and passed["max_questions"] == 40 and passed["batch_size"] == 4
    assert not {"seed", "precision"} & passed.keys()  # benchmark_cli's own defaults apply
    assert passed["compare_base"] is EvalConfig().compare_base  # the recipe's default, its one owner

    res = CliRunner().invoke(app, ["benchmark", "runs/x", "--benchmark", "humaneval", "--samples", "4", "--temperature", "0.8"])
    assert res.exit_code == 0, res.output
    kind, passed = evaluated[-1]
    assert kind == "code" and passed["config"] == CodeEvalConfig(samples=4, temperature=0.8)  # CodeEvalConfig's defaults for the rest

    res = CliRunner().invoke(app, ["eval", "runs/x", "--max-examples", "5", "--temperature", "0.3"])
    assert res.exit_code == 0, res.output
    kind, passed = evaluated[-1]
    assert kind == "held-out" and passed["config"].max_examples == 5 and passed["config"].temperature == 0.3

    res = CliRunner().invoke(app, ["votes", "runs/x", "--metrics", "bleu"])
    assert res.exit_code == 0, res.output
    assert evaluated[-1] == ("human", {"metrics": ["bleu"], "bertscore_model": EvalConfig().bertscore_model})


@pytest.mark.parametrize(
    "args, spelling, kind",
    [
        (
            ["runs/x", "--benchmark", "arc-easy", "--max-questions", "40"],
            "`tunelab eval --benchmark` is now `tunelab benchmark MODEL...",
            "benchmark",
        ),
        (
            ["runs/x", "--benchmark=humaneval", "--allow-code-execution"],
            "`tunelab eval --benchmark` is now `tunelab benchmark MODEL...",
            "code",
        ),
        (["--human", "runs/x", "--metrics", "bleu"], "`tunelab eval --human` is now `tunelab votes RUN|votes.jsonl`", "human"),
    ],
)
def test_the_old_eval_spellings_still_run_for_a_release_naming_the_new_command(evaluated, args, spelling, kind):
    res = CliRunner().invoke(app, ["eval", *args])
    assert res.exit_code == 0, res.output
    assert f"deprecated: {spelling}" in words(res.output)
    assert evaluated[-1][0] == kind


def test_every_benchmark_option_says_which_kind_of_benchmark_it_applies_to():
    """A new `tunelab benchmark` option must be placed in BENCHMARK_OPTION_KINDS (or be one both kinds
    use), or it would be accepted, and perhaps ignored, by the kind it does not apply to."""
    from tunelab.cli import BENCHMARK_OPTION_KINDS

    command = typer.main.get_command(app).commands["benchmark"]
    options = {p.opts[0] for p in command.params if p.param_type_name == "option"}
    both_kinds = {"--benchmark", "--out", "--name", "--base", "--field"}
    assert options - both_kinds == set(BENCHMARK_OPTION_KINDS)


def test_export_passes_on_check_only_when_given(monkeypatch):
    import tunelab.export.run as export_stage

    calls: list[dict] = []
    monkeypatch.setattr(export_stage, "export_cli", lambda run, **kw: calls.append(kw))
    assert CliRunner().invoke(app, ["export", "runs/x"]).exit_code == 0
    assert calls[-1] == {"formats": None, "out": None}  # export_cli's own default: checked
    assert CliRunner().invoke(app, ["export", "runs/x", "--no-check", "--format", "merged"]).exit_code == 0
    assert calls[-1] == {"formats": ["merged"], "out": None, "check": False}
