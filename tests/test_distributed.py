"""Two training processes on the CPU (torchrun, gloo): same losses as one process, one writer, exact resume.

The 2-process runs go through the user's path, `tunelab train RECIPE --processes 2`, in a
subprocess. tests/distributed_hook/sitecustomize.py, on the subprocesses' PYTHONPATH, records
what each rank did (batches, data preparation, files written) and kills rank 0 after a checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_train import make_recipe
from transformers import Trainer

from tunelab.config import recipe_from_dict
from tunelab.errors import TunelabError
from tunelab.io import read_jsonl
from tunelab.runs import RunDir
from tunelab.train.distributed import check_launched, check_strategy
from tunelab.train.run import check_before_training, train_recipe

ROOT = Path(__file__).resolve().parent.parent
HOOK = Path(__file__).resolve().parent / "distributed_hook"
# the hook's own reading of a packed batch, so both sides name examples alike (loaded by path: its module name is special)
_spec = importlib.util.spec_from_file_location("distributed_hook", HOOK / "sitecustomize.py")
hook = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hook)

# Measured on this 2-core CPU in fp32 over 6 steps: at most 9.0e-8 relative difference per step
# between 2 processes × batch 2 and 1 process × batch 4 (the same examples per step; only the
# order of float sums differs: two packed rows and a gradient all-reduce instead of one row).
# 1e-5 leaves two orders of magnitude for other CPUs' kernels, while a wrong shard or batch
# trains on other examples and moves the loss by far more: 9.3e-4 at the first step, measured
# on this random model whose losses all sit near ln(vocabulary) (test_tolerance_would_catch_a_wrong_batch).
LOSS_RTOL = 1e-5
STEPS, SAVE_AT = 6, 3


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "train" / "metrics.jsonl") if "loss" in r}


def events(record_dir: Path, rank: int) -> list[dict]:
    path = record_dir / f"rank{rank}.jsonl"
    return read_jsonl(path) if path.exists() else []


def tunelab_train(recipe_file: Path, record_dir: Path, *extra: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HOOK), str(ROOT)]), TUNELAB_TEST_RECORD=str(record_dir))
    env.pop("TUNELAB_TEST_KILL_AT", None)
    if kill_at:
        env["TUNELAB_TEST_KILL_AT"] = str(kill_at)
    cmd = [sys.executable, "-m", "tunelab.cli", "train", str(recipe_file), "--processes", "2", *extra]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def single_process_reference(tmp_path: Path, model_dir: Path, monkeypatch) -> tuple[Path, list[set[str]]]:
    """One process with twice the per-device batch, recording the examples of each training step."""
    steps = []
    training_step = Trainer.training_step

    def recording_step(self, model, inputs, *args, **kwargs):
        steps.append(set(hook.trained_examples(inputs)))
        return training_step(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", recording_step)
    run = train_recipe(make_recipe(tmp_path / "one", model_dir, batch_size=4, precision="fp32", max_steps=STEPS, save_steps=SAVE_AT))
    return run, steps


def test_more_processes_than_gpus_is_refused(monkeypatch):
    import torch

    from tunelab.train.distributed import check_gpus_for

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(TunelabError, match="--processes 2 asks for one GPU per process, and this machine has 1"):
        check_gpus_for(2)
    check_gpus_for(1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_gpus_for(2)  # no GPU: processes share the CPU


def test_two_processes_match_one_and_resume_after_a_kill(tmp_path, tiny_model_dir, monkeypatch):
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() < 2:
        pytest.skip("two processes need two GPUs where CUDA is visible (one GPU here)")
    one, one_steps = single_process_reference(tmp_path, tiny_model_dir, monkeypatch)

    recipe = make_recipe(tmp_path / "two", tiny_model_dir, batch_size=2, precision="fp32", max_steps=STEPS, save_steps=SAVE_AT)
    recipe_file = tmp_path / "two.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    record = tmp_path / "record"
    record.mkdir()
    run = Path(recipe.run_dir())

    killed = tunelab_train(recipe_file, record, kill_at=SAVE_AT)
    assert killed.returncode != 0, killed.stderr[-3000:]
    assert "failed in rank 0" in killed.stderr  # the launcher names the rank that died
    assert (run / "train" / "checkpoints" / f"checkpoint-{SAVE_AT}" / "trainer_state.json").is_file()
    assert not (run / "model").exists() and not (run / "train" / "summary.json").exists()

    resumed = tunelab_train(recipe_file, record, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    # the loss curve: the killed run logged steps 1-3, the resumed one 4-6, into the same metrics.jsonl
    two_losses, one_losses = losses(run), losses(one)
    assert sorted(two_losses) == list(range(1, STEPS + 1))
    for step, loss in one_losses.items():
        assert two_losses[step] == pytest.approx(loss, rel=LOSS_RTOL), f"step {step}"
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_batch"] == 4
    assert summary["resumed_from"].endswith(f"checkpoint-{SAVE_AT}")
    assert summary["tokens_seen"] == json.loads((one / "train" / "summary.json").read_text())["tokens_seen"]
    assert len(summary["peak_memory_gib"]) == 2

    # each step, the two ranks train on different examples, together the single process's batch
    rank_steps = [[set(e["examples"]) for e in events(record, rank) if e["event"] == "step"] for rank in (0, 1)]
    assert len(rank_steps[0]) == len(rank_steps[1]) == len(one_steps) == STEPS  # 1-3 in the killed run, 4-6 resumed
    for step, (mine, theirs, whole) in enumerate(zip(*rank_steps, one_steps), start=1):
        assert not mine & theirs, f"step {step}: both ranks trained on the same example"
        assert mine | theirs == whole, f"step {step}: the global batch differs from one process with twice the batch"

    # rank 0 alone prepared the data (once, in the first run) and wrote every file and weights folder
    rank0, rank1 = events(record, 0), events(record, 1)
    assert [e["event"] for e in rank0].count("prepare_data") == 1
    assert not [e for e in rank1 if e["event"] in ("prepare_data", "write", "save_weights")]
    saved = [Path(e["path"]).name for e in rank0 if e["event"] == "save_weights"]
    assert saved == [f"checkpoint-{SAVE_AT}", f"checkpoint-{STEPS}", ".model.staging"]
    written = {Path(e["path"]).name for e in rank0 if e["event"] == "write"}
    assert {"metrics.jsonl", "summary.json", "tunelab_model.json", "recipe.yaml", "state.json"} <= written
    assert (run / "model" / "adapter_model.safetensors").is_file()


def test_tolerance_would_catch_a_wrong_batch(tmp_path, tiny_model_dir):
    """The stated tolerance is meaningful: half the global batch (other examples) moves the first loss by far more (measured 9.3e-4)."""
    full = losses(train_recipe(make_recipe(tmp_path / "b4", tiny_model_dir, batch_size=4, precision="fp32", max_steps=1)))
    half = losses(train_recipe(make_recipe(tmp_path / "b2", tiny_model_dir, batch_size=2, precision="fp32", max_steps=1)))
    assert abs(full[1] - half[1]) / full[1] > 20 * LOSS_RTOL


def test_resume_with_another_process_count_is_refused(tmp_path, tiny_model_dir):
    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=2, save_steps=2)
    run = RunDir(recipe.run_dir())
    checkpoint = run.checkpoints / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    for rank in (0, 1):  # what a 2-process run leaves: one RNG file per rank
        (checkpoint / f"rng_state_{rank}.pth").write_bytes(b"")
    with pytest.raises(TunelabError, match="written by 2 training processes.*--processes 2"):
        check_before_training(recipe, run, resume=True, processes=1)
    check_before_training(recipe, run, resume=True, processes=2)


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_sharded_strategies_refused_on_a_cpu(tmp_path, strategy):
    """FSDP and DeepSpeed need CUDA here; refused before any work, naming what is missing."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    recipe = recipe_from_dict({"data": {"sources": [{"path": "x.json"}]}, "train": {"distributed": strategy}})
    expected = "CUDA GPUs.*silently train with plain data parallelism" if strategy == "fsdp" else "a CUDA GPU"
    with pytest.raises(TunelabError, match=expected) as err:
        check_strategy(recipe)
    if strategy.startswith("deepspeed"):  # both missing pieces are named, so the user fixes them in one go
        assert ("the deepspeed package" in str(err.value)) == (importlib.util.find_spec("deepspeed") is None)
    qlora = recipe_from_dict({"data": {"sources": [{"path": "x.json"}]}, "train": {"distributed": strategy, "weights": "qlora"}})
    with pytest.raises(TunelabError, match="weights=qlora"):
        check_strategy(qlora)


