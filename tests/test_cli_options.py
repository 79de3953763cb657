"""The command line passes on only the options a user gave: every default lives in one place
(the recipe's models in tunelab/config.py, ServeLimits, the registry's cache size), never retyped in cli.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
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
