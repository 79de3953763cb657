"""Recipes: every shipped example validates, typos are refused, overrides apply."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tunelab.config import EvalConfig, TrainConfig, config_reference, eval_config_from_options, load_recipe
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
    path.write_text(
        "data:\n  sources:\n    - {path: ../nowhere/identity.json, placeholders: {name: Ada, author: Lab}}\n    - {path: ../nowhere/alpaca_en_demo.json}\n"
    )
    recipe = load_recipe(path)
    from tunelab.data import load_source

    identity = load_source(recipe.data.sources[0])
    assert len(identity) >= 20 and "Ada" in identity[0]["messages"][-1]["content"]
    assert len(load_source(recipe.data.sources[1])) >= 20


def test_eval_options_fall_back_to_evalconfig_and_take_set():
    cfg = eval_config_from_options({"max_examples": None, "batch_size": 2}, ["bertscore_precision=fp32", "eval.top_p=0.9"])
    assert cfg.max_examples is None and cfg.batch_size == 2 and cfg.top_p == 0.9 and cfg.bertscore_precision == "fp32"
    defaults = EvalConfig()
    assert (cfg.max_new_tokens, cfg.metrics, cfg.compare_base) == (defaults.max_new_tokens, defaults.metrics, defaults.compare_base)
    with pytest.raises(ConfigError, match="(?s)tunelab eval: invalid options.*nope"):
        eval_config_from_options({}, ["nope=1"])
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        eval_config_from_options({}, ["batch_size"])


def test_cli_eval_refuses_a_bad_setting_before_loading_anything(tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli import app

    res = CliRunner().invoke(app, ["eval", str(tmp_path / "no-model"), "--data", str(tmp_path / "x.jsonl"), "--set", "temperature=-1"])
    assert res.exit_code == 2 and "temperature" in res.output


def test_data_prepare_length_limit_is_the_training_default(tmp_path, monkeypatch):
    """Without a recipe, `tunelab data prepare` drops what training (max_seq_length) would cut."""
    from typer.testing import CliRunner

    import tunelab.data.prepare
    from tunelab.cli import app

    seen = {}
    monkeypatch.setattr(
        tunelab.data.prepare, "prepare_data", lambda cfg, out, model_ref, max_seq_length: seen.update(n=max_seq_length) or {"counts": {}}
    )
    res = CliRunner().invoke(app, ["data", "prepare", str(tmp_path / "any.json"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert seen["n"] == TrainConfig().max_seq_length


def test_gradient_checkpointing_defaults_on_for_dpo_only():
    """DPO recomputes activations by default (faster and smaller on the CPU bench); SFT and ORPO keep them;
    a recipe's own choice wins, and a sweep that switches the objective gets the new objective's default."""
    from tunelab.config import TrainConfig

    assert TrainConfig(objective="dpo").checkpointing is True
    assert TrainConfig(objective="sft").checkpointing is False
    assert TrainConfig(objective="orpo").checkpointing is False
    assert TrainConfig(objective="dpo", gradient_checkpointing=False).checkpointing is False
    assert TrainConfig(objective="sft", gradient_checkpointing=True).checkpointing is True
    assert TrainConfig(objective="dpo").model_dump()["gradient_checkpointing"] is None  # unresolved in a dumped recipe


def test_learning_rate_defaults_follow_the_objective_and_the_weights():
    from tunelab.config import PREFERENCE_LEARNING_RATES, SFT_LEARNING_RATES, TrainConfig

    assert TrainConfig().resolved_learning_rate == SFT_LEARNING_RATES["lora"] == 2e-4
    assert TrainConfig(weights="full").resolved_learning_rate == SFT_LEARNING_RATES["full"] == 2e-5
    assert TrainConfig(objective="dpo").resolved_learning_rate == PREFERENCE_LEARNING_RATES["lora"] == 5e-5
    orpo_full = TrainConfig(objective="orpo", weights="full")
    assert orpo_full.resolved_learning_rate == PREFERENCE_LEARNING_RATES["full"] == 1e-6
    assert TrainConfig(objective="dpo", learning_rate=1e-4).resolved_learning_rate == 1e-4
    # the field's description (docs/configuration.md) is written from the same numbers
    description = TrainConfig.model_fields["learning_rate"].description
    assert "2e-4 for LoRA/QLoRA, 2e-5 for full" in description and "5e-5 on an adapter, 1e-6 on every weight" in description


TWO_SOURCES = "data:\n  sources: [{path: task.json}, {path: general.json, share: SHARE}]\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (TWO_SOURCES.replace("SHARE", "1.5"), r"r.yaml: invalid recipe\n  - data.sources.1.share: Input should be less than 1"),
        (TWO_SOURCES.replace("SHARE", "1"), r"data.sources.1.share: Input should be less than 1"),
        (TWO_SOURCES.replace("SHARE", "-0.1"), r"data.sources.1.share: Input should be greater than or equal to 0"),
        (TWO_SOURCES.replace("SHARE", "0.2, weight: 2"), r"data: Value error, sources.1: give a share or a weight, not both"),
        ("data:\n  sources: [{path: a.json, share: 0.5}, {path: b.json, share: 0.2}]\n", "every source has a share"),
        (
            "data:\n  sources: [{path: a.json}, {path: b.json, share: 0.6}, {path: c.json, share: 0.4}]\n",
            "the shares of sources add up to 1: together they must stay below 1",
        ),
        (
            "data:\n  sources: [{path: a.json}]\n  eval_source: {path: b.json, share: 0.2}\n",
            "eval_source.share: a share applies to training sources only",
        ),
        (
            "data:\n  sources: [{path: a.json}]\ntrain:\n  interpolation: 1.2\n",
            r"train.interpolation: Input should be less than or equal to 1",
        ),
        (
            "data:\n  sources: [{path: a.json}]\ntrain:\n  interpolation: -0.5\n",
            r"train.interpolation: Input should be greater than or equal to 0",
        ),
        (
            "data:\n  sources: [{path: a.json}]\ntrain:\n  interpolation: 0.5\n  lora: {use_dora: true}\n",
            "train.interpolation scales a LoRA update toward the base, which DoRA",
        ),
        (
            "data:\n  sources: [{path: a.json}]\n  validation_size: 0\ntrain:\n  early_stopping_patience: 2\n",
            r"r.yaml: invalid recipe\n  - train.early_stopping_patience stops on the validation loss",
        ),
        (
            "data:\n  sources: [{path: a.json}]\n  validation_fraction: 0\ntrain:\n  early_stopping_patience: 2\n",
            "leave no validation split",
        ),
    ],
    ids=[
        "share-above-1",
        "share-of-1",
        "share-below-0",
        "share-and-weight",
        "only-shares",
        "shares-add-to-1",
        "eval-source-share",
        "alpha-above-1",
        "alpha-below-0",
        "alpha-with-dora",
        "early-stopping-validation-size-0",
        "early-stopping-validation-fraction-0",
    ],
)
def test_forgetting_levers_refuse_bad_values_naming_file_and_field(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_recipe(path)


def test_forgetting_levers_accept_good_values(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "data:\n  sources: [{path: a.json}, {path: b.json, share: 0.25}, {path: c.json, share: 0}]\n  validation_size: 10\n"
        "train:\n  interpolation: 0.5\n  early_stopping_patience: 2\n"
    )
    recipe = load_recipe(path)
    assert [s.share for s in recipe.data.sources] == [None, 0.25, 0] and recipe.train.interpolation == 0.5
    # a validation size alone is enough for early stopping, even with no validation fraction
    recipe = load_recipe(path, ["data.validation_fraction=0"])
    assert recipe.train.early_stopping_patience == 2


# ---------------------------------------------------------------- the two axes of training, and their old spelling
def one_line(text: str) -> str:
    """Console output as one line of words (the console wraps long lines)."""
    return " ".join(text.split())


def recipe_file(folder: Path, train: str) -> Path:
    path = folder / "old.yaml"
    path.write_text(f"data:\n  sources: [{{path: x.json}}]\ntrain: {train}\n")
    return path


@pytest.mark.parametrize(
    "method, weights, objective",
    [
        ("sft", "lora", "sft"),
        ("lora", "lora", "sft"),
        ("qlora", "qlora", "sft"),
        ("full", "full", "sft"),
        ("dpo", "lora", "dpo"),
        ("orpo", "lora", "orpo"),
    ],
)
def test_the_old_train_method_loads_as_the_two_fields_with_a_message(tmp_path, monkeypatch, capsys, method, weights, objective):
    monkeypatch.chdir(tmp_path)  # a short file name in the message, which the console would otherwise wrap mid-path
    train = load_recipe(recipe_file(Path("."), f"{{method: {method}}}").name).train
    assert (train.weights, train.objective) == (weights, objective)
    said = one_line(capsys.readouterr().err)
    assert (
        f"deprecated: old.yaml: train.method: {method} is now two fields, train.weights: {weights} and train.objective: {objective}" in said
    )
    assert "the old spelling goes in the next release" in said


def test_the_old_preference_weights_and_the_new_spelling(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train = load_recipe(recipe_file(Path("."), "{method: orpo, preference: {weights: full, beta: 0.2}}").name).train
    assert (train.weights, train.objective, train.preference.beta) == ("full", "orpo", 0.2)
    said = one_line(capsys.readouterr().err)
    assert (
        "old.yaml: train.method: orpo and train.preference.weights: full are now two fields, train.weights: full and train.objective: orpo"
        in said
    )
    # a recipe.yaml written before the split holds preference.weights: lora (its default) beside every method: ignored as before
    assert load_recipe(recipe_file(Path("."), "{method: full, preference: {weights: lora}}").name).train.weights == "full"
    # an old field that agrees with a new one beside it is accepted
    assert load_recipe(recipe_file(Path("."), "{method: full, weights: full}").name).train.objective == "sft"
    capsys.readouterr()
    train = load_recipe(recipe_file(Path("."), "{weights: qlora, objective: dpo}").name).train
    assert (train.weights, train.objective) == ("qlora", "dpo") and "deprecated" not in capsys.readouterr().err
    with pytest.raises(ValidationError, match="preference.weights"):  # the model has one owner of what training updates
        TrainConfig.model_validate({"preference": {"weights": "full"}})


@pytest.mark.parametrize(
    "train, message",
    [
        ("{method: full, objective: dpo}", "train.method: full (the old spelling) says train.objective: sft, but train.objective is dpo"),
        (
            "{method: dpo, weights: lora, preference: {weights: full}}",
            "train.preference.weights: full (the old spelling) says train.weights: full, but train.weights is lora",
        ),
        ("{method: lora, preference: {weights: qlora}}", "train.preference.weights: qlora applied to DPO and ORPO only"),
        ("{method: magic}", "train.method: 'magic' is none of sft, lora, qlora, full, dpo, orpo"),
    ],
)
def test_old_and_new_spellings_that_disagree_are_refused_naming_the_file_and_the_fields(tmp_path, train, message):
    path = recipe_file(tmp_path, train)
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_an_old_override_sets_the_new_fields_it_stands_for(tmp_path, capsys):
    """`--set train.method=...` replaces the recipe's fields as any override does: no conflict with the new spelling."""
    path = recipe_file(tmp_path, "{weights: full, objective: sft}")
    train = load_recipe(path, ["train.method=dpo"]).train
    assert (train.weights, train.objective) == ("full", "dpo")
    assert "deprecated: --set train.method=dpo is now --set train.objective=dpo" in one_line(capsys.readouterr().err)
    train = load_recipe(path, ["train.method=qlora"]).train
    assert (train.weights, train.objective) == ("qlora", "sft")
    train = load_recipe(path, ["train.preference.weights=lora"]).train
    assert (train.weights, train.objective) == ("lora", "sft")
    # an old recipe with a new override: the recipe is read in the new spelling first
    train = load_recipe(recipe_file(tmp_path, "{method: full}"), ["train.objective=orpo"]).train
    assert (train.weights, train.objective) == ("full", "orpo")
