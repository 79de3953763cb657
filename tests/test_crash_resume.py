"""Real crashes: `tunelab train`, `tunelab run` and `tunelab sweep` in a subprocess, SIGKILLed once
a checkpoint is complete, a half-written checkpoint left beside it, then run again: training
resumes from the complete checkpoint and ends with the loss of a run that was never stopped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import write_alpaca

from tunelab.io import read_jsonl

STEPS = 12
SAVE_EVERY = 3


def write_recipe(folder: Path, model_dir: Path, name: str, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = write_alpaca(folder / "qa.json", n=96)
    recipe = {
        "name": name,
        "output_dir": str(folder / "runs"),
        "model": str(model_dir),
        "data": {"sources": [{"path": str(data)}], "dedup": "exact", "test_fraction": 0.05, "validation_fraction": 0.0},
        "train": {
            "max_steps": STEPS,
            "batch_size": 4,
            "logging_steps": 1,
            "save_steps": SAVE_EVERY,
            "save_total_limit": 2,
            "max_seq_length": 128,
            "learning_rate": 5e-3,
            "threads": 1,
            "tensorboard": False,
        },
        **extra,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def tunelab(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """`tunelab ...` as a user starts it (a new process; PYTHONPATH and the rest inherited)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TUNELAB_THREADS="1")
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, "-m", "tunelab.cli", *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    rc = proc.wait(timeout=timeout)
    assert rc == 0, f"exit {rc}:\n{log.read_text()[-3000:]}"


def complete_checkpoints(checkpoints: Path) -> list[Path]:
    return sorted(d for d in checkpoints.glob("checkpoint-*") if (d / "trainer_state.json").is_file())


def kill_after_first_checkpoint(proc: subprocess.Popen, checkpoints_glob: tuple[Path, str], log: Path, timeout: float = 600) -> Path:
    """SIGKILL the process as soon as a checkpoint under `root.glob(pattern)` is complete; return that folder."""
    root, pattern = checkpoints_glob
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [d for d in root.glob(pattern) if (d / "trainer_state.json").is_file()]
        if found:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            return found[0]
        assert proc.poll() is None, f"finished (exit {proc.returncode}) before a checkpoint was seen:\n{log.read_text()[-3000:]}"
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no complete checkpoint within {timeout} s:\n{log.read_text()[-3000:]}")


