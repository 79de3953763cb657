"""`tunelab train`: fine-tune a base model on prepared data, into a run directory.

Built on transformers' Trainer (which TRL's SFTTrainer extends) and PEFT, with our own
tokenization (chat template, answer-only labels) and a padding-free packed collator. The
Trainer brings checkpoints with exact resume (optimizer, scheduler, RNG and data position),
TensorBoard/MLflow logging, early stopping, and `accelerate launch` for DDP, FSDP and
DeepSpeed with no code of ours in between.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from tunelab.config import DataConfig, DataSource, Recipe, dump_recipe, load_recipe, recipe_from_dict, apply_overrides
from tunelab.data.render import IGNORE_INDEX, render_example
from tunelab.errors import ConfigError, TunelabError
from tunelab.io import atomic_dir, atomic_write_json, read_jsonl
from tunelab.progress import console
from tunelab.runs import RunDir, write_environment, write_recipe

DEFAULT_LR = {"lora": 2e-4, "qlora": 2e-4, "full": 2e-5}


def recipe_from_cli(recipe_path: Path | None, *, model=None, data=(), name=None, method=None, max_steps=None, overrides=()) -> Recipe:
    """A recipe from a YAML file, or from one-liner options (`--model ... --data ...`), plus overrides."""
    extra = list(overrides or [])
    if model:
        extra.append(f"model={model}")
    if name:
        extra.append(f"name={name}")
    if method:
        extra.append(f"train.method={method}")
    if max_steps:
        extra.append(f"train.max_steps={max_steps}")
    if recipe_path is not None:
        recipe = load_recipe(recipe_path, extra)
        if data:
            recipe.data.sources = [DataSource(path=d) for d in data]
        return recipe
    if not data:
        raise ConfigError("give a recipe file, or --data FILE (and optionally --model)")
    raw = {"data": {"sources": [{"path": d} for d in data]}}
    return recipe_from_dict(apply_overrides(raw, extra), "command line")


def training_fingerprint(recipe: Recipe) -> dict:
    """The parts of a recipe that change what training computes (a resume must match them)."""
    dumped = recipe.model_dump(mode="json")
    return {"model": dumped["model"], "data": dumped["data"], "train": {k: v for k, v in dumped["train"].items() if k not in {"threads", "logging_steps", "mlflow", "tensorboard"}}}


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint whose trainer_state.json (written last) exists; partial ones are removed."""
    if not checkpoints.is_dir():
        return None
    found = []
    for d in checkpoints.glob("checkpoint-*"):
        if not d.name.split("-")[-1].isdigit():
            continue
        if (d / "trainer_state.json").is_file():
            found.append((int(d.name.split("-")[-1]), d))
        else:
            console.print(f"[yellow]removing incomplete checkpoint {d} (interrupted while saving)")
            shutil.rmtree(d, ignore_errors=True)
    return max(found)[1] if found else None


def tokenize_split(tokenizer, rows: list[dict], max_seq_length: int) -> tuple[list[dict], int]:
    """Render and mask each example; drop those left with no answer token after truncation."""
    out, dropped = [], 0
    for row in rows:
        ex = render_example(tokenizer, row["messages"], max_seq_length)
        if all(label == IGNORE_INDEX for label in ex["labels"]):
            dropped += 1
            continue
        out.append(ex)
    return out, dropped


def check_before_training(recipe: Recipe, run: RunDir, resume: bool) -> None:
    """Refuse, before any time is spent, what cannot work."""
    if recipe.train.method == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except Exception as err:  # ImportError, or a broken native library
            raise TunelabError(f"train.method=qlora needs bitsandbytes, which cannot run here ({err}); install tunelab[qlora] or use method=lora") from None
    if resume:
        if run.recipe.is_file():
            import yaml

            old = recipe_from_dict(yaml.safe_load(run.recipe.read_text()), str(run.recipe))
            if training_fingerprint(old) != training_fingerprint(recipe):
                old_fp, new_fp = training_fingerprint(old), training_fingerprint(recipe)
                diffs = [k for k in ("model", "data") if old_fp[k] != new_fp[k]] + [f"train.{k}" for k in new_fp["train"] if old_fp["train"].get(k) != new_fp["train"].get(k)]
                raise TunelabError(f"cannot resume {run.root}: its recipe differs in {', '.join(diffs)}; use the same recipe or a new run name")
    elif last_complete_checkpoint(run.checkpoints) or (run.model / "tunelab_model.json").is_file():
        raise TunelabError(f"{run.root} already has training output; pass --resume to continue it, or choose another run name")


