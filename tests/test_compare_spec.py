"""Sweep files: grid and list expansion, axis checks, identical-variant refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tunelab.compare.spec import canonical_axis, load_sweep, recipe_changes
from tunelab.errors import ConfigError


def write_data(folder: Path, n: int = 40, name: str = "d.json", offset: int = 0) -> Path:
    rows = [
        {"instruction": f"Question number {i + offset}: what is {i + offset} plus one?", "input": "", "output": f"It is {i + offset + 1}."}
        for i in range(n)
    ]
    path = folder / name
    path.write_text(json.dumps(rows))
    return path


def write_sweep(folder: Path, body: dict, recipe: dict | None = None) -> Path:
    data = write_data(folder)
    base = recipe or {"data": {"sources": [{"path": str(data)}]}, "train": {"max_steps": 2}}
    (folder / "base.yaml").write_text(yaml.safe_dump(base))
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": "base.yaml", "output_dir": str(folder / "out"), **body}, sort_keys=False))
    return path


def test_grid_expands_to_every_combination(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, {"grid": {"lr": [1e-4, 3e-4], "rank": [4, 8], "clean": [True, False]}}))
    assert len(sweep.variants) == 8
    assert sweep.baseline is sweep.variants[0]
    first = sweep.variants[0]
    assert first.settings == {"train.learning_rate": 1e-4, "train.lora.r": 4, "data.clean": True}
    assert first.recipe.train.learning_rate == 1e-4 and first.recipe.train.lora.r == 4
    last = sweep.variants[-1]
    assert last.recipe.train.lora.r == 8 and last.recipe.data.clean is False
    assert last.kinds == {"model", "data"}
    assert sweep.variants[1].kinds == {"data"}  # only clean differs from the first combination
    assert sweep.variants[2].kinds == {"model"}  # only rank differs
    assert len({v.name for v in sweep.variants}) == 8


def test_listed_variants_baseline_seeds_and_aliases(tmp_path):
    sweep = load_sweep(
        write_sweep(
            tmp_path,
            {
                "set": {"steps": 3},
                "variants": [
                    {"name": "rank-32", "set": {"train.lora.r": 32}},
                    {"name": "base"},
                    {"name": "dedup-0.7", "set": {"near_dup_threshold": 0.7}},
                ],
                "baseline": "base",
                "seeds": [1, 2],
            },
        )
    )
    assert [v.name for v in sweep.variants] == ["rank-32", "base", "dedup-0.7"]
    assert sweep.baseline.name == "base" and sweep.seeds == [1, 2]
    assert all(v.recipe.train.max_steps == 3 for v in sweep.variants)  # `set:` applies to every variant
    assert sweep.variants[0].kinds == {"model"} and sweep.variants[2].kinds == {"data"}
    assert recipe_changes(sweep.baseline.recipe, sweep.variants[0].recipe) == {"train.lora.r": (16, 32)}
    assert canonical_axis("mix.1") == "data.sources.1.weight"


def test_mixing_axis_on_a_second_source(tmp_path):
    data2 = write_data(tmp_path, 10, "extra.json", offset=100)
    recipe = {"data": {"sources": [{"path": str(write_data(tmp_path))}, {"path": str(data2), "weight": 0.5}]}}
    sweep = load_sweep(write_sweep(tmp_path, {"variants": [{"name": "half"}, {"name": "full-mix", "set": {"mix.1": 1.0}}]}, recipe))
    assert sweep.variants[1].recipe.data.sources[1].weight == 1.0
    assert sweep.variants[1].kinds == {"data"}


def test_replay_share_and_interpolation_axes_and_the_task_metric(tmp_path):
    general = write_data(tmp_path, 10, "general.json", offset=100)
    recipe = {
        "data": {"sources": [{"path": str(write_data(tmp_path))}, {"path": str(general), "share": 0}]},
        "eval": {"metrics": ["bleu", "chrf"]},
    }
    body = {
        "variants": [{"name": "no-replay"}, {"name": "replay-20", "set": {"share.1": 0.2}}, {"name": "half", "set": {"interpolation": 0.5}}]
    }
    sweep = load_sweep(write_sweep(tmp_path, body, recipe))
    replay, half = sweep.variants[1], sweep.variants[2]
    assert canonical_axis("share.1") == "data.sources.1.share" and replay.recipe.data.sources[1].share == 0.2
    assert replay.kinds == {"data"} and half.kinds == {"model"} and half.recipe.train.interpolation == 0.5
    assert recipe_changes(sweep.variants[0].recipe, replay.recipe) == {"data.sources.1.share": (0, 0.2)}
    plain = load_sweep(write_sweep(tmp_path, {"variants": [{"name": "a"}]}, {"data": {"sources": recipe["data"]["sources"][:1]}}))
    replayed = sweep.variants[1].recipe
    assert recipe_changes(plain.baseline.recipe, replayed)["data.sources"][1].endswith("general.json (share 0.2)")
    assert sweep.task_metric == "bleu"  # the first metric, without a task or `task_metric:`
    assert load_sweep(write_sweep(tmp_path, {**body, "task_metric": "chrf"}, recipe)).task_metric == "chrf"
    with pytest.raises(ConfigError, match="task_metric 'chrF' is no metric tunelab scores"):
        load_sweep(write_sweep(tmp_path, {**body, "task_metric": "chrF"}, recipe))
    with pytest.raises(ConfigError, match=r"(?s)variant 'too-much'.*data.sources.1.share: Input should be less than 1"):
        load_sweep(write_sweep(tmp_path, {"variants": [{"name": "a"}, {"name": "too-much", "set": {"share.1": 1.5}}]}, recipe))
    with pytest.raises(ConfigError, match=r"(?s)variant 'alpha-2'.*train.interpolation: Input should be less than or equal to 1"):
        load_sweep(write_sweep(tmp_path, {"variants": [{"name": "a"}, {"name": "alpha-2", "set": {"interpolation": 2}}]}, recipe))


@pytest.mark.parametrize(
    "axis, message",
    [
        ("train.lora.rank", "the recipe has no 'train.lora.rank'"),
        ("trian.learning_rate", "the recipe has no 'trian'"),
        ("data.sources.3.weight", "has 1 entries, so index 3 does not exist"),
        ("data.sources.weight", "is a list; use an index"),
        ("train.learning_rate.x", "is a value, not a section"),
        ("eval.max_new_tokens", "evaluation settings are fixed"),
    ],
)
def test_unknown_axis_is_refused(tmp_path, axis, message):
    path = write_sweep(tmp_path, {"grid": {axis: [1, 2]}})
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_sweep(path)


def test_bad_value_names_the_variant(tmp_path):
    path = write_sweep(tmp_path, {"variants": [{"name": "ok"}, {"name": "bad-method", "set": {"method": "magic"}}]})
    with pytest.raises(ConfigError, match="variant 'bad-method'"):
        load_sweep(path)


def test_identical_variants_are_refused(tmp_path):
    # rank 16 is the default, so "explicit-16" is the base recipe once defaults are filled in.
    path = write_sweep(tmp_path, {"variants": [{"name": "base"}, {"name": "explicit-16", "set": {"rank": 16}}]})
    with pytest.raises(ConfigError, match="'base' and 'explicit-16' are identical"):
        load_sweep(path)


def test_sweep_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no variants"):
        load_sweep(write_sweep(tmp_path, {}))
    with pytest.raises(ConfigError, match="baseline 'nope' is not one of the variants"):
        load_sweep(write_sweep(tmp_path, {"variants": [{"name": "a"}], "baseline": "nope"}))
    with pytest.raises(ConfigError, match="invalid sweep file"):
        load_sweep(write_sweep(tmp_path, {"variants": [{"name": "a"}], "grdi": {}}))
    (tmp_path / "nobase.yaml").write_text(yaml.safe_dump({"base": "missing.yaml", "variants": [{"name": "a"}]}))
    with pytest.raises(ConfigError, match="base recipe 'missing.yaml' not found"):
        load_sweep(tmp_path / "nobase.yaml")


def test_the_forgetting_sweep_chooses_on_validation_data():
    """examples/sweep-translate-forgetting.yaml: Tatoeba pairs and an ARC sample disjoint from the reported one,
    replay at two shares, a smaller adapter, two interpolations that reuse the baseline's training."""
    from tunelab.compare.sweep import training_key

    sweep = load_sweep(Path(__file__).resolve().parent.parent / "examples" / "sweep-translate-forgetting.yaml")
    by_name = {v.name: v.recipe for v in sweep.variants}
    assert sweep.spec.heldout.path is None and sweep.spec.heldout.from_source == 0  # the task: Tatoeba pairs, not FLORES
    general = sweep.baseline.recipe.eval.general_ability
    assert general.benchmark == "arc-easy" and general.disjoint_from.model_dump() == {"max_questions": 300, "seed": 0}
    assert sweep.task_metric == "chrf" and by_name["baseline"].model == "gemma3-270m"
    assert [by_name[n].data.sources[1].share for n in ("baseline", "replay-10", "replay-20")] == [0, 0.1, 0.2]
    assert by_name["small-adapter"].train.lora.r == 4 and by_name["small-adapter"].train.lora.target_modules == "attention"
    keys = {n: training_key(r) for n, r in by_name.items()}
    assert keys["interp-0.5"] == keys["interp-0.75"] == keys["baseline"] and len(set(keys.values())) == 4


