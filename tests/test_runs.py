"""The run directory contract (tunelab/runs.py): model info, the trained-model folder, layouts, state."""

from __future__ import annotations

import json

import pytest

from tunelab.errors import TunelabError
from tunelab.runs import (
    MODEL_INFO,
    ExportDir,
    RunDir,
    gguf_name,
    gguf_quant,
    model_weights,
    read_model_info,
    require_base_model,
    split_gguf_name,
    trained_model_dir,
    write_model_info,
)


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


def test_a_corrupt_benchmark_record_is_an_error_naming_its_file(tmp_path):
    from tunelab.report import benchmark_results

    run = RunDir(tmp_path)
    folder = run.benchmark("humaneval")
    folder.mkdir(parents=True)
    (folder / "benchmark.json").write_text('{"kind": "code", "models": {')  # a record cut short
    with pytest.raises(TunelabError, match=r"humaneval/benchmark\.json: not valid JSON: .* at line 1"):
        benchmark_results(run, "code")


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


def test_gguf_names_are_built_and_read_back_in_one_place(tmp_path):
    export = ExportDir(tmp_path)
    assert (
        export.gguf_file("my-run", "q4_k_m")
        == tmp_path / "gguf" / gguf_name("my-run", "q4_k_m")
        == tmp_path / "gguf" / "my-run-q4_k_m.gguf"
    )
    # a run name may hold '-', a quantization never does
    for name in ("my-run", "demo", "a-b-c"):
        for quant in ("f16", "q8_0", "q4_k_m"):
            assert split_gguf_name(export.gguf_file(name, quant)) == (name, quant)
            assert gguf_quant(gguf_name(name, quant)) == quant
    assert gguf_quant("Demo-Q8_0.gguf") == "q8_0"
    for other in ("plain.gguf", "-q8_0.gguf", "demo-.gguf", "demo-q8_0.bin", "Modelfile"):
        assert gguf_quant(other) is None, other
    assert export.ggufs_by_quant() == {}
    export.gguf.mkdir()
    for name in ("run-q8_0.gguf", "run-f16.gguf", "plain.gguf", "Modelfile"):
        (export.gguf / name).write_text("")
    assert export.ggufs_by_quant() == {"f16": export.gguf_file("run", "f16"), "q8_0": export.gguf_file("run", "q8_0")}


def test_old_run_folders_still_say_what_was_trained_and_how(tmp_path):
    """Folders trained before the two axes had a key each: tunelab_model.json says the weights as `method`, and
    train/summary.json holds the old `train.method` ("dpo"); readers and the report still give both axes."""
    from tunelab.report import training_section

    run = RunDir(tmp_path / "old")
    write_model_info(run.model, {"base_model": "b", "method": "qlora", "objective": "dpo"})
    run.train_summary.parent.mkdir(parents=True)
    run.train_summary.write_text(json.dumps({"method": "dpo", "base_model": "b", "steps": 2}))
    assert model_weights(run.model_info()) == "qlora" and model_weights({"weights": "full", "method": "x"}) == "full"
    table = training_section(run)
    assert table[0].startswith("| weights | objective | base_model | steps |") and table[2].startswith("| qlora | dpo | b | 2 |")