def test_cli_refuses_fsdp_on_a_cpu_before_starting_processes(tmp_path, tiny_model_dir):
    """The launcher checks first: the error comes from one process, in seconds, with no run directory."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    recipe = make_recipe(tmp_path, tiny_model_dir, distributed="fsdp")
    recipe_file = tmp_path / "fsdp.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "train", str(recipe_file), "--processes", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert "train.distributed=fsdp needs CUDA GPUs" in out.stderr
    assert "failed in rank" not in out.stderr  # refused by the launcher: no training process was started
    assert not Path(recipe.run_dir()).exists()


def test_sharding_outside_a_launched_process_is_refused(monkeypatch):
    """In one plain process accelerate would skip FSDP/DeepSpeed without a word; tunelab says how to launch instead."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    recipe = recipe_from_dict({"data": {"sources": [{"path": "x.json"}]}, "train": {"distributed": "fsdp"}})
    with pytest.raises(TunelabError, match="--processes N"):
        check_launched(recipe)
    check_launched(recipe.model_copy(update={"train": recipe.train.model_copy(update={"distributed": "ddp"})}))
    monkeypatch.setenv("LOCAL_RANK", "0")
    check_launched(recipe)


@pytest.mark.slow
def test_slurm_script_trains_on_one_node(tmp_path, tiny_model_dir):
    """examples/slurm-fsdp.sbatch's torchrun line, on this machine: srun and scontrol stood in, 2 processes, a ddp recipe."""
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "srun").write_text('#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\nexec "$@"\n')  # one task, here
    (shims / "scontrol").write_text("#!/bin/bash\necho localhost\n")
    for shim in shims.iterdir():
        shim.chmod(0o755)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    recipe = make_recipe(tmp_path, tiny_model_dir, max_steps=2, save_steps=2)
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    slurm = {
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_NNODES": "1",
        "SLURM_GPUS_ON_NODE": "2",
        "SLURM_JOB_ID": "1",
        "TUNELAB_RDZV_PORT": str(port),
    }
    path = os.pathsep.join([str(shims), str(Path(sys.executable).parent), os.environ["PATH"]])
    env = dict(os.environ, **slurm, PATH=path, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        ["bash", "examples/slurm-fsdp.sbatch", str(recipe_file)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((Path(recipe.run_dir()) / "train" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2