def test_config_id_ignores_how_a_run_goes_but_not_what_it_computes(tmp_path):
    """A new default for train.compile or threads must not re-run a sweep's finished variants."""
    from tunelab.compare.spec import config_id
    from tunelab.config import HOW_NOT_WHAT_TRAIN_FIELDS, recipe_from_dict

    def recipe(**train):
        return recipe_from_dict({"name": "r", "model": "smollm2-135m-instruct", "data": {"sources": [{"path": "x.jsonl"}]}, "train": train})

    plain = config_id(recipe())
    assert {"compile", "threads"} <= HOW_NOT_WHAT_TRAIN_FIELDS
    assert config_id(recipe(compile=True, threads=1, logging_steps=1, tensorboard=False)) == plain
    assert config_id(recipe(learning_rate=1e-4)) != plain


def test_a_code_setting_added_later_is_hashed_only_where_the_recipe_scores_code():
    """chat_answer's new default (code_block) changes what a code recipe measures, and nothing elsewhere."""
    from tunelab.compare.spec import config_id
    from tunelab.config import recipe_from_dict

    def recipe(chat_answer):
        evaluation = {"task": "code", "code": {"chat_answer": chat_answer, "allow_execution": True}}
        return recipe_from_dict(
            {"name": "r", "model": "smollm2-135m-instruct", "data": {"sources": [{"path": "x.jsonl"}]}, "eval": evaluation}
        )

    # a code run's programs differ; the ids stored below (recipes that score no code) hold with the new default
    assert config_id(recipe("code_block")) != config_id(recipe("body"))


