"""The run directory contract (tunelab/runs.py): model info, the trained-model folder, layouts, state."""

from __future__ import annotations

import json

import pytest

from tunelab.errors import TunelabError
from tunelab.runs import MODEL_INFO, ExportDir, RunDir, read_model_info, require_base_model, trained_model_dir, write_model_info


def test_model_info_round_trip_and_the_folder_lookup(tmp_path):
    run = RunDir(tmp_path / "r")
    assert not run.has_model() and trained_model_dir(run.root) is None and RunDir.of_model(run.root) is None
    write_model_info(run.model, {"base_model": "smollm2-135m-instruct", "method": "lora"})
    assert run.has_model() and run.model_info_file.name == MODEL_INFO
    assert run.model_info() == {"base_model": "smollm2-135m-instruct", "method": "lora"}
    assert run.base_model() == "smollm2-135m-instruct"
    # a run directory and its model/ folder both lead to the same place
    assert trained_model_dir(run.root) == trained_model_dir(run.model) == run.model
    assert RunDir.of_model(run.root) == RunDir.of_model(run.model) == run
    # a model folder outside a run (not named model/) has no run
    write_model_info(tmp_path / "loose", {"base_model": "x"})
    assert trained_model_dir(tmp_path / "loose") == tmp_path / "loose" and RunDir.of_model(tmp_path / "loose") is None
    assert read_model_info(tmp_path / "plain-hf-folder") == {}


def test_broken_model_info_is_a_clear_error(tmp_path):
    (tmp_path / MODEL_INFO).write_text("{not json")
    with pytest.raises(TunelabError, match=f"{MODEL_INFO}: not valid JSON"):
        read_model_info(tmp_path)
    (tmp_path / MODEL_INFO).write_text(json.dumps(["base"]))
    with pytest.raises(TunelabError, match="must hold a JSON object"):
        read_model_info(tmp_path)
    (tmp_path / MODEL_INFO).write_text(json.dumps({"method": "lora"}))
    with pytest.raises(TunelabError, match="field 'base_model' is missing"):
        require_base_model(tmp_path, read_model_info(tmp_path))


def test_layouts_and_state(tmp_path):
    run = RunDir(tmp_path)
    assert run.split("test") == run.data_dir.split("test") == tmp_path / "data" / "test.jsonl"
    assert run.eval_dir.predictions == tmp_path / "eval" / "predictions.jsonl"
    assert run.export_dir == ExportDir(tmp_path / "export") and run.export_dir.gguf_files() == []
    (run.export_dir.gguf).mkdir(parents=True)
    for name in ("b-q8_0.gguf", "a-f16.gguf", "Modelfile"):
        (run.export_dir.gguf / name).write_text("")
    assert [p.name for p in run.export_dir.gguf_files()] == ["a-f16.gguf", "b-q8_0.gguf"]
    assert not run.stage_done("data")
    run.mark_done("data", counts={"train": 3})
    assert run.stage_done("data") and run.read_state()["data"]["counts"] == {"train": 3}
    run.state.write_text("{")
    with pytest.raises(TunelabError, match="state.json: not valid JSON"):
        run.stage_done("train")