def check_sequence_length(tokenizer, max_seq_length: int) -> None:
    """The template alone (system prompt, markers) must leave room for a question and an answer."""
    empty = tokenizer.apply_chat_template([{"role": "user", "content": ""}], tokenize=False, add_generation_prompt=True)
    overhead = len(tokenizer(empty, add_special_tokens=False)["input_ids"])
    if max_seq_length <= overhead + 8:
        raise TunelabError(f"train.max_seq_length={max_seq_length} is too short: this model's chat template alone takes {overhead} tokens before any question or answer; use at least {overhead + 64}")


def build_model(recipe: Recipe, base_path: Path):
    """The base model, wrapped for the chosen method (LoRA, QLoRA or full)."""
    from tunelab.models.load import load_causal_lm
    from tunelab.train.lora import peft_config

    method = recipe.train.method
    model = load_causal_lm(base_path, load_in_4bit=(method == "qlora"), trust_remote_code=recipe.trust_remote_code)
    model.config.use_cache = False
    if method == "full":
        if recipe.train.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.train.gradient_checkpointing)
    elif recipe.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return get_peft_model(model, peft_config(model, recipe.train.lora))


def training_arguments(recipe: Recipe, run: RunDir, steps_per_epoch: int, has_validation: bool):
    import torch
    from transformers import TrainingArguments

    from tunelab.models.load import wants_bf16

    t = recipe.train
    total_steps = t.max_steps or max(1, int(steps_per_epoch * t.epochs))
    every = max(1, total_steps // 4)
    eval_steps = t.eval_steps or every
    save_steps = t.save_steps or every
    early = t.early_stopping_patience is not None and has_validation
    if early:  # best-model tracking needs saves on evaluation steps
        save_steps = eval_steps
    report_to = (["tensorboard"] if t.tensorboard else []) + (["mlflow"] if t.mlflow else [])
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run.train / "tensorboard"))
    return TrainingArguments(
        output_dir=str(run.checkpoints),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=t.learning_rate or DEFAULT_LR[t.method],
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=int(t.warmup_ratio * total_steps),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        bf16=wants_bf16(t.precision),
        use_cpu=not torch.cuda.is_available(),
        logging_steps=t.logging_steps,
        eval_strategy="steps" if has_validation else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        report_to=report_to or "none",
        remove_unused_columns=False,
        disable_tqdm=True,
        include_num_input_tokens_seen="all",
        dataloader_num_workers=0,
    )


def save_trained_model(trainer, tokenizer, recipe: Recipe, base_path: Path, run: RunDir) -> None:
    """Write the final adapter (or full weights) with tokenizer and provenance into run/model/.

    Every process calls this: under FSDP or DeepSpeed `trainer.save_model` gathers the sharded
    weights, and only the main process writes. The folder is built beside run/model and renamed.
    """
    from accelerate import PartialState

    state = PartialState()
    staging = run.root / ".model.staging"
    if state.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    state.wait_for_everyone()
    trainer.save_model(str(staging))
    if state.is_main_process:
        tokenizer.save_pretrained(staging)
        atomic_write_json(staging / "tunelab_model.json", {
            "base_model": recipe.model,
            "base_model_path": str(base_path),
            "method": recipe.train.method,
            "run": run.root.name,
            "recipe": recipe.model_dump(mode="json"),
        })
        for leftover in ("training_args.bin",):  # a pickle; nothing in tunelab reads it
            (staging / leftover).unlink(missing_ok=True)
        old = run.root / ".model.old"
        shutil.rmtree(old, ignore_errors=True)
        if run.model.exists():
            os.replace(run.model, old)
        os.replace(staging, run.model)
        shutil.rmtree(old, ignore_errors=True)
    state.wait_for_everyone()


