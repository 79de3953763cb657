"""`tunelab train`: fine-tune a base model on prepared data, into a run directory.

Built on transformers' Trainer (which TRL's SFTTrainer extends) and PEFT, with our own
tokenization (chat template, answer-only labels) and a padding-free packed collator. The
Trainer brings checkpoints with exact resume (optimizer, scheduler, RNG and data position),
TensorBoard/MLflow logging, early stopping, and data parallel training over several processes
(DDP, FSDP2, DeepSpeed; started and checked by `tunelab.train.distributed`).

`train_recipe` reads top to bottom as the steps of a run: check, prepare (rank 0 only),
tokenize, build the Trainer, train, save, summarise (rank 0 only). Besides the recipe it takes
`step` (how the supervised step is built where that is no recipe setting: `StepChoices`, which
bench/train_throughput.py's ablation varies) and `callbacks` (Trainer callbacks of the caller's,
such as bench/train_compile.py's clock of every step).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import yaml
from accelerate import PartialState
from accelerate.utils import patch_environment
from peft import get_peft_model, prepare_model_for_kbit_training
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import TensorBoardCallback
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_callback import ProgressCallback as HFProgressCallback

from tunelab.config import (
    COMPILE_FROM_STEPS,
    HOW_NOT_WHAT_TRAIN_FIELDS,
    OLD_SPELLING_GOES,
    DataSource,
    Recipe,
    TrainConfig,
    apply_overrides,
    load_recipe,
    method_axes,
    recipe_from_dict,
    write_recipe,
)
from tunelab.cpu import cpu, has_cpp_compiler
from tunelab.data.prepare import prepare_data
from tunelab.data.render import IGNORE_INDEX, render_example
from tunelab.errors import ConfigError, TunelabError
from tunelab.io import atomic_write_json, read_jsonl
from tunelab.models.load import load_causal_lm, load_tokenizer, set_threads, wants_bf16
from tunelab.models.resolve import resolve_model
from tunelab.progress import console
from tunelab.runs import RunDir, write_environment, write_model_info
from tunelab.train.answer_loss import use_chunked_answer_loss
from tunelab.train.attention import ATTENTION, ATTENTION_FLASH_BACKWARD
from tunelab.train.callbacks import MetricsFileCallback, ProgressCallback, plot_losses
from tunelab.train.collate import PackedCollator, PaddedCollator
from tunelab.train.distributed import (
    check_launched,
    check_strategy,
    checkpoint_processes,
    peak_memory_per_process,
    process_state,
    strategy_arguments,
)
from tunelab.train.flops import mfu_summary
from tunelab.train.lora import peft_config, skip_input_casts
from tunelab.train.preference import REFERENCE_ADAPTER, check_preference_recipe, continued_adapter, pair_splits, preference_trainer


@dataclass(frozen=True)
class StepChoices:
    """How the supervised training step is built where that is not a recipe setting. The defaults are what
    every run does; bench/train_throughput.py's ablation turns one off at a time to measure what it buys
    (docs/training.md). A choice changed where it does not apply is refused (`check_step_choices`)."""

    # packed batches ask the model for logits at answer tokens only (collate.PackedCollator); False: at every position
    answer_logits: bool = True
    # on a CPU, each example of a packed row attends within itself (train/attention.py); False: transformers'
    # SDPA with the block-diagonal mask over the whole row
    attention_per_example: bool = True
    # how the frozen base weights are stored (PEFT keeps the LoRA weights in fp32): "auto" stores them in bf16 where
    # supervised LoRA trains under bf16 autocast on a CPU, instead of casting fp32 weights every step (1.01-1.09x
    # faster on the AMX Xeon, 0.98-1.11x a round on the AVX512-BF16 EPYC, less memory: docs/training.md), fp32 elsewhere (a GPU
    # run is not measured); "float32" or "bfloat16" asks for one. Evaluation and export read the fp32 base as before
    base_dtype: str = "auto"
    # on a CPU under bf16 autocast, the backward of attention per example is a compiled kernel (train/attention.py):
    # False keeps the CPU flash kernel's own backward (46 against 27 ms a SmolLM2 layer on the AMX Xeon; the whole
    # step 1.07-1.09x slower in bench/train_throughput.py)
    compiled_attention_backward: bool = True
    # on a CPU, the answer-token loss always runs in cache-sized chunks (train/answer_loss.py); False: only where a
    # batch's answer logits pass answer_loss.LOGITS_BUDGET
    chunked_loss_on_cpu: bool = True
    # on a CPU with a C++ compiler, each chunk's softmax, loss and gradient are one compiled kernel, in chunks of at
    # least answer_loss.FUSED_MIN_POSITIONS positions (train/answer_loss.py): False keeps eager ops in chunks of
    # CPU_CHUNK logits, the loss as it was before (docs/training.md)
    fused_loss_on_cpu: bool = True
    # on a CPU with a C++ compiler, each RMSNorm and MLP module (its LoRA layers included) runs through torch.compile,
    # one graph for every layer (regional compilation: `compile_norms_and_mlps`). Not a default: on the AVX512-BF16 EPYC
    # the bench ran it at 0.90x and 0.95x the default step with SmolLM2 and 1.06x with Gemma-3, inside the drift between
    # processes (docs/training.md); a candidate where elementwise work is a larger share of the step (42% on the AMX
    # Xeon), measured by bench/train_throughput.py --candidates
    compiled_norms_and_mlps: bool = False


# the step choices that only packed supervised training makes
PACKED_STEP_CHOICES = frozenset(
    {
        "answer_logits",
        "attention_per_example",
        "chunked_loss_on_cpu",
        "fused_loss_on_cpu",
        "compiled_attention_backward",
        "compiled_norms_and_mlps",
    }
)


def has_frozen_base(t: TrainConfig) -> bool:
    """Whether `StepChoices.base_dtype` applies: supervised LoRA (full fine-tuning trains every weight, QLoRA stores
    the base in 4 bits, and DPO and ORPO have not been measured with a bf16 base)."""
    return t.objective == "sft" and t.weights == "lora"


def check_step_choices(recipe: Recipe, step: StepChoices) -> None:
    """Refuse a step choice changed where the recipe's training never makes it."""
    t = recipe.train
    changed = [f.name for f in fields(step) if getattr(step, f.name) != f.default]
    packed = [name for name in changed if name in PACKED_STEP_CHOICES]
    if packed and not (t.objective == "sft" and t.packing):
        raise ConfigError(
            f"train_recipe(step=...): {', '.join(packed)} apply to packed supervised training only (train.packing: true, SFT)"
        )
    if step.compiled_norms_and_mlps and (torch.cuda.is_available() or not has_cpp_compiler()):
        raise ConfigError("train_recipe(step=...): compiled_norms_and_mlps applies on a CPU with a C++ compiler (g++ or clang++)")
    if step.compiled_norms_and_mlps and t.compile is True:
        raise ConfigError(
            "train_recipe(step=...): compiled_norms_and_mlps compiles parts of the model that train.compile=true compiles whole"
        )
    if "base_dtype" in changed and not has_frozen_base(t):
        raise ConfigError(
            f"train_recipe(step=...): base_dtype applies to supervised LoRA training only, not to {t.weights} {t.objective.upper()}"
        )