def leave_half_written_checkpoint(checkpoints: Path) -> Path:
    """A checkpoint folder newer than the complete one, as a crash during saving leaves it:
    weights truncated, trainer_state.json (written last) cut off mid-write."""
    newest = complete_checkpoints(checkpoints)[-1]
    step = int(newest.name.split("-")[-1])
    partial = checkpoints / f"checkpoint-{step + 1}"
    shutil.copytree(newest, partial)
    weights = next(partial.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    state = partial / "trainer_state.json"
    state.write_text(state.read_text()[:40])
    return partial


def step_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "train" / "metrics.jsonl") if "loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir) -> dict[int, float]:
    """The reference: the same recipe trained in one go, in its own process."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    recipe = write_recipe(folder, tiny_model_dir, "r")
    finish(tunelab(["train", str(recipe)], folder, folder / "log.txt"), folder / "log.txt")
    return step_losses(folder / "runs" / "r")


@pytest.mark.slow
def test_train_killed_after_a_checkpoint_resumes_to_the_same_loss(tmp_path, tiny_model_dir, uninterrupted):
    recipe = write_recipe(tmp_path, tiny_model_dir, "r")
    run = tmp_path / "runs" / "r"
    log = tmp_path / "log.txt"
    killed_at = kill_after_first_checkpoint(
        tunelab(["train", str(recipe)], tmp_path, log), (run / "train" / "checkpoints", "checkpoint-*"), log
    )
    assert not (run / "model").exists(), "training ended before the kill: nothing was interrupted"
    partial = leave_half_written_checkpoint(run / "train" / "checkpoints")

    refused = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "train", str(recipe)], cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ)
    )
    said = refused.stdout + refused.stderr
    assert refused.returncode == 2 and "--resume" in said and "Traceback" not in said, said

    finish(tunelab(["train", str(recipe), "--resume"], tmp_path, log), log)
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert summary["steps"] == STEPS and Path(summary["resumed_from"]).name != partial.name, summary
    assert int(Path(summary["resumed_from"]).name.split("-")[-1]) >= int(killed_at.name.split("-")[-1])
    assert not partial.exists()  # the half-written checkpoint was recognised and removed
    losses = step_losses(run)
    assert losses[STEPS] == pytest.approx(uninterrupted[STEPS], rel=1e-3), (losses, uninterrupted)
    assert (run / "model" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_run_pipeline_killed_while_training_resumes_to_the_same_loss(tmp_path, tiny_model_dir, uninterrupted):
    extra = {
        "eval": {"max_examples": 2, "max_new_tokens": 4, "metrics": ["bleu", "rougeL"], "compare_base": False, "bootstrap_samples": 10},
        "export": {"formats": []},
    }
    recipe = write_recipe(tmp_path, tiny_model_dir, "r", **extra)
    run = tmp_path / "runs" / "r"
    log = tmp_path / "log.txt"
    kill_after_first_checkpoint(tunelab(["run", str(recipe)], tmp_path, log), (run / "train" / "checkpoints", "checkpoint-*"), log)
    assert not (run / "model").exists()
    partial = leave_half_written_checkpoint(run / "train" / "checkpoints")
    finish(tunelab(["run", str(recipe)], tmp_path, log), log)
    state = json.loads((run / "state.json").read_text())
    assert all(state[s]["done"] for s in ("data", "train", "eval", "report")), state
    assert not partial.exists()
    assert step_losses(run)[STEPS] == pytest.approx(uninterrupted[STEPS], rel=1e-3)


@pytest.mark.slow
def test_sweep_killed_mid_variant_keeps_finished_variants_and_resumes_to_the_same_loss(tmp_path, tiny_model_dir):
    from tunelab.compare.store import ResultsStore
    from tunelab.compare.sweep import store_path

    base = write_recipe(
        tmp_path,
        tiny_model_dir,
        "base",
        eval={"max_new_tokens": 4, "metrics": ["bleu", "rougeL"], "bootstrap_samples": 10},
    )

    def write_sweep(path: Path, output_dir: Path) -> Path:
        sweep = {
            "name": "crash",
            "base": base.name,
            "output_dir": str(output_dir),
            "heldout": {"from_source": 0, "size": 6},
            "variants": [{"name": "baseline"}, {"name": "rank-4", "set": {"rank": 4}}],
        }
        path.write_text(yaml.safe_dump(sweep, sort_keys=False))
        return path

    sweep_file = write_sweep(tmp_path / "sweep.yaml", tmp_path / "sweeps")
    sweep_dir = tmp_path / "sweeps" / "crash"
    log = tmp_path / "log.txt"
    proc = tunelab(["sweep", str(sweep_file)], tmp_path, log)
    # the first variant finishes; the second is killed once its first checkpoint is complete
    second = kill_after_first_checkpoint(proc, (sweep_dir / "runs", "rank-4-*/train/checkpoints/checkpoint-*"), log)
    first_run = next((sweep_dir / "runs").glob("baseline-*"))
    first_model = first_run / "model" / "adapter_model.safetensors"
    assert first_model.is_file(), "the first variant should have finished before the kill"
    first_mtime = first_model.stat().st_mtime_ns
    second_run = second.parents[2]
    assert not (second_run / "model").exists()
    leave_half_written_checkpoint(second.parent)

    finish(tunelab(["sweep", str(sweep_file)], tmp_path, log), log)
    with ResultsStore(store_path(sweep_dir)) as store:
        status = {r["variant"]: r["status"] for r in store.runs()}
    assert set(status.values()) == {"done"} and {"baseline", "rank-4"} <= set(status), status
    assert first_model.stat().st_mtime_ns == first_mtime  # the finished variant was kept, not retrained
    summary = json.loads((second_run / "train" / "summary.json").read_text())
    assert summary["resumed_from"] and summary["steps"] == STEPS, summary

    # the resumed variant ends where the same variant trained without a stop ends
    again = write_sweep(tmp_path / "again.yaml", tmp_path / "again")
    finish(tunelab(["sweep", str(again), "--only", "rank-4"], tmp_path, log), log)
    uninterrupted_run = next((tmp_path / "again" / "crash" / "runs").glob("rank-4-*"))
    assert step_losses(second_run)[STEPS] == pytest.approx(step_losses(uninterrupted_run)[STEPS], rel=1e-3)
