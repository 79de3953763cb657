"""`tunelab run` end to end on the tiny model: every stage, the report, and resume."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import SHARED, write_alpaca


def test_run_pipeline_end_to_end_and_resume(tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("llama_cpp")
    from tunelab.pipeline import run_pipeline

    data = write_alpaca(tmp_path / "qa.json", n=40)
    recipe = {
        "name": "e2e",
        "output_dir": str(tmp_path / "runs"),
        "model": str(tiny_model_dir),
        "data": {"sources": [{"path": str(data)}], "dedup": "exact", "test_size": 6, "validation_size": 4},
        "train": {"max_steps": 4, "batch_size": 4, "logging_steps": 1, "max_seq_length": 128, "threads": 1, "tensorboard": False},
        "eval": {
            "max_examples": 6,
            "max_new_tokens": 8,
            "metrics": ["bleu", "rougeL"],
            "bootstrap_samples": 200,
            "general_ability": {"max_questions": 12, "batch_size": 8},
        },
        "export": {"formats": ["gguf-f16"], "check_prompts": 2, "check_tokens": 4, "evaluate": False},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = run_pipeline(path)
    # no preference pairs in the test split: no preference stage, and no heading for it either
    assert "3a. preferences" not in capsys.readouterr().err
    for rel in [
        "recipe.yaml",
        "environment.json",
        "data/train.jsonl",
        "data/test.jsonl",
        "data/card.json",
        "train/summary.json",
        "train/loss.png",
        "model/tunelab_model.json",
        "eval/eval.json",
        "eval/predictions.jsonl",
        "eval/metrics.png",
        "export/faithfulness.json",
        "report.md",
        "report.html",
    ]:
        assert (run / rel).is_file(), rel
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert list(ev["models"]) == ["base", "tuned"] and ev["n_examples"] == 6
    report = (run / "report.md").read_text()
    for section in ["## Data", "## Training", "## Base model against tuned model", "## Exports", "## Serve it", "gguf-f16"]:
        assert section in report
    # the forgetting check: ARC-Easy, base against tuned, with a verdict in the summary
    if SHARED is not None:
        arc = json.loads((run / "eval" / "benchmarks" / "arc-easy" / "benchmark.json").read_text())
        assert list(arc["models"]) == ["base", "tuned"] and arc["questions"] == 12 and arc["of"] == 2376
        assert arc["differences"]["tuned"]["acc_norm"].keys() >= {"diff", "low", "high", "p_value"}
        assert "## General ability (forgetting check)" in report and "- General ability: **tuned " in report
    page = (run / "report.html").read_text()
    assert "<table>" in page and "data:image/png;base64," in page and "http" not in page.split("<body>")[1].split("tunelab serve")[0]

    # a second run finds every stage done and trains nothing
    model_mtime = (run / "model" / "adapter_model.safetensors").stat().st_mtime
    run_pipeline(path)
    assert (run / "model" / "adapter_model.safetensors").stat().st_mtime == model_mtime

    # a changed recipe is refused instead of mixing two configurations in one run
    recipe["train"]["learning_rate"] = 1e-5
    path.write_text(yaml.safe_dump(recipe))
    from tunelab.errors import TunelabError

    with pytest.raises(TunelabError, match="--restart"):
        run_pipeline(path)