def recipe_from_cli(
    recipe_path: Path | None, *, model=None, data=(), name=None, weights=None, objective=None, method=None, max_steps=None, overrides=()
) -> Recipe:
    """A recipe from a YAML file, or from one-liner options (`--model ... --data ...`), plus overrides.
    `method` is the old `--method`, kept for one release: it sets the `weights` and `objective` it stands for."""
    extra = list(overrides or [])
    if model:
        extra.append(f"model={model}")
    if name:
        extra.append(f"name={name}")
    if method:
        if weights or objective:
            raise ConfigError("--method is the old spelling of --weights and --objective: give those alone")
        axes = method_axes(method, "--method")
        console.print(
            f"[yellow]deprecated:[/] --method {method} is now {' '.join(f'--{k} {v}' for k, v in axes.items())}; {OLD_SPELLING_GOES}"
        )
        weights, objective = axes.get("weights"), axes.get("objective")
    if weights:
        extra.append(f"train.weights={weights}")
    if objective:
        extra.append(f"train.objective={objective}")
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
    return {
        "model": dumped["model"],
        "data": dumped["data"],
        "train": {k: v for k, v in dumped["train"].items() if k not in HOW_NOT_WHAT_TRAIN_FIELDS},
    }


def checkpoint_complete(folder: Path) -> bool:
    """The Trainer writes trainer_state.json last and not atomically: a crash while saving leaves
    it missing, or cut off mid-write (then it is not valid JSON)."""
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest checkpoint whose trainer_state.json (written last) is whole; partial ones are removed."""
    if not checkpoints.is_dir():
        return None
    found = []
    for d in checkpoints.glob("checkpoint-*"):
        if not d.name.split("-")[-1].isdigit():
            continue
        if checkpoint_complete(d):
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


def compiles(recipe: Recipe, steps: int, step: StepChoices = StepChoices()) -> bool:
    """Whether a run of `steps` optimizer steps trains through torch.compile (`train.compile`, with `auto` resolved).
    A step whose norms and MLPs are compiled keeps the model whole eager (`true` beside it is refused before)."""
    if step.compiled_norms_and_mlps:
        return False
    setting = recipe.train.compile
    if setting != "auto":
        return setting
    on_cpu = not torch.cuda.is_available()
    long_sft = recipe.train.objective == "sft" and steps >= COMPILE_FROM_STEPS
    return long_sft and on_cpu and has_cpp_compiler() and cpu().whole_model_compile_pays


def check_before_training(recipe: Recipe, run: RunDir, resume: bool, processes: int = 1) -> None:
    """Refuse, before any time is spent, what cannot work."""
    if recipe.train.weights == "qlora":
        try:
            import bitsandbytes  # noqa: F401  (imported only to learn whether it loads here)
        except Exception as err:  # ImportError, or a broken native library
            raise TunelabError(
                f"train.weights=qlora needs bitsandbytes, which cannot run here ({err}); install tunelab[qlora] or use train.weights=lora"
            ) from None
    if recipe.train.compile is True and not torch.cuda.is_available() and not has_cpp_compiler():
        raise TunelabError(
            "train.compile=true needs a C++ compiler (g++ or clang++) on a CPU machine; install one or set train.compile=false"
        )
    check_strategy(recipe)
    check_preference_recipe(recipe, processes)
    if not resume:
        if last_complete_checkpoint(run.checkpoints) or run.has_model():
            raise TunelabError(f"{run.root} already has training output; pass --resume to continue it, or choose another run name")
        return
    if run.recipe.is_file():
        old = recipe_from_dict(yaml.safe_load(run.recipe.read_text()), str(run.recipe))
        old_fp, new_fp = training_fingerprint(old), training_fingerprint(recipe)
        if old_fp != new_fp:
            diffs = [k for k in ("model", "data") if old_fp[k] != new_fp[k]] + [
                f"train.{k}" for k in new_fp["train"] if old_fp["train"].get(k) != new_fp["train"].get(k)
            ]
            raise TunelabError(f"cannot resume {run.root}: its recipe differs in {', '.join(diffs)}; use the same recipe or a new run name")
    checkpoint = last_complete_checkpoint(run.checkpoints)
    written_by = checkpoint_processes(checkpoint) if checkpoint else None
    if written_by not in (None, processes):
        # the Trainer skips the batches already seen by counting steps: another process count skips other examples
        raise TunelabError(
            f"{checkpoint} was written by {written_by} training processes and this run has {processes}; "
            f"resume with --processes {written_by}: another count changes the global batch and which examples come next"
        )


def check_sequence_length(tokenizer, max_seq_length: int) -> None:
    """The template alone (system prompt, markers) must leave room for a question and an answer."""
    empty = tokenizer.apply_chat_template([{"role": "user", "content": ""}], tokenize=False, add_generation_prompt=True)
    overhead = len(tokenizer(empty, add_special_tokens=False)["input_ids"])
    if max_seq_length <= overhead + 8:
        raise TunelabError(
            f"train.max_seq_length={max_seq_length} is too short: this model's chat template alone takes {overhead} tokens before any question or answer; use at least {overhead + 64}"
        )


def frozen_weights_dtype(recipe: Recipe, step: StepChoices) -> str:
    """The dtype `build_model` loads the base in: `step.base_dtype`, with "auto" resolved (see StepChoices)."""
    if step.base_dtype != "auto":
        return step.base_dtype
    t = recipe.train
    bf16_on_cpu = wants_bf16(t.precision) and not torch.cuda.is_available()
    return "bfloat16" if has_frozen_base(t) and bf16_on_cpu else "float32"


def build_model(recipe: Recipe, base_path: Path, step: StepChoices = StepChoices()):
    """The base model, its weights stored as `frozen_weights_dtype`, wrapped for the chosen method (LoRA, QLoRA or full)."""
    t = recipe.train
    model = load_causal_lm(
        base_path, dtype=frozen_weights_dtype(recipe, step), load_in_4bit=(t.weights == "qlora"), trust_remote_code=recipe.trust_remote_code
    )
    model.config.use_cache = False
    # under FSDP the wrapper checkpoints activations itself (strategy_arguments); the model's own would repeat gathers
    checkpointing = t.checkpointing and t.distributed != "fsdp"
    if t.weights == "full":
        if checkpointing:
            model.activation_checkpointing_enable()
        return model
    if t.weights == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.activation_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(model, peft_config(model, t.lora))
    if t.distributed == "ddp":  # FSDP and ZeRO-3 shard the output projection's weight; they keep transformers' loss
        use_chunked_answer_loss(model.get_base_model(), chunk_on_cpu=step.chunked_loss_on_cpu, fused_on_cpu=step.fused_loss_on_cpu)
    return model


def training_arguments(
    recipe: Recipe, run: RunDir, steps_per_epoch: int, has_validation: bool, step: StepChoices = StepChoices()
) -> TrainingArguments:
    return TrainingArguments(**training_settings(recipe, run, steps_per_epoch, has_validation, step))


def training_settings(recipe: Recipe, run: RunDir, steps_per_epoch: int, has_validation: bool, step: StepChoices = StepChoices()) -> dict:
    """The TrainingArguments of a run, as keyword arguments (TRL's DPOConfig and ORPOConfig take them too)."""
    t = recipe.train
    total_steps = t.max_steps or max(1, int(steps_per_epoch * t.epochs))
    every = max(1, total_steps // 4)
    eval_steps = t.eval_steps or every
    save_steps = t.save_steps or every
    early = t.early_stopping_patience is not None and has_validation
    if early:  # best-model tracking needs saves on evaluation steps
        save_steps = eval_steps
    return dict(
        output_dir=str(run.checkpoints),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=t.resolved_learning_rate,
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
        report_to=["mlflow"] if t.mlflow else "none",  # TensorBoard: our own callback, writing into this run (tensorboard_callback)
        remove_unused_columns=False,
        disable_tqdm=True,
        include_num_input_tokens_seen="all",
        dataloader_num_workers=0,
        torch_compile=compiles(recipe, total_steps, step),
        **strategy_arguments(recipe),
    )


def tensorboard_callback(run: RunDir, main_process: bool) -> TensorBoardCallback | None:
    """TensorBoard logs in this run's train/tensorboard/, written by rank 0.

    The callback reads TENSORBOARD_LOGGING_DIR when it is built; the variable is set for that
    moment only, because it is global to the process: left set, in a sweep (several runs in
    one process) it would send every later run's logs to the first run's folder.
    """
    if not main_process:
        return None
    with patch_environment(TENSORBOARD_LOGGING_DIR=str(run.train / "tensorboard")):
        return TensorBoardCallback()


def save_trained_model(trainer, tokenizer, recipe: Recipe, base_path: Path, run: RunDir) -> None:
    """Write the final adapter (or full weights) with tokenizer and provenance into run/model/.

    Every process calls this: under FSDP or DeepSpeed `trainer.save_model` gathers the sharded
    weights, and only the main process writes. The folder is built beside run/model and renamed.
    """
    state = PartialState()  # the state train_recipe set up (PartialState shares it)
    staging = run.root / ".model.staging"
    if state.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    state.wait_for_everyone()
    trainer.save_model(str(staging))
    if state.is_main_process:
        tokenizer.save_pretrained(staging)
        write_model_info(
            staging,
            {
                "base_model": recipe.model,
                "base_model_path": str(base_path),
                "weights": recipe.train.weights,  # lora, qlora or full: loaders and exports branch on it (runs.model_weights)
                "objective": recipe.train.objective,  # sft, dpo or orpo
                "interpolation": recipe.train.interpolation,  # every loader moves the weights this far from the base (models/interpolate.py)
                "run": run.root.name,
                "recipe": recipe.model_dump(mode="json"),
            },
        )
        for leftover in ("training_args.bin",):  # a pickle; nothing in tunelab reads it
            (staging / leftover).unlink(missing_ok=True)
        shutil.rmtree(staging / REFERENCE_ADAPTER, ignore_errors=True)  # DPO's frozen copy of a continued SFT adapter
        old = run.root / ".model.old"
        shutil.rmtree(old, ignore_errors=True)
        if run.model.exists():
            os.replace(run.model, old)
        os.replace(staging, run.model)
        shutil.rmtree(old, ignore_errors=True)
    state.wait_for_everyone()


def steps_per_epoch(recipe: Recipe, examples: int, processes: int) -> int:
    # each process takes its own batch of batch_size examples (packed into one row) per micro-step
    return math.ceil(examples / (recipe.train.batch_size * recipe.train.gradient_accumulation * processes))


# ---------------------------------------------------------------- the steps of train_recipe
def prepare_run(recipe: Recipe, run: RunDir, resume: bool, state: PartialState) -> Path | None:
    """Write the recipe and environment and prepare the data (rank 0; the others wait, then read).

    Returns the checkpoint to resume from. Rank 0 looks first, so it alone removes a checkpoint
    left half-written by a killed run.
    """
    run.root.mkdir(parents=True, exist_ok=True)
    with state.main_process_first():
        if state.is_main_process:
            write_recipe(run, recipe)
            write_environment(run)
        if not run.stage_done("data"):
            card = prepare_data(recipe.data, run.data, model_ref=recipe.model, max_seq_length=recipe.train.max_seq_length)
            run.mark_done("data", counts=card.get("counts"), hash=card.get("hashes", {}).get("all"))
        checkpoint = last_complete_checkpoint(run.checkpoints) if resume else None
    if resume and checkpoint is None and state.is_main_process:
        console.print("[yellow]--resume: no checkpoint found, starting from the beginning")
    return checkpoint


def tokenized_splits(run: RunDir, tokenizer, max_len: int, main_process: bool) -> tuple[list[dict], list[dict]]:
    """The training and validation examples, rendered and masked (every process does this; it is cheap)."""
    train_rows = read_jsonl(run.split("train"))
    val_rows = read_jsonl(run.split("validation")) if run.split("validation").is_file() else []
    if not train_rows:
        raise TunelabError(f"no training examples left after preparing the data (see {run.data / 'card.md'})")
    train_set, dropped = tokenize_split(tokenizer, train_rows, max_len)
    if not train_set:
        raise TunelabError(
            f"train.max_seq_length={max_len} is shorter than the prompt of every training example: no answer token would be trained on; raise max_seq_length"
        )
    if dropped and main_process:
        console.print(f"[yellow]{dropped} training examples have no answer token within max_seq_length={max_len} and are skipped")
    val_set, _ = tokenize_split(tokenizer, val_rows, max_len)
    return train_set, val_set


def attention_implementation(packing: bool, per_example: bool = True, compiled_backward: bool = True) -> str | None:
    """The attention a packed model trains with (None: the model's own). On a CPU each example of a packed
    row attends within itself, at its own cost (train/attention.py), unless `per_example` is off (SDPA with
    the block-diagonal mask), its backward compiled unless `compiled_backward` is off; on CUDA one SDPA call
    with the block-diagonal mask is faster than a call per example (3.0x on an H200, docs/training.md)."""
    if not packing or torch.cuda.is_available():
        return None
    if not per_example:
        return "sdpa"
    return ATTENTION if compiled_backward else ATTENTION_FLASH_BACKWARD


def build_trainer(
    recipe: Recipe, run: RunDir, base_path: Path, tokenizer, train_set, val_set, state: PartialState, step: StepChoices
) -> Trainer:
    """The model, the batches, the arguments and the callbacks, in one Trainer."""
    t = recipe.train
    torch.manual_seed(t.seed)
    model = build_model(recipe, base_path, step)
    report_trainable(model, recipe, state)
    if attention := attention_implementation(t.packing, step.attention_per_example, step.compiled_attention_backward):
        getattr(model, "get_base_model", lambda: model)().set_attn_implementation(attention)
    collator = PackedCollator(logits_only_at_labels=step.answer_logits) if t.packing else PaddedCollator(tokenizer.pad_token_id)
    args = training_arguments(recipe, run, steps_per_epoch(recipe, len(train_set), state.num_processes), bool(val_set), step)
    if t.weights != "full" and (args.bf16 or args.fp16):  # the Trainer runs every step and evaluation under autocast
        skip_input_casts(model)
    if step.compiled_norms_and_mlps:  # the model stays eager around them (`compiles`)
        compile_norms_and_mlps(model)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set or None,
        data_collator=collator,
        callbacks=training_callbacks(recipe, run, state, has_validation=bool(val_set)),
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(HFProgressCallback)
    return trainer


def compile_norms_and_mlps(model) -> int:
    """Regional compilation: each RMSNorm and MLP module runs through torch.compile, where inductor fuses the norm's
    reductions, SiLU-and-multiply and the LoRA layers' scaling and adds around the matmuls. Symbolic shapes, since
    packed rows change length every step; the layers share one graph (parameters are its inputs). Returns how many
    modules were compiled."""
    compiled = 0
    for module in model.modules():
        if type(module).__name__.endswith(("RMSNorm", "MLP")):
            module.compile(dynamic=True)
            compiled += 1
    if not compiled:
        raise ConfigError(f"compiled_norms_and_mlps: {type(model).__name__} has no RMSNorm or MLP module to compile")
    return compiled


def build_preference_trainer(recipe: Recipe, run: RunDir, base_path: Path, tokenizer, state: PartialState):
    """DPO or ORPO: TRL's trainer (train/preference.py) on the same kind of model, arguments and callbacks as above."""
    t = recipe.train
    train_pairs, val_pairs = pair_splits(run)
    torch.manual_seed(t.seed)
    model = continued_adapter(recipe, base_path) if t.preference.start_from else build_model(recipe, base_path)
    report_trainable(model, recipe, state)
    settings = training_settings(
        recipe, run, steps_per_epoch(recipe, len(train_pairs), state.num_processes), has_validation=bool(val_pairs)
    )
    callbacks = training_callbacks(recipe, run, state, has_validation=bool(val_pairs))
    trainer = preference_trainer(recipe, model, tokenizer, settings, train_pairs, val_pairs, callbacks)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(HFProgressCallback)
    return trainer


def report_trainable(model, recipe: Recipe, state: PartialState) -> None:
    t = recipe.train
    if t.weights != "full" and state.is_main_process:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        console.print(f"{t.weights}: training {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)")


def check_early_stopping(recipe: Recipe, run: RunDir, has_validation: bool) -> None:
    """Early stopping watches the validation loss: a run without validation examples cannot stop on it.
    The recipe check (config.Recipe) refuses settings that ask for no split; this catches a pool too small to give one."""
    if recipe.train.early_stopping_patience is not None and not has_validation:
        raise TunelabError(
            f"train.early_stopping_patience: {run.split('validation')} holds no validation example (this data is too small for "
            "data.validation_fraction to give one); set data.validation_size, or remove early_stopping_patience"
        )


def training_callbacks(recipe: Recipe, run: RunDir, state: PartialState, has_validation: bool) -> list:
    """Progress bar, metrics.jsonl, TensorBoard and early stopping, as the recipe asks."""
    t = recipe.train
    check_early_stopping(recipe, run, has_validation)
    callbacks = [ProgressCallback(), MetricsFileCallback(run.metrics)]
    if t.tensorboard:
        callbacks.append(tensorboard_callback(run, state.is_main_process))
    if t.early_stopping_patience and has_validation:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience))
    return [c for c in callbacks if c is not None]


