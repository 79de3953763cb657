"""Preference tuning: pair loaders and their bad inputs, DPO and ORPO on the tiny model, resume,
continuing an SFT adapter, the rendering TRL trains on, merge/export of a DPO adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import QA

from tunelab.config import DataConfig, DataSource, recipe_from_dict
from tunelab.data.loaders import load_examples, read_source
from tunelab.errors import ConfigError, DataError, TunelabError
from tunelab.io import read_jsonl


def sharegpt_pairs(n: int = 36) -> list[dict]:
    """LLaMA-Factory's form: `conversations` (the prompt), `chosen` and `rejected` turns; the rejected answer is another question's."""
    rows = []
    for i in range(n):
        q, a = QA[i % len(QA)]
        wrong = QA[(i + 5) % len(QA)][1]
        rows.append(
            {
                "conversations": [{"from": "human", "value": f"{q} (variant {i})"}],
                "chosen": {"from": "gpt", "value": a},
                "rejected": {"from": "gpt", "value": wrong},
            }
        )
    return rows


def write_pairs(path: Path, rows: list[dict] | None = None) -> Path:
    path.write_text(json.dumps(rows if rows is not None else sharegpt_pairs()))
    return path


# ---------------------------------------------------------------- loaders
def test_sharegpt_pairs_load_as_chosen_conversations_with_rejected(tmp_path):
    rows = sharegpt_pairs(2)
    rows[1]["conversations"] = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello."},
        {"from": "human", "value": "Name a colour."},
    ]
    examples, invalid, info = read_source(DataSource(path=str(write_pairs(tmp_path / "p.json", rows))))
    assert info["format"] == "preference" and not invalid
    first, second = examples
    assert first["messages"] == [
        {"role": "user", "content": rows[0]["conversations"][0]["value"]},
        {"role": "assistant", "content": QA[0][1]},
    ]
    assert first["rejected"] == {"role": "assistant", "content": QA[5][1]}
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user", "assistant"]


@pytest.mark.parametrize(
    "answers",
    [
        {"chosen": "Paris.", "rejected": "Rome."},  # strings
        {"chosen": [{"role": "assistant", "content": "Paris."}], "rejected": [{"role": "assistant", "content": "Rome."}]},  # TRL's lists
    ],
)
@pytest.mark.parametrize("prompt", ["Capital of France?", [{"role": "user", "content": "Capital of France?"}]])
def test_prompt_chosen_rejected_form(tmp_path, prompt, answers):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": prompt, **answers}) + "\n")
    (example,) = load_examples(path, strict=True)
    assert example["messages"] == [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]
    assert example["rejected"] == {"role": "assistant", "content": "Rome."}


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"rejected": {"from": "gpt", "value": " Red, green and BLUE. "}}, "rejected", "same text"),
        ({"chosen": {"from": "gpt", "value": "  "}}, "chosen.value", "empty answer"),
        ({"rejected": ""}, "rejected", "empty answer"),
        ({"chosen": {"from": "human", "value": "Blue."}}, "chosen.from", "not the assistant"),
        ({"rejected": [{"role": "user", "content": "Blue."}]}, "rejected[0].role", "not the assistant"),
        (
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
            "conversations[1].from",
            "must end with the user",
        ),
        ({"chosen": ["a", "b"]}, "chosen", "one answer turn"),
        ({"rejected": {"from": "gpt"}}, "rejected", "needs 'from' and 'value'"),
    ],
)
def test_bad_pairs_name_file_record_and_field(tmp_path, change, field, words):
    rows = sharegpt_pairs(3)
    rows[2].update(change)  # record 2: QA[2] answers "Red, green and blue."
    path = write_pairs(tmp_path / "prefs.json", rows)
    with pytest.raises(DataError) as err:
        load_examples(path, strict=True)
    message = str(err.value)
    assert "prefs.json" in message and "record 2" in message and f"field '{field}'" in message and words in message, message
    # not strict: the bad pair is dropped and counted, the others load
    assert len(load_examples(path)) == 2


def test_missing_rejected_with_explicit_format(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello"}) + "\n")
    with pytest.raises(DataError, match="field 'rejected'.*missing field"):
        load_examples(DataSource(path=str(path), format="preference"), strict=True)


def test_prepared_pairs_dedup_split_card_and_reload(tmp_path, tiny_model_dir):
    from tunelab.data.prepare import prepare_data

    rows = sharegpt_pairs(30)
    rows.append(json.loads(json.dumps(rows[3])))  # an exact copy of a pair: dropped
    other = json.loads(json.dumps(rows[4]))
    other["rejected"]["value"] = "Something else entirely."
    rows.append(other)  # the same prompt and chosen answer with another rejected answer: another pair, kept
    cfg = DataConfig(sources=[DataSource(path=str(write_pairs(tmp_path / "p.json", rows)))], dedup="exact", test_size=6, validation_size=2)
    card = prepare_data(cfg, tmp_path / "data", model_ref=str(tiny_model_dir), max_seq_length=256)
    assert card["counts"] == {"train": 23, "validation": 2, "test": 6}
    assert card["pairs"] == card["counts"] and card["drops"]["exact_duplicate"]["count"] == 1
    assert "Preference pairs" in (tmp_path / "data" / "card.md").read_text()
    test_rows = read_jsonl(tmp_path / "data" / "test.jsonl")
    assert all(set(r) == {"id", "messages", "rejected", "source"} for r in test_rows)
    again = load_examples(tmp_path / "data" / "test.jsonl", strict=True)  # the prepared split reads back as pairs
    assert [(e["id"], e["messages"], e["rejected"]) for e in again] == [(r["id"], r["messages"], r["rejected"]) for r in test_rows]


def test_length_limit_counts_the_longer_side(tmp_path, tiny_model_dir):
    from tunelab.data.prepare import prepare_data

    rows = sharegpt_pairs(12)
    rows[0]["rejected"]["value"] = "word " * 300  # only the rejected side is long
    cfg = DataConfig(sources=[DataSource(path=str(write_pairs(tmp_path / "p.json", rows)))], test_size=2, validation_size=0)
    card = prepare_data(cfg, tmp_path / "data", model_ref=str(tiny_model_dir), max_seq_length=128)
    assert card["drops"]["too_long"]["count"] == 1


# ---------------------------------------------------------------- training
def pair_recipe(tmp_path: Path, model_dir: Path, objective: str = "dpo", name: str = "pref", **train):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_pairs(tmp_path / "pairs.json")
    return recipe_from_dict(
        {
            "name": name,
            "output_dir": str(tmp_path / "runs"),
            "model": str(model_dir),
            "data": {"sources": [{"path": str(data)}], "dedup": "exact", "test_size": 6, "validation_size": 2},
            "train": {
                "objective": objective,
                "max_steps": 2,
                "batch_size": 2,
                "logging_steps": 1,
                "save_steps": 2,
                "eval_steps": 2,
                "max_seq_length": 128,
                "learning_rate": 5e-3,
                "threads": 1,
                "tensorboard": False,
                **train,
            },
        }
    )


@pytest.mark.parametrize("objective, logged", [("dpo", "rewards/margins"), ("orpo", "log_odds_ratio")])
def test_two_step_preference_run(tmp_path, tiny_model_dir, objective, logged):
    from tunelab.train.run import train_recipe

    run = train_recipe(pair_recipe(tmp_path, tiny_model_dir, objective))
    info = json.loads((run / "model" / "tunelab_model.json").read_text())
    assert (
        info["weights"] == "lora" and info["objective"] == objective and "method" not in info and info["base_model"] == str(tiny_model_dir)
    )
    assert (run / "model" / "adapter_model.safetensors").is_file() and not (run / "model" / "ref").exists()
    rows = read_jsonl(run / "train" / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert any(logged in r for r in rows) and any("eval_loss" in r for r in rows)
    assert all(r["tokens_per_second"] > 0 for r in rows if "loss" in r)  # the Trainer counted the pairs' tokens
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert summary["weights"] == "lora" and summary["objective"] == objective and summary["steps"] == 2 and summary["tokens_seen"] > 0
    assert summary["train_examples"] == 28 and summary["eval_loss"] is not None
    assert (
        summary["mfu"] is None and summary["model_flops_per_token"] is None and objective.upper() in summary["mfu_note"]
    )  # n/a, not a wrong figure
    assert (run / "train" / "loss.png").is_file()


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_model_dir) -> Path:
    """A finished two-step DPO run (LoRA) on the tiny model."""
    from tunelab.train.run import train_recipe

    return train_recipe(pair_recipe(tmp_path_factory.mktemp("dpo"), tiny_model_dir, "dpo", max_steps=3))


def built_trainer(recipe):
    """The preference trainer train_recipe would build for `recipe` (its data prepared first)."""
    from tunelab.models.load import load_tokenizer
    from tunelab.runs import RunDir
    from tunelab.train.distributed import process_state
    from tunelab.train.run import build_preference_trainer, prepare_run

    run, state = RunDir(recipe.run_dir()), process_state()
    prepare_run(recipe, run, False, state)
    tokenizer = load_tokenizer(recipe.model)
    return build_preference_trainer(recipe, run, Path(recipe.model), tokenizer, state), tokenizer


@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_trainers_see_tunelabs_rendering(tmp_path, tiny_model_dir, objective):
    """The tokens TRL trains on are the prompt as generation renders it and each answer as the template renders the turn."""
    from tunelab.evaluate.likelihood import answer_pair
    from tunelab.models.hf_chat import HFChatModel

    trainer, tok = built_trainer(pair_recipe(tmp_path, tiny_model_dir, objective))
    chat = HFChatModel(trainer.model, tok, "policy")
    pairs = read_jsonl(tmp_path / "runs" / "pref" / "data" / "train.jsonl")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    for i, pair in enumerate(pairs[:3]):
        prompt = pair["messages"][:-1]
        for side, answer in (("chosen", pair["messages"][-1]["content"]), ("rejected", pair["rejected"]["content"])):
            prompt_ids, answer_ids = answer_pair(tok, prompt, answer)
            assert prompt_ids == chat.prompt_tokens(prompt)
            row = trainer.train_dataset[i]
            if objective == "dpo":
                assert row["prompt_ids"] == prompt_ids and row[f"{side}_ids"] == answer_ids
                width = len(prompt_ids) + len(answer_ids)
                k = i if side == "chosen" else 3 + i  # the collator stacks every chosen, then every rejected sequence
                assert batch["input_ids"][k, :width].tolist() == prompt_ids + answer_ids
                assert batch["completion_mask"][k, :width].tolist() == [0] * len(prompt_ids) + [1] * len(answer_ids)
            else:  # ORPO: the answer ends at its end-of-sequence token (the newline after it is not trained)
                cut = answer_ids[: answer_ids.index(tok.eos_token_id) + 1]
                assert row[f"{side}_input_ids"] == prompt_ids + cut
                assert row[f"{side}_labels"] == [-100] * len(prompt_ids) + cut
    if objective == "orpo":  # the Trainer counts both sides' real tokens
        assert int(batch["attention_mask"].sum()) == sum(
            len(trainer.train_dataset[i][f"{s}_input_ids"]) for i in range(3) for s in ("chosen", "rejected")
        )


def test_dpo_resume_matches_uninterrupted(tmp_path, tiny_model_dir, monkeypatch):
    """A DPO run killed after its step-2 checkpoint and resumed ends with the same losses as one never stopped."""
    from transformers import TrainerCallback

    import tunelab.train.run as train_run

    full = train_run.train_recipe(pair_recipe(tmp_path / "a", tiny_model_dir, max_steps=4, save_steps=2, eval_steps=4))
    full_losses = {r["step"]: r["loss"] for r in read_jsonl(full / "train" / "metrics.jsonl") if "loss" in r}

    class Killed(Exception):
        pass

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise Killed()

    recipe = pair_recipe(tmp_path / "b", tiny_model_dir, max_steps=4, save_steps=2, eval_steps=4)
    callbacks = train_run.training_callbacks
    with monkeypatch.context() as patch:
        patch.setattr(train_run, "training_callbacks", lambda *a, **kw: [*callbacks(*a, **kw), KillAfterSave()])
        with pytest.raises(Killed):
            train_run.train_recipe(recipe)
    with pytest.raises(TunelabError, match="--resume"):
        train_run.train_recipe(recipe)
    resumed = train_run.train_recipe(recipe, resume=True)
    losses = {r["step"]: r["loss"] for r in read_jsonl(resumed / "train" / "metrics.jsonl") if "loss" in r}
    assert losses[3] == pytest.approx(full_losses[3], rel=1e-4) and losses[4] == pytest.approx(full_losses[4], rel=1e-4)
    assert json.loads((resumed / "train" / "summary.json").read_text())["resumed_from"].endswith("checkpoint-2")


def test_dpo_continues_an_sft_adapter_against_it(tmp_path, tiny_model_dir):
    """DPO from an SFT run: the SFT adapter is trained further and, frozen, is the reference (rewards start at 0)."""
    from tunelab.train.run import train_recipe

    sft = train_recipe(pair_recipe(tmp_path / "sft", tiny_model_dir, "sft", name="sft", lora={"r": 4, "alpha": 8}))
    assert json.loads((sft / "model" / "tunelab_model.json").read_text())["objective"] == "sft"
    dpo = train_recipe(pair_recipe(tmp_path / "dpo", tiny_model_dir, "dpo", preference={"start_from": str(sft)}))
    first = next(r for r in read_jsonl(dpo / "train" / "metrics.jsonl") if "loss" in r)
    # step 1 is scored before any update: policy == reference (the SFT adapter, not the base), so every reward is 0
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0 and first["loss"] == pytest.approx(0.6931, abs=1e-3)
    adapter = json.loads((dpo / "model" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and not (dpo / "model" / "ref").exists()  # the SFT adapter's shape; the frozen copy is not saved
    assert json.loads((dpo / "model" / "tunelab_model.json").read_text())["base_model"] == str(tiny_model_dir)


def test_preference_recipes_refused_early(tmp_path, tiny_model_dir, monkeypatch):
    from tunelab.train.run import train_recipe

    sft_data = tmp_path / "sft.json"
    sft_data.write_text(json.dumps([{"instruction": q, "output": a} for q, a in QA * 3]))
    recipe = pair_recipe(tmp_path / "a", tiny_model_dir)
    recipe.data.sources = [DataSource(path=str(sft_data))]
    with pytest.raises(DataError, match="field 'rejected'.*preference pairs"):
        train_recipe(recipe)
    with pytest.raises(ConfigError, match="not a tunelab run"):
        train_recipe(pair_recipe(tmp_path / "b", tiny_model_dir, preference={"start_from": str(tmp_path)}))
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "trl" else object())
    with pytest.raises(TunelabError, match=r"pip install 'tunelab\[preference\]'"):
        train_recipe(pair_recipe(tmp_path / "c", tiny_model_dir, "orpo"))


def test_merge_and_export_a_dpo_adapter(dpo_run):
    from tunelab.config import ExportConfig
    from tunelab.export.run import export_run

    report = export_run(dpo_run, ["merged"], config=ExportConfig(check_prompts=2, check_tokens=6, evaluate=False))
    merged = dpo_run / "export" / "merged"
    assert (merged / "model.safetensors").is_file() and report["formats"]["merged"]["passed"]
    assert report["formats"]["merged"]["agreement"] == 1.0


# ---------------------------------------------------------------- evaluation
def test_preference_accuracy_base_against_tuned(dpo_run, tiny_model_dir, tmp_path):
    from tunelab.evaluate.likelihood import answer_pair
    from tunelab.evaluate.preference import evaluate_preferences
    from tunelab.models.chat import load_chat_model

    examples = read_jsonl(dpo_run / "data" / "test.jsonl")
    out = tmp_path / "pref"
    result = evaluate_preferences(
        [str(tiny_model_dir), str(tiny_model_dir), str(dpo_run)],
        ["base", "again", "tuned"],
        examples,
        out,
        source="test",
        beta=0.5,
        bootstrap_samples=200,
    )
    assert result["n_examples"] == 6 and list(result["models"]) == ["base", "again", "tuned"]
    # the same model against itself: no difference, no reward
    same = result["differences"]["again"]["preference_accuracy"]
    assert same["diff"] == 0.0 and same["p_value"] == 1.0
    assert result["rewards"]["again"]["reward_margin"]["mean"] == 0.0
    # per pair, the accuracy is whether the chosen answer is the more likely, as the model's own loglikelihood says
    rows = read_jsonl(out / "pairs.jsonl")
    chat = load_chat_model(dpo_run)
    for example, row in zip(examples, rows):
        prompt = example["messages"][:-1]
        (c, _), (r, _) = chat.loglikelihood(
            [
                answer_pair(chat.tokenizer, prompt, example["messages"][-1]["content"]),
                answer_pair(chat.tokenizer, prompt, example["rejected"]["content"]),
            ]
        )
        assert row["loglikelihood"]["tuned"]["chosen"][0] == pytest.approx(c, abs=1e-3)
        assert row["scores"]["tuned"]["preference_accuracy"] == (1.0 if c > r else 0.0)
        base = row["loglikelihood"]["base"]
        expected = 0.5 * ((c - base["chosen"][0]) - (r - base["rejected"][0]))
        assert row["scores"]["tuned"]["logp_margin"] == pytest.approx(c - r, abs=1e-3)
        assert expected == pytest.approx(0.5 * (row["scores"]["tuned"]["logp_margin"] - row["scores"]["base"]["logp_margin"]), abs=1e-3)
    tuned = result["models"]["tuned"]["metrics"]["preference_accuracy"]
    assert tuned["mean"] == pytest.approx(sum(r["scores"]["tuned"]["preference_accuracy"] for r in rows) / 6)
    assert tuned["low"] <= tuned["mean"] <= tuned["high"]
    summary = (out / "summary.md").read_text()
    assert "preference accuracy" in summary and "reward margin" in summary and "Δ tuned − base" in summary


def test_run_pipeline_on_pairs_reports_preference_accuracy(tmp_path, tiny_model_dir, capsys):
    import yaml

    from tunelab.pipeline import run_pipeline

    recipe = {
        "name": "pairs",
        "output_dir": str(tmp_path / "runs"),
        "model": str(tiny_model_dir),
        "data": {"sources": [{"path": str(write_pairs(tmp_path / "pairs.json"))}], "dedup": "exact", "test_size": 6, "validation_size": 0},
        "train": {
            "objective": "dpo",
            "max_steps": 2,
            "batch_size": 2,
            "logging_steps": 1,
            "max_seq_length": 128,
            "threads": 1,
            "tensorboard": False,
        },
        "eval": {"max_examples": 4, "max_new_tokens": 4, "metrics": ["bleu", "rougeL"], "bootstrap_samples": 200, "general_ability": None},
        "export": {"formats": []},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = run_pipeline(path)
    assert "3a. preferences" in capsys.readouterr().err
    assert json.loads((run / "eval" / "preference" / "preference.json").read_text())["n_examples"] == 6
    assert json.loads((run / "state.json").read_text())["preference"]["n_pairs"] == 6
    report = (run / "report.md").read_text()
    assert "## Preference accuracy on held-out pairs" in report and "- **preference accuracy**: tuned" in report
    assert "Δ tuned − base" in report.split("## Preference accuracy on held-out pairs")[1]


# ---------------------------------------------------------------- the real data, the stand-in, the examples
def test_real_pairs_load_whole(shared_data):
    examples, invalid, info = read_source(DataSource(path=str(shared_data / "dpo_en_demo.json")))
    assert info["format"] == "preference" and len(examples) == 300 and not invalid
    assert all(e["messages"][-1]["role"] == "assistant" and e["rejected"]["role"] == "assistant" for e in examples)


def test_stand_in_pairs_and_example_recipes(tmp_path, monkeypatch):
    from tunelab.compare.spec import load_sweep
    from tunelab.config import load_recipe

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("data:\n  sources:\n    - {path: ../nowhere/dpo_en_demo.json}\ntrain: {objective: dpo}\n")
    stand_in = load_examples(load_recipe(recipe_file).data.sources[0], strict=True)
    assert len(stand_in) >= 30 and len({e["messages"][0]["content"] for e in stand_in}) == len(stand_in)  # every prompt once
    examples = Path(__file__).resolve().parent.parent / "examples"
    assert load_recipe(examples / "dpo.yaml").train.objective == "dpo"
    sweep = load_sweep(examples / "sweep-preference.yaml")
    axes = {v.name: (v.recipe.train.weights, v.recipe.train.objective) for v in sweep.variants}
    assert axes == {"objective=sft": ("lora", "sft"), "objective=dpo": ("lora", "dpo"), "objective=orpo": ("lora", "orpo")}
    assert sweep.baseline.name == "objective=dpo"


def test_objective_sweep_stores_preference_accuracy(tmp_path, tiny_model_dir):
    """`objective: [sft, dpo, orpo]` over the same pairs: every variant's held-out preference accuracy is in the store and the report."""
    import yaml

    from tunelab.compare.report import compare_cli
    from tunelab.compare.store import ResultsStore, store_path
    from tunelab.compare.sweep import sweep_cli

    base = {
        "model": str(tiny_model_dir),
        "data": {"sources": [{"path": str(write_pairs(tmp_path / "pairs.json"))}], "dedup": "exact", "validation_fraction": 0},
        "train": {"max_steps": 1, "batch_size": 2, "max_seq_length": 96, "logging_steps": 1, "tensorboard": False, "threads": 1},
        "eval": {"max_new_tokens": 4, "metrics": ["rougeL"], "bootstrap_samples": 100, "general_ability": None},
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    spec = {"name": "methods", "base": "base.yaml", "output_dir": str(tmp_path / "sweeps"), "heldout": {"from_source": 0, "size": 6}}
    spec["grid"] = {"objective": ["sft", "dpo", "orpo"]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    assert sweep_cli(tmp_path / "sweep.yaml") == {"done": 4, "skipped": 0, "failed": []}  # the base model + 3 variants
    folder = tmp_path / "sweeps" / "methods"
    with ResultsStore(store_path(folder)) as store:
        for run in store.runs():
            assert {"preference_accuracy", "logp_margin", "rougeL"} <= set(store.metrics(run["id"])), run["variant"]
            assert len(store.scores(run["id"])["preference_accuracy"]) == 6
    compare_cli(tmp_path / "sweep.yaml")
    report = (folder / "report" / "report.md").read_text()
    assert "preference accuracy" in report and "objective=orpo" in report


@pytest.mark.parametrize("weights", ["full", "qlora"])
def test_dpo_on_every_weight_and_on_qlora(tmp_path, tiny_model_dir, weights):
    """DPO with `weights: full` trains against a frozen copy of the base; `qlora` an adapter on a 4-bit base."""
    if weights == "qlora":
        pytest.importorskip("bitsandbytes")
    from tunelab.train.run import train_recipe

    run = train_recipe(pair_recipe(tmp_path, tiny_model_dir, "dpo", max_steps=1, weights=weights))
    info = json.loads((run / "model" / "tunelab_model.json").read_text())
    assert info["weights"] == weights and info["objective"] == "dpo"
    assert (run / "model" / ("model.safetensors" if weights == "full" else "adapter_model.safetensors")).is_file()
    first = next(r for r in read_jsonl(run / "train" / "metrics.jsonl") if "loss" in r)
    assert first["loss"] == pytest.approx(0.6931, abs=2e-3)  # policy == reference before the first update


def test_tunelab_eval_adds_preference_accuracy(dpo_run):
    from tunelab.config import EvalConfig
    from tunelab.evaluate.run import evaluate_cli

    evaluate_cli([str(dpo_run)], config=EvalConfig(max_examples=3, max_new_tokens=4, metrics=["rougeL"], general_ability=None))
    result = json.loads((dpo_run / "eval" / "preference" / "preference.json").read_text())
    generation = json.loads((dpo_run / "eval" / "eval.json").read_text())
    assert list(result["models"]) == list(generation["models"]) and len(result["models"]) == 2  # base first, named alike
    assert result["n_examples"] == 6 and result["models"][list(result["models"])[1]]["ref"] == str(dpo_run)
