"""Training with several processes: starting them, how they share the work, and what is refused.

`tunelab train RECIPE --processes N` starts N copies of the same command through
`torch.distributed.run` (torchrun's own launcher, with a free local port). Each copy finds the
torchrun environment (RANK, WORLD_SIZE, ...) and the Trainer runs data parallel over them:
NCCL on GPUs, gloo on CPUs. On a cluster the user runs torchrun (under srun) directly, with the
same recipe. `train.distributed` says how the processes share the work; this module turns it
into the Trainer's own arguments (`fsdp`/`fsdp_config`, `deepspeed`), so accelerate does the
wrapping and tunelab holds no distributed code beyond the checks below.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser
from torch.distributed.run import run as torchrun

from tunelab.cpu import peak_rss_mib
from tunelab.errors import TunelabError


def launched() -> bool:
    """True inside a process started by torchrun (or `--processes`): it sets LOCAL_RANK in each."""
    return "LOCAL_RANK" in os.environ


def process_state() -> PartialState:
    """This process's place among the training processes (one process when not launched).

    `cpu=True` where there is no GPU: without it accelerate ignores torchrun's variables on a
    CPU and every process believes it is alone (each would prepare the data and write model/).
    """
    return PartialState(cpu=not torch.cuda.is_available())


def check_strategy(recipe) -> None:
    """Refuse, before any work, a strategy this machine cannot run (rather than let it fall back silently)."""
    strategy = recipe.train.distributed
    if strategy == "ddp":
        return
    if recipe.train.weights == "qlora":
        raise TunelabError(
            f"train.distributed={strategy} with train.weights=qlora is not supported: 4-bit weights cannot be sharded as loaded here; use train.distributed=ddp"
        )
    has_gpu = torch.cuda.is_available()
    if strategy == "fsdp" and not has_gpu:
        raise TunelabError(
            "train.distributed=fsdp needs CUDA GPUs: the Trainer's engine (accelerate) enables FSDP only on GPU devices, "
            "and on a CPU it would silently train with plain data parallelism instead; use train.distributed=ddp on a CPU"
        )
    if strategy.startswith("deepspeed"):
        missing = []
        if not has_gpu:
            missing.append("a CUDA GPU (none found; accelerate runs DeepSpeed only on GPUs)")
        if importlib.util.find_spec("deepspeed") is None:
            missing.append("the deepspeed package (pip install deepspeed, on the GPU machine)")
        if missing:
            raise TunelabError(f"train.distributed={strategy} needs " + " and ".join(missing) + "; use train.distributed=ddp here")


def check_launched(recipe) -> None:
    """FSDP and DeepSpeed take effect only in processes torchrun started: alone, accelerate would quietly skip them."""
    if recipe.train.distributed != "ddp" and not launched():
        raise TunelabError(
            f"train.distributed={recipe.train.distributed} runs in processes started by torchrun: use `tunelab train RECIPE --processes N` "
            "(N=1 for one GPU), or torchrun itself"
        )


def strategy_arguments(recipe) -> dict:
    """TrainingArguments for `train.distributed` (with one process and ddp: none)."""
    t = recipe.train
    if t.distributed == "ddp":
        # every LoRA (or full) weight takes part in each forward pass; True costs an extra graph walk per step
        return {"ddp_find_unused_parameters": False}
    if t.distributed == "fsdp":
        return {
            "fsdp": True,
            "fsdp_config": {
                "version": 2,
                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # one shard group per decoder layer (the model's _no_split_modules)
                "reshard_after_forward": True,
                "state_dict_type": "FULL_STATE_DICT",  # model/ and checkpoints hold whole weights, readable by one process
                "activation_checkpointing": t.checkpointing,
            },
        }
    zero = {"stage": 2} if t.distributed == "deepspeed_zero2" else {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}
    return {
        "deepspeed": {
            "zero_optimization": zero,
            "bf16": {"enabled": "auto"},
            "train_micro_batch_size_per_gpu": "auto",
            "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
        }
    }


def check_gpus_for(processes: int) -> None:
    """With CUDA, process k trains on GPU k: more processes than GPUs would crash one rank mid-start."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if 0 < gpus < processes:
        raise TunelabError(
            f"--processes {processes} asks for one GPU per process, and this machine has {gpus}: "
            f"use --processes {gpus} (or CUDA_VISIBLE_DEVICES= to train with {processes} processes on the CPU)"
        )


def launch(processes: int, argv: list[str]) -> None:
    """Run `python -m tunelab.cli ARGV` in `processes` processes on this machine, and wait for them."""
    check_gpus_for(processes)
    cores = len(os.sched_getaffinity(0))
    # torchrun would otherwise set 1 thread each and warn; tunelab's set_threads shares the cores the same way
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // processes)))
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={processes}", "-m", "tunelab.cli", *argv])
    try:
        torchrun(args)
    except ChildFailedError as err:
        ranks = ", ".join(f"rank {rank} (exit code {failure.exitcode})" for rank, failure in sorted(err.failures.items()))
        raise TunelabError(f"training with {processes} processes failed in {ranks}; their own messages are above") from None


def checkpoint_processes(checkpoint: Path) -> int | None:
    """How many processes wrote a checkpoint: the Trainer saves one RNG file per process (None: unknown)."""
    if (checkpoint / "rng_state.pth").is_file():
        return 1
    ranks = [int(p.stem.rsplit("_", 1)[1]) for p in checkpoint.glob("rng_state_*.pth") if p.stem.rsplit("_", 1)[1].isdigit()]
    return max(ranks) + 1 if ranks else None


def peak_memory_per_process() -> tuple[list[float], str]:
    """Peak memory of every training process in GiB (all processes call this), and what was measured."""
    if torch.cuda.is_available():
        mine, measure = torch.cuda.max_memory_allocated() / 2**30, "torch.cuda.max_memory_allocated"
    else:
        mine, measure = peak_rss_mib() / 1024, "peak resident set size"
    return [round(x, 2) for x in gather_object([mine])], measure
