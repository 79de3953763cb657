"""A real sweep with the tiny model: held-out fixing, overlap refusal, store skip and resume, report."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from bench.tiny import write_sweep
from tunelab.compare import sweep as sweep_stage
from tunelab.compare.report import compare_cli
from tunelab.compare.store import store_path
from tunelab.compare.sweep import sweep_cli
from tunelab.errors import ConfigError, DataError, TunelabError
from tunelab.evaluate.code import leakage_checks
from tunelab.io import read_jsonl


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("sweep")
    path = write_sweep(folder, tiny_model_dir)
    result = sweep_cli(path)
    return folder, path, result


def test_sweep_runs_every_variant_on_the_same_heldout_set(finished_sweep):
    folder, path, result = finished_sweep
    assert result == {"done": 5, "skipped": 0, "failed": []}  # the base model reference + 4 variants
    sweep_dir = folder / "sweeps" / "tiny"
    heldout = read_jsonl(sweep_dir / "heldout" / "test.jsonl")
    remainder = read_jsonl(sweep_dir / "heldout" / "train-source.jsonl")
    assert len(heldout) == 6 and len(remainder) == 24
    held_ids = {e["id"] for e in heldout}
    assert not held_ids & {e["id"] for e in remainder}
    db = sqlite3.connect(store_path(sweep_dir))
    runs = db.execute("SELECT variant, kind, status, run_dir, data_hash, train_seconds FROM runs ORDER BY rowid").fetchall()
    assert [r[:3] for r in runs][1:] == [
        ("baseline", "variant", "done"),
        ("rank-4", "variant", "done"),
        ("no-clean", "variant", "done"),
        ("interp-half", "variant", "done"),
    ]
    assert runs[0][1] == "reference" and runs[0][2] == "done"
    for _variant, _kind, _status, run_dir, data_hash, train_seconds in runs[1:]:
        run_dir = Path(run_dir)
        card = json.loads((run_dir / "data" / "card.json").read_text())  # each variant has its own data card and hash
        assert data_hash and card["counts"]["test"] == 6 and train_seconds is not None
        trained_on = {e["id"] for e in read_jsonl(run_dir / "data" / "train.jsonl")}
        assert not trained_on & held_ids
    # Every run has a score for every held-out example, so comparisons are paired.
    per_run = db.execute("SELECT run_id, COUNT(DISTINCT example_id) FROM scores WHERE metric='rougeL' GROUP BY run_id").fetchall()
    assert len(per_run) == 5 and {n for _, n in per_run} == {6}
    assert {r[0] for r in db.execute("SELECT DISTINCT example_id FROM scores WHERE metric='rougeL'")} == held_ids
    # ... and for every question of the general-ability sample, the same 8 for every row, the untuned base included
    per_run = db.execute("SELECT run_id, COUNT(*) FROM scores WHERE metric='questions.acc' GROUP BY run_id").fetchall()
    assert len(per_run) == 5 and {n for _, n in per_run} == {8}
    assert len({r[0] for r in db.execute("SELECT DISTINCT example_id FROM scores WHERE metric='questions.acc'")}) == 8
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    assert meta["task_metric"] == "bleu" and meta["general_metric"] == "questions.acc"


def test_interpolation_variant_reuses_its_twins_training(finished_sweep):
    folder, _, _ = finished_sweep
    db = sqlite3.connect(store_path(folder / "sweeps" / "tiny"))
    dirs = dict(db.execute("SELECT variant, run_dir FROM runs WHERE kind='variant'").fetchall())
    baseline, half = Path(dirs["baseline"]), Path(dirs["interp-half"])
    summary = json.loads((half / "train" / "summary.json").read_text())
    assert summary["training_of"] == str(baseline) and summary["run"] == half.name  # not trained again
    assert not (half / "train" / "checkpoints").exists()
    info = json.loads((half / "model" / "tunelab_model.json").read_text())
    assert info["interpolation"] == 0.5 and json.loads((baseline / "model" / "tunelab_model.json").read_text())["interpolation"] == 1.0
    assert (half / "model" / "adapter_model.safetensors").read_bytes() == (baseline / "model" / "adapter_model.safetensors").read_bytes()
    assert yaml.safe_load((half / "recipe.yaml").read_text())["train"]["interpolation"] == 0.5


def test_second_run_does_no_work_and_compare_reports(finished_sweep, monkeypatch):
    folder, path, _ = finished_sweep

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished sweep must not train or evaluate again")

    monkeypatch.setattr(sweep_stage, "train_recipe", forbidden)
    monkeypatch.setattr(sweep_stage, "evaluate_models", forbidden)
    assert sweep_cli(path) == {"done": 0, "skipped": 5, "failed": []}

    result = compare_cli(path)
    out = folder / "sweeps" / "tiny" / "report"
    md = (out / "report.md").read_text()
    assert "### Model-centric changes" in md and "### Data-centric changes" in md
    assert "LoRA rank 16→4" in md and "turning off data cleaning" in md.lower()
    assert "(95% CI" in md and ("p=" in md or "p<" in md)
    assert (out / "plots" / "rougeL.png").is_file() and (out / "report.html").is_file()
    assert {r.name for r in result["rows"]} >= {"baseline", "rank-4", "no-clean", "interp-half"}
    # gain against cost: every variant's BLEU and general ability against the untuned base, a sentence and a plot
    cost = result["gain_against_cost"]
    assert {cells[0] for cells in cost["body"]} == {"baseline", "rank-4", "no-clean", "interp-half"}
    assert "## Gain against cost" in md and (out / "plots" / "gain_vs_cost.png").is_file() and (out / "tradeoff.csv").is_file()
    assert cost["sentence"].startswith(("The best task gain that keeps general ability", "No variant keeps general ability"))


def test_half_finished_variant_resumes_from_its_checkpoint(finished_sweep, monkeypatch):
    folder, path, _ = finished_sweep
    sweep_dir = folder / "sweeps" / "tiny"
    db = sqlite3.connect(store_path(sweep_dir))
    run_id, run_dir = db.execute("SELECT id, run_dir FROM runs WHERE variant='rank-4'").fetchone()
    # Simulate a crash after the first checkpoint: no final model, no summary, status not done.
    run_dir = Path(run_dir)
    shutil.rmtree(run_dir / "model")
    (run_dir / "train" / "summary.json").unlink()
    shutil.rmtree(run_dir / "train" / "checkpoints" / "checkpoint-2")
    db.execute("UPDATE runs SET status='prepared' WHERE id=?", (run_id,))
    db.commit()

    calls = []
    real = sweep_stage.train_recipe

    def spy(recipe, resume=False):
        calls.append((recipe.name, resume))
        return real(recipe, resume=resume)

    monkeypatch.setattr(sweep_stage, "train_recipe", spy)
    assert sweep_cli(path) == {"done": 1, "skipped": 4, "failed": []}
    assert len(calls) == 1 and calls[0][0].startswith("rank-4") and calls[0][1] is True
    summary = json.loads((run_dir / "train" / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-1") and summary["steps"] == 2


def test_changed_heldout_settings_are_refused(finished_sweep):
    folder, path, _ = finished_sweep
    spec = yaml.safe_load(path.read_text())
    spec["heldout"]["size"] = 8
    changed = folder / "changed.yaml"
    changed.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="held-out set of sweep 'tiny' was fixed by an earlier run"):
        sweep_cli(changed)


def test_heldout_overlapping_training_data_is_refused(tmp_path, tiny_model_dir, monkeypatch):
    path = write_sweep(tmp_path, tiny_model_dir)
    # A separate held-out file that repeats three training examples (different ids, same content).
    rows = json.loads((tmp_path / "facts.json").read_text())[:3]
    (tmp_path / "leaky.json").write_text(json.dumps(rows))
    spec = yaml.safe_load(path.read_text())
    spec["heldout"] = {"path": "leaky.json"}
    path.write_text(yaml.safe_dump(spec))
    monkeypatch.setattr(sweep_stage, "train_recipe", lambda *a, **k: pytest.fail("must refuse before training"))
    with pytest.raises(DataError, match=r"variant 'baseline': 3 training example\(s\) are also in the held-out set"):
        sweep_cli(path)


def test_shard_selection_checks_its_input():
    runs = list(range(7))
    assert sweep_stage.select_shard(runs, None) == runs
    assert sweep_stage.select_shard(runs, "1/3") == [1, 4]
    for bad in ("3/3", "-1/3", "0/0", "a/b", "1", "1/2/3"):
        with pytest.raises(ConfigError, match="must look like INDEX/COUNT"):
            sweep_stage.select_shard(runs, bad)


def test_a_code_sweep_stores_pass_at_1_overall_and_on_each_declared_half(tmp_path, tiny_model_dir):
    # eval.task code: every run (the untuned reference too) runs its code on the problems; the
    # store keeps pass@1 per problem, overall and on the dev and test halves, beside the text metric
    path = write_sweep(tmp_path, tiny_model_dir, variants=[{"name": "baseline"}])
    spec = yaml.safe_load(path.read_text())
    spec["set"] = {
        "eval.task": "code",
        "eval.metrics": ["rougeL"],
        "eval.code": {"allow_execution": True, "max_problems": 4, "max_new_tokens": 8, "backend": "pytorch"},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert sweep_cli(path) == {"done": 2, "skipped": 0, "failed": []}
    db = sqlite3.connect(store_path(tmp_path / "sweeps" / "tiny"))
    counts = db.execute("SELECT run_id, metric, COUNT(*) FROM scores WHERE metric LIKE 'pass@1%' GROUP BY run_id, metric").fetchall()
    assert sorted((metric, n) for _, metric, n in counts) == sorted([("pass@1", 4), ("pass@1_dev", 2), ("pass@1_test", 2)] * 2)
    # each tuned run's training examples are checked for the problems, as `tunelab run` checks them
    runs = dict(db.execute("SELECT kind, run_dir FROM runs").fetchall())
    (leak,) = leakage_checks(
        json.loads((Path(runs["variant"]) / "eval" / "benchmarks" / "humaneval" / "benchmark.json").read_text())
    ).values()
    assert leak["source"].endswith("train.jsonl") and leak["problems_checked"] == 4 and leak["examples"] > 0
    assert not leakage_checks(json.loads((Path(runs["reference"]) / "eval" / "benchmarks" / "humaneval" / "benchmark.json").read_text()))
    md = (compare_cli(path) and tmp_path / "sweeps" / "tiny" / "report" / "report.md").read_text()
    assert "pass@1 (dev half)" in md and "pass@1 (test half)" in md
    # the verdicts rest on the reported half: the task metric is pass@1 on the test half, and the dev half is never a finding
    assert dict(db.execute("SELECT key, value FROM meta").fetchall())["task_metric"] == "pass@1_test"
    assert "Δ pass@1 (test half) vs untuned" in md
    for line in md.splitlines():
        if "pass@1 (dev half) by" in line:
            assert line.endswith("the half settings are chosen on, not a finding."), line


def test_a_variant_answering_from_its_gguf_is_exported_before_it_answers(tmp_path, tiny_model_dir, monkeypatch):
    # eval.generation_backend gguf without a `serving:` block: the held-out answers come from the variant's
    # Q8_0 GGUF, so it must exist before they are generated (it once failed every variant of such a sweep)
    path = write_sweep(tmp_path, tiny_model_dir, variants=[{"name": "baseline"}])
    spec = yaml.safe_load(path.read_text())
    spec["set"] = {"eval.generation_backend": "gguf"}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    events = []
    monkeypatch.setattr(sweep_stage, "base_model_gguf", lambda *a: events.append("base gguf") or tiny_model_dir)
    monkeypatch.setattr(sweep_stage, "export_run", lambda run_dir, formats, check: events.append(("export", formats, check)))

    def answering(models, *args, **kwargs):
        events.append("answer")
        raise RuntimeError("stop here")

    monkeypatch.setattr(sweep_stage, "evaluate_models", answering)
    with pytest.raises(TunelabError, match="2 run"):
        sweep_cli(path)
    assert events == ["base gguf", "answer", ("export", ["gguf-q8_0"], False), "answer"]
