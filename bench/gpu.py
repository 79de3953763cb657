"""GPU training throughput: tunelab on 1 GPU, under DDP and under FSDP, against plain TRL on 1 GPU.

    python bench/gpu.py                          # every GPU of this machine; replaces its section of bench/RESULTS.md
    python bench/gpu.py --random-init DIR        # weights absent: random weights from DIR's config (same shapes, same speed)
    python bench/gpu.py --dry-run --model DIR    # no GPU needed: the plan, the commands, checks, 2 tiny steps on the CPU

The recipe (examples/gpu-qwen-coder-fsdp.yaml: full fine-tuning, bf16, packing, gradient
checkpointing) is trained for `--steps` steps with no validation and no checkpoint, as:
- tunelab, 1 GPU: `tunelab train RECIPE` with train.distributed=ddp (one process: no wrapper);
- tunelab, DDP: `--processes N` (N = --gpus), each process with the recipe's per-device batch;
- tunelab, FSDP: `--processes N` with train.distributed=fsdp (FSDP2, full shard);
- TRL, 1 GPU: a plain `SFTTrainer` on the examples tunelab prepared (prompt/completion, loss on
  completions, bf16 autocast over fp32 weights as TRL loads them, packing with TRL's default
  "bfd" strategy, SDPA attention), with as many rows of max_seq_length per step as hold the
  tokens of tunelab's per-step batch (tunelab packs `batch_size` examples into one row).
Tokens/s: tokens trained (prompts and answers; no padding in either) over the Trainer's
train_runtime, so both include the same warm-up. Peak memory: torch.cuda.max_memory_allocated
in each process, the largest over the processes of a run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench import results  # noqa: E402
from tunelab.config import dump_recipe, load_recipe  # noqa: E402
from tunelab.io import read_jsonl  # noqa: E402
from tunelab.runs import DEFAULT_RUNS_DIR, RunDir, machine_info, package_versions  # noqa: E402

TITLE = "GPU training (bench/gpu.py)"  # a section per set of GPUs: `## TITLE · 2 × NVIDIA H100 80GB HBM3`
RECIPE = ROOT / "examples" / "gpu-qwen-coder-fsdp.yaml"
TRL_NAME = "TRL SFTTrainer, 1 GPU"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", type=Path, default=RECIPE)
    ap.add_argument("--model", help="Override the recipe's model (a folder with weights, or a hub id)")
    ap.add_argument("--random-init", type=Path, help="A folder with config.json and a tokenizer: train random weights of that shape")
    ap.add_argument("--gpus", type=int, help="Processes for DDP and FSDP (default: every GPU)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="Recipe override, as for tunelab train")
    ap.add_argument("--results", type=Path, default=results.RESULTS)
    ap.add_argument("--workdir", type=Path, help="Where the runs go (default: a temporary folder)")
    ap.add_argument("--dry-run", action="store_true", help="Plan, check and take 2 tiny steps on the CPU; write no results")
    ap.add_argument("--trl-worker", type=Path, help=argparse.SUPPRESS)  # internal: run the TRL baseline, write JSON here
    ap.add_argument("--trl-recipe", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--trl-data", type=Path, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


# ---------------------------------------------------------------- the plan
def bench_recipe(args, workdir: Path, model: str | None) -> Path:
    """The recipe every configuration trains, resolved once and written to workdir/recipe.yaml."""
    overrides = [
        f"output_dir={workdir / DEFAULT_RUNS_DIR}",
        f"train.max_steps={args.steps}",
        "train.save_steps=1000000",  # no checkpoint inside the measured steps
        "train.early_stopping_patience=null",
        "train.tensorboard=false",
        "data.validation_fraction=0",
        "data.validation_size=null",
        *([f"model={model}"] if model else []),
        *args.overrides,
    ]
    recipe = load_recipe(args.recipe, overrides)
    path = workdir / "recipe.yaml"
    path.write_text(dump_recipe(recipe))
    return path


def plan(recipe_file: Path, gpus: int, workdir: Path) -> list[dict]:
    """The configurations and the commands that run them (the TRL baseline reads the 1-GPU run's data)."""
    train = [sys.executable, "-m", "tunelab.cli", "train", str(recipe_file)]
    configs = [
        {"name": "tunelab, 1 GPU", "run": "gpu-1", "processes": 1, "cmd": train + ["--set", "name=gpu-1", "--set", "train.distributed=ddp"]}
    ]
    if gpus > 1:  # DDP over one process is the 1-GPU run
        ddp = ["--processes", str(gpus), "--set", "name=gpu-ddp", "--set", "train.distributed=ddp"]
        configs.append({"name": f"tunelab, DDP × {gpus}", "run": "gpu-ddp", "processes": gpus, "cmd": train + ddp})
    fsdp = ["--processes", str(gpus), "--set", "name=gpu-fsdp", "--set", "train.distributed=fsdp"]
    configs.append({"name": f"tunelab, FSDP × {gpus}", "run": "gpu-fsdp", "processes": gpus, "cmd": train + fsdp})
    trl = [sys.executable, str(Path(__file__).resolve()), "--trl-worker", str(workdir / "trl.json"), "--trl-recipe", str(recipe_file)]
    trl += ["--trl-data", str(RunDir(workdir / DEFAULT_RUNS_DIR / "gpu-1").split("train"))]
    configs.append({"name": TRL_NAME, "run": None, "processes": 1, "cmd": trl})
    return configs


def random_init_model(config_dir: Path, out: Path) -> Path:
    """Random weights with the shapes of config_dir's model (throughput does not depend on the values)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(out)
    return out


# ---------------------------------------------------------------- running and reading
def run_config(config: dict, workdir: Path) -> dict:
    """Run one configuration (in its own processes, so peak memory is its own) and read its figures."""
    print("$ " + " ".join(config["cmd"]), flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    code = subprocess.run(config["cmd"], cwd=ROOT, env=env).returncode
    if code != 0:  # keep the other configurations' figures; the table says which one failed
        print(f"{config['name']} failed with exit code {code}; its messages are above", flush=True)
        return {"error": f"failed (exit code {code})"}
    if config["run"] is None:  # the TRL worker
        return json.loads((workdir / "trl.json").read_text())
    summary = json.loads(RunDir(workdir / DEFAULT_RUNS_DIR / config["run"]).train_summary.read_text())
    return {
        "tokens_per_second": summary["tokens_per_second"],
        "tokens_per_step": summary["tokens_seen"] / max(summary["steps"], 1),
        "peak_memory_gib": max(summary["peak_memory_gib"]),
        "memory_measure": summary["peak_memory_measure"],
        "train_loss": summary["train_loss"],
        "steps": summary["steps"],
    }


def trl_rows_per_step(recipe, rows: list[dict]) -> int:
    """Rows of max_seq_length holding the tokens of tunelab's per-step batch (batch_size examples in one row)."""
    from tunelab.data.render import render_example
    from tunelab.models.load import load_tokenizer
    from tunelab.models.resolve import resolve_model

    tokenizer = load_tokenizer(resolve_model(recipe.model).path)
    sample = rows[:256]
    mean = sum(len(render_example(tokenizer, r["messages"], recipe.train.max_seq_length)["input_ids"]) for r in sample) / len(sample)
    return max(1, round(recipe.train.batch_size * mean / recipe.train.max_seq_length))


def trl_worker(args) -> None:
    """The baseline: plain TRL SFTTrainer on the same examples, model, steps and learning rate."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from tunelab.models.resolve import resolve_model

    recipe = load_recipe(args.trl_recipe)
    t = recipe.train
    rows = read_jsonl(args.trl_data)
    pairs = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]  # loss on the last answer
    config = SFTConfig(
        output_dir=str(args.trl_worker.parent / "trl"),
        per_device_train_batch_size=trl_rows_per_step(recipe, rows),
        max_steps=t.max_steps,
        learning_rate=t.resolved_learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=int(t.warmup_ratio * t.max_steps),
        max_length=t.max_seq_length,
        packing=True,
        bf16=True,
        gradient_checkpointing=t.checkpointing,
        model_init_kwargs={"attn_implementation": "sdpa"},
        use_cpu=not torch.cuda.is_available(),
        include_num_input_tokens_seen="all",
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, t.max_steps // 4),
        disable_tqdm=True,
        seed=t.seed,
    )
    trainer = SFTTrainer(model=str(resolve_model(recipe.model).path), args=config, train_dataset=Dataset.from_list(pairs))
    result = trainer.train()
    runtime = result.metrics["train_runtime"]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    figures = {
        "tokens_per_second": round(trainer.state.num_input_tokens_seen / runtime, 1),
        "tokens_per_step": trainer.state.num_input_tokens_seen / max(trainer.state.global_step, 1),
        "peak_memory_gib": round(peak, 2),
        "memory_measure": "torch.cuda.max_memory_allocated",
        "train_loss": result.training_loss,
        "steps": trainer.state.global_step,
    }
    args.trl_worker.write_text(json.dumps(figures))


# ---------------------------------------------------------------- results
def results_section(configs: list[dict], figures: dict[str, dict], meta: dict, gpus: str) -> str:
    """The section of RESULTS.md for the GPUs named `gpus` (its heading: results.keyed_title)."""
    baseline = figures.get(TRL_NAME, {}).get("tokens_per_second")
    lines = [
        f"## {results.keyed_title(TITLE, gpus)}",
        "",
        f"{meta['date']}, `{meta['command']}`, commit {meta['commit']}, {meta['machine']}; load average {meta['load_before']} before, {meta['load_after']} after.",
        f"Recipe {meta['recipe']} ({meta['model']}), {meta['steps']} steps each; tokens/s over the Trainer's train_runtime (warm-up included); peak memory: torch.cuda.max_memory_allocated, the largest over a run's processes.",
        "",
        "| configuration | processes | tokens/s (all GPUs) | tokens/s per GPU | tokens per step | peak memory per GPU (GiB) | final loss | tokens/s per GPU vs TRL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in configs:
        f = figures[c["name"]]
        if "error" in f:
            lines.append(f"| {c['name']} | {c['processes']} | {f['error']} | | | | | |")
            continue
        per_gpu = f["tokens_per_second"] / c["processes"]
        ratio = f"{per_gpu / baseline:.2f}x" if baseline else "n/a"
        lines.append(
            f"| {c['name']} | {c['processes']} | {f['tokens_per_second']:,.0f} | {per_gpu:,.0f} | {f['tokens_per_step']:,.0f} | {f['peak_memory_gib']:.2f} | {f['train_loss']:.4f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main
def check_plan(recipe_file: Path) -> None:
    """What a GPU machine would fail on, found here: the model, the data, each strategy's arguments, TRL."""
    from transformers import TrainingArguments
    from trl import SFTConfig  # noqa: F401  (the baseline needs TRL where the bench runs)

    from tunelab.models.resolve import resolve_model
    from tunelab.train.distributed import strategy_arguments

    recipe = load_recipe(recipe_file)
    print(f"check: model {recipe.model} resolves to {resolve_model(recipe.model).path}")
    for source in recipe.data.sources:
        if not Path(source.path).is_file():
            raise SystemExit(f"check failed: data file {source.path} not found (pass --set 'data.sources=[{{path: FILE}}]')")
        print(f"check: data {source.path}")
    for strategy in ("ddp", "fsdp"):
        variant = recipe.model_copy(update={"train": recipe.train.model_copy(update={"distributed": strategy})})
        TrainingArguments(output_dir=str(recipe_file.parent / "args-check"), use_cpu=True, **strategy_arguments(variant))
        print(f"check: TrainingArguments accept train.distributed={strategy}: {strategy_arguments(variant)}")


def dry_run(args, workdir: Path, model: str | None) -> None:
    load_before = os.getloadavg()
    print("DRY RUN: the plan and checks, then 2 tiny steps on this machine; nothing measured, no results written", flush=True)
    recipe_file = bench_recipe(args, workdir, model)
    for config in plan(recipe_file, args.gpus or 2, workdir):
        print(f"{config['name']}: $ " + " ".join(config["cmd"]))
    check_plan(recipe_file)
    tiny_args = argparse.Namespace(**{**vars(args), "steps": 2})
    tiny_args.overrides = ["train.batch_size=2", "train.max_seq_length=256", *args.overrides]
    tiny = workdir / "tiny"
    tiny.mkdir(parents=True, exist_ok=True)
    configs = [c for c in plan(bench_recipe(tiny_args, tiny, model), 1, tiny) if c["processes"] == 1 and "FSDP" not in c["name"]]
    figures = {c["name"]: run_config(c, tiny) for c in configs}
    meta = describe(tiny_args, model, "dry run on " + os.uname().nodename + " (CPU: these are not GPU figures)", load_before)
    print(results_section(configs, figures, meta, "dry run, no GPU"))
    if any("error" in f for f in figures.values()):
        raise SystemExit("dry run: a configuration failed (see above)")


def describe(args, model: str | None, machine: str, load_before) -> dict:
    return {
        "date": datetime.date.today().isoformat(),
        "command": "python bench/gpu.py " + " ".join(sys.argv[1:]),
        "commit": results.git_commit(),
        "machine": machine,
        "load_before": " / ".join(f"{x:.1f}" for x in load_before),
        "load_after": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
        "recipe": args.recipe.relative_to(ROOT) if args.recipe.is_relative_to(ROOT) else args.recipe,
        # with --random-init, `model` is a folder in the temporary workdir: name the shapes' source instead
        "model": f"random weights shaped as {args.random_init.name}" if args.random_init else (model or load_recipe(args.recipe).model),
        "steps": args.steps,
    }


def measure(args, workdir: Path, model: str | None) -> None:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: `python bench/gpu.py --dry-run --model DIR` checks the plan on a CPU")
    gpus = args.gpus or torch.cuda.device_count()
    versions = package_versions()
    machine = f"{gpus} × {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}), {machine_info()['cpus']} CPUs, torch {versions['torch']}, transformers {versions['transformers']}, trl {versions.get('trl', 'absent')}"
    load_before = os.getloadavg()
    configs = plan(bench_recipe(args, workdir, model), gpus, workdir)
    figures = {c["name"]: run_config(c, workdir) for c in configs}
    key = f"{gpus} × {torch.cuda.get_device_name(0)}"  # another count or model of GPU: a section of its own
    section = results_section(configs, figures, describe(args, model, machine, load_before), key)
    results.replace_file_section(args.results, results.keyed_title(TITLE, key), section)
    print(section)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.trl_worker:
        trl_worker(args)
        return
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="tunelab-gpu-bench-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model = str(random_init_model(args.random_init, workdir / "model")) if args.random_init else args.model
    (dry_run if args.dry_run else measure)(args, workdir, model)


if __name__ == "__main__":
    main()
