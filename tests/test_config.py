"""Recipes: every shipped example validates, typos are refused, overrides apply."""
from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.config import config_reference, load_recipe
from tunelab.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("path", sorted(p for p in EXAMPLES.glob("*.yaml") if not p.name.startswith("sweep")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    assert recipe.data.sources


def test_typo_is_refused_with_its_location(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  sources: [{path: x.json}]\ntrain:\n  learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"train.learning_rat: Extra inputs"):
        load_recipe(path)


def test_overrides_are_parsed_as_yaml(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  sources: [{path: x.json}]\n")
    recipe = load_recipe(path, ["train.learning_rate=1e-4", "train.lora.target_modules=[q_proj, v_proj]", "name=abc"])
    assert recipe.train.learning_rate == 1e-4 and recipe.train.lora.target_modules == ["q_proj", "v_proj"] and recipe.name == "abc"
    with pytest.raises(ConfigError):
        load_recipe(path, ["train.learning_rate"])


def test_configuration_reference_is_current():
    doc = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    assert doc.read_text() == config_reference() + "\n", "run `make docs` to regenerate docs/configuration.md"


def test_missing_shared_data_falls_back_to_builtin_stand_ins(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "r.yaml"
    path.write_text("data:\n  sources:\n    - {path: ../nowhere/identity.json, placeholders: {name: Ada, author: Lab}}\n    - {path: ../nowhere/alpaca_en_demo.json}\n")
    recipe = load_recipe(path)
    from tunelab.data import load_source

    identity = load_source(recipe.data.sources[0])
    assert len(identity) >= 20 and "Ada" in identity[0]["messages"][-1]["content"]
    assert len(load_source(recipe.data.sources[1])) >= 20