def mfu_unavailable(recipe: Recipe, checkpoint: Path | None) -> str | None:
    """Why a run gets no MFU figure, or None: the estimate must fit the objective, and tokens/s count this session's real tokens."""
    if recipe.train.objective != "sft":
        return f"{recipe.train.objective.upper()}: its reference and paired passes are not in the estimate"
    if not recipe.train.packing:
        return "padded batches: tokens/s counts the padding"
    if checkpoint:
        return "resumed run: tokens/s mixes the sessions"
    return None


def frozen_dtype(model) -> str | None:
    """The dtype the model's frozen weights are stored in (None when every weight trains)."""
    frozen = next((p for p in model.parameters() if not p.requires_grad), None)
    return str(frozen.dtype).removeprefix("torch.") if frozen is not None else None


def training_summary(trainer: Trainer, result, recipe: Recipe, run: RunDir, checkpoint: Path | None, threads: int, seconds: float) -> dict:
    """The final numbers of a run (every process calls this: the peak memory is gathered from all)."""
    final_eval = trainer.evaluate() if trainer.eval_dataset is not None else {}
    peak_memory, memory_measure = peak_memory_per_process()
    metrics_rows = read_jsonl(run.metrics) if run.metrics.exists() else []
    train_losses = [r["loss"] for r in metrics_rows if "loss" in r]
    runtime = result.metrics.get("train_runtime", seconds)
    args = trainer.args
    tokens_per_second = trainer.state.num_input_tokens_seen / max(runtime, 1e-6)
    no_mfu = mfu_unavailable(recipe, checkpoint)
    mfu = mfu_summary(trainer.model, None if no_mfu else trainer.train_dataset, tokens_per_second, args.world_size)
    return {
        "run": run.root.name,
        "weights": recipe.train.weights,
        "objective": recipe.train.objective,
        "base_model": recipe.model,
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 3),
        "train_examples": len(trainer.train_dataset),
        "processes": args.world_size,
        "distributed": recipe.train.distributed,  # with one process, ddp means no wrapper at all
        "global_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "tokens_seen": trainer.state.num_input_tokens_seen,  # all processes together
        "train_seconds": round(runtime, 1),
        "tokens_per_second": tokens_per_second,  # unrounded: MFU is recomputed from it
        "train_loss": train_losses[-1] if train_losses else result.training_loss,
        "train_loss_mean": result.training_loss,
        "eval_loss": final_eval.get("eval_loss"),
        "precision": "bf16" if args.bf16 else "fp32",
        "frozen_weights": frozen_dtype(trainer.model),  # StepChoices.base_dtype (None: every weight trains)
        "compiled": bool(args.torch_compile),  # train.compile, `auto` resolved for this run
        "threads": threads,
        "peak_memory_gib": peak_memory,  # one value per process
        "peak_memory_measure": memory_measure,
        "resumed_from": str(checkpoint) if checkpoint else None,
        **mfu,
        "mfu_note": no_mfu,
    }


