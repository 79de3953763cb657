"""The command line passes on only the options a user gave: every default lives in one place
(the recipe's models in tunelab/config.py, ServeLimits, the registry's cache size), never retyped in cli.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import tunelab.serve.run as serve_run
from tunelab.cli import app
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


# ---------------------------------------------------------------- tunelab eval: options that do not apply are errors
@pytest.fixture
def evaluated(monkeypatch) -> list[tuple[str, dict]]:
    """(which evaluation, its keyword arguments) for each `tunelab eval` that got past its checks (nothing is scored)."""
    import tunelab.evaluate.benchmark as benchmark_stage
    import tunelab.evaluate.human as human_stage
    import tunelab.evaluate.run as evaluate_stage

    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(evaluate_stage, "evaluate_cli", lambda models, **kw: calls.append(("held-out", kw)))
    monkeypatch.setattr(benchmark_stage, "benchmark_cli", lambda models, bench, **kw: calls.append(("benchmark", kw)))
    monkeypatch.setattr(human_stage, "human_cli", lambda target, **kw: calls.append(("human", kw)) or {})
    return calls


def refusal(args: list[str]) -> str:
    res = CliRunner().invoke(app, ["eval", "runs/x", *args])
    assert res.exit_code == 2, res.output
    return " ".join(res.output.split())  # the console wraps long lines


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--benchmark", "arc-easy", "--max-examples", "40"],
            "--max-examples does not apply with a multiple-choice --benchmark; use --max-questions",
        ),
        (["--max-questions", "40"], "--max-questions does not apply without --benchmark or --human; use --max-examples"),
        (
            ["--benchmark", "arc-easy", "--data", "q.jsonl"],
            "--data does not apply with a multiple-choice --benchmark; give the file itself as --benchmark FILE",
        ),
        (["--precision", "bf16"], "--precision does not apply without --benchmark or --human; use --set generation_precision="),
        (
            ["--benchmark", "arc-easy", "--temperature", "0.5"],
            "--temperature does not apply with a multiple-choice --benchmark; it applies to the held-out evaluation and a code --benchmark",
        ),
        (["--human", "--data", "q.jsonl"], "--data does not apply with --human; it applies to the held-out evaluation only"),
        (
            ["--human", "--no-base"],
            "--base does not apply with --human; it applies to the held-out evaluation, a multiple-choice --benchmark and a code --benchmark",
        ),
        (["--seed", "3"], "--seed does not apply without --benchmark or --human; it applies to a multiple-choice --benchmark only"),
        (["--human", "--benchmark", "arc-easy"], "--benchmark and --human are two different evaluations"),
    ],
)
def test_an_eval_option_that_does_not_apply_is_an_error_naming_what_does(evaluated, args, message):
    assert message in refusal(args)
    assert evaluated == []  # refused before any work


def test_eval_options_that_apply_are_passed_on(evaluated):
    res = CliRunner().invoke(app, ["eval", "runs/x", "--benchmark", "arc-easy", "--max-questions", "40", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    kind, passed = evaluated[-1]
    assert kind == "benchmark" and passed["max_questions"] == 40 and passed["batch_size"] == 4
    assert not {"seed", "precision"} & passed.keys()  # benchmark_cli's own defaults apply

    res = CliRunner().invoke(app, ["eval", "runs/x", "--max-examples", "5", "--temperature", "0.3"])
    assert res.exit_code == 0, res.output
    kind, passed = evaluated[-1]
    assert kind == "held-out" and passed["config"].max_examples == 5 and passed["config"].temperature == 0.3

    res = CliRunner().invoke(app, ["eval", "runs/x", "--human", "--metrics", "bleu"])
    assert res.exit_code == 0, res.output
    assert evaluated[-1] == ("human", {"metrics": ["bleu"], "bertscore_model": passed["config"].bertscore_model})


def test_every_eval_option_says_where_it_applies():
    """A new `tunelab eval` option (a new benchmark's, say) must be placed in EVAL_OPTION_MODES, or it would
    be accepted, and perhaps ignored, in every mode."""
    from tunelab.cli import EVAL_OPTION_MODES

    command = typer.main.get_command(app).commands["eval"]
    options = {p.opts[0] for p in command.params if p.param_type_name == "option"}
    applies_everywhere = {"--set", "--benchmark", "--human"}
    assert options - applies_everywhere == set(EVAL_OPTION_MODES)


def test_export_passes_on_check_only_when_given(monkeypatch):
    import tunelab.export.run as export_stage

    calls: list[dict] = []
    monkeypatch.setattr(export_stage, "export_cli", lambda run, **kw: calls.append(kw))
    assert CliRunner().invoke(app, ["export", "runs/x"]).exit_code == 0
    assert calls[-1] == {"formats": None, "out": None}  # export_cli's own default: checked
    assert CliRunner().invoke(app, ["export", "runs/x", "--no-check", "--format", "merged"]).exit_code == 0
    assert calls[-1] == {"formats": ["merged"], "out": None, "check": False}