def train_recipe(recipe: Recipe, resume: bool = False) -> Path:
    """Prepare data if needed, train, and write the model, metrics, curves and summary."""
    import torch
    from transformers import EarlyStoppingCallback, Trainer

    from tunelab.models.load import load_tokenizer, set_threads
    from tunelab.models.resolve import resolve_model
    from tunelab.train.callbacks import MetricsFileCallback, ProgressCallback, plot_losses
    from tunelab.train.collate import PackedCollator, PaddedCollator

    from accelerate import PartialState

    main_process = PartialState().is_main_process
    run = RunDir(recipe.run_dir())
    check_before_training(recipe, run, resume)
    base = resolve_model(recipe.model)
    tokenizer = load_tokenizer(base.path, trust_remote_code=recipe.trust_remote_code)
    check_sequence_length(tokenizer, recipe.train.max_seq_length)
    run.root.mkdir(parents=True, exist_ok=True)
    with PartialState().main_process_first():  # under `accelerate launch`, rank 0 prepares; the others then read
        if main_process:
            write_recipe(run, recipe)
            write_environment(run)
        if not run.stage_done("data"):
            from tunelab.data.prepare import prepare_data

            card = prepare_data(recipe.data, run.data, model_ref=recipe.model, max_seq_length=recipe.train.max_seq_length)
            run.mark_done("data", counts=card.get("counts"), hash=card.get("hashes", {}).get("all"))

    threads = set_threads(recipe.train.threads)
    max_len = recipe.train.max_seq_length
    train_rows = read_jsonl(run.split("train"))
    val_rows = read_jsonl(run.split("validation")) if run.split("validation").is_file() else []
    if not train_rows:
        raise TunelabError(f"no training examples left after preparing the data (see {run.data / 'card.md'})")
    train_set, dropped = tokenize_split(tokenizer, train_rows, max_len)
    if not train_set:
        raise TunelabError(f"train.max_seq_length={max_len} is shorter than the prompt of every training example: no answer token would be trained on; raise max_seq_length")
    if dropped:
        console.print(f"[yellow]{dropped} training examples have no answer token within max_seq_length={max_len} and are skipped")
    val_set, _ = tokenize_split(tokenizer, val_rows, max_len)

    torch.manual_seed(recipe.train.seed)
    model = build_model(recipe, base.path)
    if recipe.train.method != "full":
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        console.print(f"{recipe.train.method}: training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)")

    collator = PackedCollator() if recipe.train.packing else PaddedCollator(tokenizer.pad_token_id)
    import math
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    steps_per_epoch = math.ceil(len(train_set) / (recipe.train.batch_size * recipe.train.gradient_accumulation * world))
    args = training_arguments(recipe, run, steps_per_epoch, has_validation=bool(val_set))
    callbacks = [ProgressCallback(), MetricsFileCallback(run.metrics)]
    if recipe.train.early_stopping_patience and val_set:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.train.early_stopping_patience))
    trainer = Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=val_set or None, data_collator=collator, callbacks=callbacks)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback as HFProgress

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(HFProgress)

    checkpoint = last_complete_checkpoint(run.checkpoints) if resume else None
    if resume and checkpoint is None:
        console.print("[yellow]--resume: no checkpoint found, starting from the beginning")
    console.print(f"Training {recipe.name}: {len(train_set)} examples, {args.max_steps if args.max_steps > 0 else steps_per_epoch * recipe.train.epochs:.0f} steps, "
                  f"{'bf16 autocast' if args.bf16 else 'fp32'}, {threads} threads, {'packed' if recipe.train.packing else 'padded'} batches")
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.time() - t0

    save_trained_model(trainer, tokenizer, recipe, base.path, run)
    final_eval = trainer.evaluate() if val_set else {}
    metrics_rows = read_jsonl(run.metrics) if run.metrics.exists() else []
    train_losses = [r["loss"] for r in metrics_rows if "loss" in r]
    summary = {
        "run": run.root.name,
        "method": recipe.train.method,
        "base_model": recipe.model,
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 3),
        "train_examples": len(train_set),
        "tokens_seen": trainer.state.num_input_tokens_seen,
        "train_seconds": round(result.metrics.get("train_runtime", seconds), 1),
        "tokens_per_second": round(trainer.state.num_input_tokens_seen / max(result.metrics.get("train_runtime", seconds), 1e-6), 1),
        "train_loss": train_losses[-1] if train_losses else result.training_loss,
        "train_loss_mean": result.training_loss,
        "eval_loss": final_eval.get("eval_loss"),
        "precision": "bf16" if args.bf16 else "fp32",
        "threads": threads,
        "resumed_from": str(checkpoint) if checkpoint else None,
    }
    if not main_process:
        return run.root
    atomic_write_json(run.train_summary, summary)
    plot_losses(run.metrics, run.loss_plot)
    run.mark_done("train", **{k: summary[k] for k in ("steps", "train_loss", "eval_loss", "tokens_per_second")})
    console.print(f"[green]done[/] in {seconds:.0f} s: final training loss {summary['train_loss']:.3f}"
                  + (f", validation loss {summary['eval_loss']:.3f}" if summary["eval_loss"] is not None else "")
                  + f", {summary['tokens_per_second']:,.0f} tok/s")
    return run.root