def write_training_outputs(run: RunDir, summary: dict) -> None:
    atomic_write_json(run.train_summary, summary)
    plot_losses(run.metrics, run.loss_plot)
    run.mark_done("train", **{k: summary[k] for k in ("steps", "train_loss", "eval_loss", "tokens_per_second")})
    console.print(
        f"[green]done[/] in {summary['train_seconds']:.0f} s: final training loss {summary['train_loss']:.3f}"
        + (f", validation loss {summary['eval_loss']:.3f}" if summary["eval_loss"] is not None else "")
        + f", {summary['tokens_per_second']:,.0f} tok/s"
        + (
            f", MFU {summary['mfu']:.1%} ({summary['model_flops_per_token'] / 1e9:.3g} GFLOP per token against a measured "
            f"{summary['matmul_peak_dtype']} matmul peak of {summary['matmul_peak_gflops']:,.0f} GFLOP/s)"
            if summary.get("mfu") is not None
            else f", MFU n/a ({summary['mfu_note']})"
        )
    )


def train_recipe(
    recipe: Recipe, resume: bool = False, *, step: StepChoices = StepChoices(), callbacks: Sequence[TrainerCallback] = ()
) -> Path:
    """Prepare data if needed, train, and write the model, metrics, curves and summary.

    `step`: how the supervised step is built where that is not a recipe setting (StepChoices; the
    defaults are what `tunelab train` does). `callbacks`: Trainer callbacks to run after tunelab's own.
    Under torchrun every process calls this; rank 0 alone prepares the data and writes files.
    """
    state = process_state()
    run = RunDir(recipe.run_dir())
    check_step_choices(recipe, step)
    check_before_training(recipe, run, resume, state.num_processes)
    check_launched(recipe)
    base = resolve_model(recipe.model)
    tokenizer = load_tokenizer(base.path, trust_remote_code=recipe.trust_remote_code)
    check_sequence_length(tokenizer, recipe.train.max_seq_length)
    checkpoint = prepare_run(recipe, run, resume, state)

    threads = set_threads(recipe.train.threads)
    supervised = recipe.train.objective == "sft"
    if supervised:
        train_set, val_set = tokenized_splits(run, tokenizer, recipe.train.max_seq_length, state.is_main_process)
        trainer = build_trainer(recipe, run, base.path, tokenizer, train_set, val_set, state, step)
    else:  # DPO, ORPO
        trainer = build_preference_trainer(recipe, run, base.path, tokenizer, state)
    for callback in callbacks:
        trainer.add_callback(callback)
    if state.is_main_process:
        examples = len(trainer.train_dataset)
        steps = recipe.train.max_steps or math.ceil(steps_per_epoch(recipe, examples, state.num_processes) * recipe.train.epochs)
        console.print(
            f"Training {recipe.name}: {examples} {'examples' if supervised else recipe.train.objective.upper() + ' pairs'}, {steps} steps, "
            f"{'bf16 autocast' if trainer.args.bf16 else 'fp32'}"
            + (", frozen weights in bf16" if frozen_dtype(trainer.model) == "bfloat16" and trainer.args.bf16 else "")
            + f", {threads} threads"
            + (f" in each of {state.num_processes} processes ({recipe.train.distributed})" if state.num_processes > 1 else "")
            + f", {'packed' if recipe.train.packing and supervised else 'padded'} batches"
            + (" (torch.compile: the first steps wait for the compiler, a minute or more)" if trainer.args.torch_compile else "")
        )
    # packed rows change length every step: compile for symbolic shapes at once, instead of
    # specialising on the first step's length and compiling again at the second
    compiling = torch._dynamo.config.patch(assume_static_by_default=False) if trainer.args.torch_compile else contextlib.nullcontext()
    t0 = time.time()
    with compiling:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.time() - t0

    save_trained_model(trainer, tokenizer, recipe, base.path, run)
    summary = training_summary(trainer, result, recipe, run, checkpoint, threads, seconds)
    if state.is_main_process:
        write_training_outputs(run, summary)
        if recipe.train.interpolation != 1.0:
            console.print(
                f"the run's model is the base moved {recipe.train.interpolation:g} of the way to the tuned weights "
                "(train.interpolation), wherever it loads: evaluation, serving, export"
            )
    return run.root