# Config ids computed at commit d9a77a7, before the two axes of training had a field each, for the recipe
# {data: {sources: [{path: pairs.json}]}, train: TRAIN}. A sweep's store keys its runs by these ids: a recipe
# must keep its id in either spelling, or every stored run of a sweep would train again. (A new recipe field
# changes every id, on purpose: recompute these then, and say so where the change is described.)
@pytest.mark.parametrize(
    "old, new, stored_id",
    [
        ({}, {"weights": "lora", "objective": "sft"}, "182a2de4e8126d10"),
        ({"method": "full"}, {"weights": "full"}, "f8490f24f8b918b8"),
        ({"method": "qlora"}, {"weights": "qlora"}, "c452ed07acfb2889"),
        ({"method": "dpo"}, {"objective": "dpo"}, "bb82e413dd3f3402"),
        ({"method": "orpo", "preference": {"weights": "full"}}, {"objective": "orpo", "weights": "full"}, "555dddf8736651ff"),
        (
            {"method": "dpo", "preference": {"weights": "qlora", "beta": 0.2}},
            {"objective": "dpo", "weights": "qlora", "preference": {"beta": 0.2}},
            "af4ce512dbf8a2cf",
        ),
    ],
)
def test_a_recipe_keeps_its_stored_config_id_in_either_spelling(old, new, stored_id):
    from tunelab.compare.spec import config_id
    from tunelab.config import recipe_from_dict

    for train in (old, new):
        assert config_id(recipe_from_dict({"data": {"sources": [{"path": "pairs.json"}]}, "train": train})) == stored_id


def test_an_old_method_axis_gives_the_variants_of_the_new_axes(tmp_path, capsys):
    """A sweep in the old spelling (`method` axis, `train.method` in its base) has the variants, names aside, and
    the config ids of the same sweep in the new spelling; the old axis is named once, not once per variant."""
    data = write_data(tmp_path)
    old_base = {"data": {"sources": [{"path": str(data)}]}, "train": {"method": "full", "max_steps": 2}}
    old = load_sweep(write_sweep(tmp_path, {"grid": {"method": ["sft", "full", "dpo"]}}, old_base))
    said = " ".join(capsys.readouterr().err.split())
    assert said.count("the axis 'method' is now two, `objective` (sft, dpo, orpo) and `weights` (lora, qlora, full)") == 1
    assert "train.method: full is now two fields, train.weights: full and train.objective: sft" in said  # the base recipe
    new_base = {"data": {"sources": [{"path": str(data)}]}, "train": {"weights": "full", "max_steps": 2}}
    new = load_sweep(
        write_sweep(
            tmp_path,
            {
                "variants": [
                    {"name": n, "set": s}
                    for n, s in [
                        ("sft", {"weights": "lora", "objective": "sft"}),
                        ("full", {"objective": "sft"}),
                        ("dpo", {"objective": "dpo"}),
                    ]
                ]
            },
            new_base,
        )
    )
    assert "deprecated" not in capsys.readouterr().err
    assert [v.name for v in old.variants] == ["method=sft", "method=full", "method=dpo"]
    assert [(v.recipe.train.weights, v.recipe.train.objective) for v in old.variants] == [("lora", "sft"), ("full", "sft"), ("full", "dpo")]
    assert [v.config_id for v in old.variants] == [v.config_id for v in new.variants]
    assert recipe_changes(old.variants[1].recipe, old.variants[2].recipe) == {"train.objective": ("sft", "dpo")}


def test_a_field_added_later_keeps_the_ids_runs_already_have_until_it_is_set():
    """eval.code.half came after code sweeps had stored runs: at its old behaviour ("all") it is not hashed, so
    adding it re-ran no variant and no untuned reference; set to another value, it is another run."""
    from tunelab.compare.spec import config_id, without_added_later
    from tunelab.config import recipe_from_dict

    def recipe(**code):
        code = {"allow_execution": True, **code}
        return recipe_from_dict({"data": {"sources": [{"path": "pairs.json"}]}, "eval": {"task": "code", "code": code}})

    assert config_id(recipe(half="all")) == config_id(recipe()) != config_id(recipe(half="dev"))
    eval_settings = recipe().eval.model_dump(mode="json")
    assert "half" not in without_added_later(eval_settings, ("eval",))["code"]
    assert without_added_later(recipe(half="dev").eval.model_dump(mode="json"), ("eval",))["code"]["half"] == "dev"
    assert without_added_later({"task": "none", "code": None}, ("eval",)) == {"task": "none", "code": None}
