"""Preference tuning, `train.objective: dpo | orpo`: TRL's DPOTrainer and ORPOTrainer on tunelab's pieces.

tunelab brings the prepared pairs (data/: `messages` ending with the chosen answer, plus
`rejected`), the model built as for supervised training (LoRA, QLoRA or every weight) or an
SFT run's adapter continued, the same TrainingArguments (bf16, checkpoints with exact resume,
logging) and the same callbacks (progress bar with ETA, metrics.jsonl, loss plot); train/run.py
assembles them. TRL brings the losses and the metrics they log (rewards/chosen, rewards/margins,
rewards/accuracies, log_odds_ratio, ...), which land in metrics.jsonl like every logged number.

Rendering: a pair is rendered with the model's chat template exactly as generation renders
a prompt (the generation prompt added), and each answer as the template renders an assistant
turn (its end-of-turn token included); tests/test_preference.py checks both trainers'
tokens against tunelab's own rendering. DPO gets the pairs as conversations, which TRL renders
with the same template. ORPO's tokenizer would append an end-of-sequence token after the
template's end-of-turn text (ChatML: `<|im_end|>\\n<|im_end|>`), a sequence the model never
meets at generation; so ORPO gets the pairs already rendered, each answer cut right after its
end-of-sequence token, and TRL then adds nothing (only the newline after it goes untrained).

DPO's reference model: on an adapter, TRL keeps a frozen copy of the adapter as training
found it, a second adapter named `ref` on the same base weights (megabytes, not a second
model): for a fresh adapter that is the base model itself, for an SFT run's adapter continued
(`preference.start_from`) it is that SFT model. With every weight trained, TRL loads a frozen
copy of the whole base. ORPO needs no reference. The `ref` adapter is not saved with the model.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import torch
from datasets import Dataset
from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
from peft import PeftModel, prepare_model_for_kbit_training

from tunelab.config import Recipe
from tunelab.data.schema import is_pair
from tunelab.errors import ConfigError, DataError, TunelabError
from tunelab.io import read_jsonl
from tunelab.models.load import load_causal_lm
from tunelab.models.resolve import resolve_model
from tunelab.runs import RunDir, is_adapter, model_interpolation, read_model_info, require_base_model, trained_model_dir

REFERENCE_ADAPTER = "ref"  # the frozen copy TRL's DPOTrainer adds to an adapter model (trl/trainer/dpo_trainer.py)
INSTALL = "pip install 'tunelab[preference]'"


# ---------------------------------------------------------------- checks before any work
def check_preference_recipe(recipe: Recipe, processes: int) -> None:
    """Refuse, before any time is spent, a preference recipe that cannot run."""
    t = recipe.train
    if t.objective == "sft":
        return
    if importlib.util.find_spec("trl") is None:
        raise TunelabError(f"train.objective={t.objective} uses TRL's {t.objective.upper()} trainer, which is not installed: {INSTALL}")
    if processes > 1:
        raise TunelabError(f"train.objective={t.objective} runs in one process for now; leave out --processes (or use 1)")
    if t.preference.start_from:
        start_adapter(recipe)


def start_adapter(recipe: Recipe) -> Path:
    """The adapter folder `train.preference.start_from` names, checked: an adapter, tuned from this recipe's model."""
    t = recipe.train
    ref = t.preference.start_from
    folder = trained_model_dir(ref)
    if folder is None or not is_adapter(folder):
        raise ConfigError(
            f"train.preference.start_from: {ref} is not a tunelab run (or model folder) holding a LoRA/QLoRA adapter; "
            "to preference-tune a fully fine-tuned model, give its model/ folder as `model` instead"
        )
    if t.weights == "full":
        raise ConfigError("train.preference.start_from continues an adapter: use train.weights lora or qlora, not full")
    info = read_model_info(folder)
    base = require_base_model(folder, info)
    if model_interpolation(folder, info) != 1.0:
        raise ConfigError(
            f"train.preference.start_from: {ref} is loaded interpolated toward its base (train.interpolation "
            f"{model_interpolation(folder, info):g}), and training would continue its adapter as trained instead; "
            "start from a run with train.interpolation: 1 and interpolate this run"
        )
    if resolve_model(base).path != resolve_model(recipe.model).path:
        raise ConfigError(
            f"train.preference.start_from: {ref} was tuned from {base}, but this recipe's model is {recipe.model}; set model: {base}"
        )
    return folder


# ---------------------------------------------------------------- the pairs
def trl_pair(row: dict, file: Path, index: int) -> dict:
    """A prepared pair in TRL's conversational form: the prompt turns, and each answer as a one-message list."""
    if not is_pair(row):
        raise DataError(
            str(file),
            index,
            "rejected",
            f"example {row.get('id')} has no rejected answer: DPO and ORPO train on preference pairs "
            "(a prompt with `chosen` and `rejected` answers; see docs/data.md)",
        )
    return {"prompt": row["messages"][:-1], "chosen": [row["messages"][-1]], "rejected": [row["rejected"]]}


def pair_splits(run: RunDir) -> tuple[list[dict], list[dict]]:
    """The training and validation pairs of a run's prepared data, in TRL's conversational form."""
    splits = []
    for name in ("train", "validation"):
        path = run.split(name)
        rows = read_jsonl(path) if path.is_file() else []
        splits.append([trl_pair(row, path, i) for i, row in enumerate(rows)])
    if not splits[0]:
        raise TunelabError(f"no training pairs left after preparing the data (see {run.data_dir.card_md})")
    return splits[0], splits[1]


def rendered_pair(tokenizer, pair: dict) -> dict:
    """A pair as text: the prompt as generation renders it, each answer as the template renders the turn, cut after EOS."""
    prompt = tokenizer.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
    out = {"prompt": prompt}
    for side in ("chosen", "rejected"):
        full = tokenizer.apply_chat_template(pair["prompt"] + pair[side], tokenize=False)
        if not full.startswith(prompt):
            raise TunelabError(
                "the chat template renders the prompt differently alone and before an answer, so ORPO's answer tokens cannot be located; "
                "use DPO, or a template whose prompt rendering is a prefix of the conversation's (see docs/data.md)"
            )
        answer = full[len(prompt) :]
        end = answer.rfind(tokenizer.eos_token) if tokenizer.eos_token else -1
        out[side] = answer[: end + len(tokenizer.eos_token)] if end >= 0 else answer
    return out


# ---------------------------------------------------------------- the model
def continued_adapter(recipe: Recipe, base_path: Path):
    """The base with the `start_from` run's adapter, trainable (DPOTrainer copies it, frozen, as its reference)."""
    t = recipe.train
    adapter = start_adapter(recipe)
    model = load_causal_lm(base_path, load_in_4bit=(t.weights == "qlora"), trust_remote_code=recipe.trust_remote_code)
    model.config.use_cache = False
    if t.weights == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=t.checkpointing)
    elif t.checkpointing:
        model.activation_checkpointing_enable()
        model.enable_input_require_grads()
    return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)


# ---------------------------------------------------------------- the trainers
def preference_trainer(recipe: Recipe, model, tokenizer, settings: dict, train_pairs: list[dict], val_pairs: list[dict], callbacks: list):
    """TRL's DPOTrainer or ORPOTrainer with tunelab's TrainingArguments `settings` (train/run.py training_settings)."""
    t = recipe.train
    settings = {
        **settings,
        "activation_checkpointing": False,  # TRL's default is on; tunelab's model already has it where the recipe asks
        "include_num_input_tokens_seen": "non_padding",  # pairs come in padded batches: count the real tokens
        "beta": t.preference.beta,
        "max_length": t.max_seq_length,
    }
    kwargs = {"model": model, "processing_class": tokenizer, "callbacks": callbacks}
    if t.objective == "dpo":
        # trl: about 3 s to import (measured on the busy 2-core machine), paid by preference runs only
        from trl import DPOConfig, DPOTrainer

        train, val = Dataset.from_list(train_pairs), Dataset.from_list(val_pairs) if val_pairs else None
        with no_dataset_bars():
            return DPOTrainer(args=DPOConfig(**settings), train_dataset=train, eval_dataset=val, **kwargs)
    # trl.experimental: about 8 s more to import (measured); ORPO lives there in trl 1.16
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    from trl.experimental.utils import DPODataCollatorWithPadding

    train = Dataset.from_list([rendered_pair(tokenizer, p) for p in train_pairs])
    val = Dataset.from_list([rendered_pair(tokenizer, p) for p in val_pairs]) if val_pairs else None
    collator = CountedPairsCollator(DPODataCollatorWithPadding(pad_token_id=tokenizer.pad_token_id))
    with no_dataset_bars():
        return ORPOTrainer(args=ORPOConfig(**settings), train_dataset=train, eval_dataset=val, data_collator=collator, **kwargs)


@contextlib.contextmanager
def no_dataset_bars() -> Iterator[None]:
    """TRL tokenizes the pairs with `datasets.map`, which draws a bar per pass (a second, or less, for
    thousands of pairs) that cuts through tunelab's own progress lines: off while the trainer is built."""
    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


class CountedPairsCollator:
    """TRL's pair collator, plus both sides of every pair under the names the Trainer counts trained tokens from.

    ORPO's batches name their tensors per side (`chosen_input_ids`, ...), so the Trainer's token
    count, which feeds the progress bar, metrics.jsonl and the summary, would stay at 0.
    ORPO reads only the per-side keys and ignores these two.
    """

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collator(features)
        sides = [batch["chosen_input_ids"], batch["rejected_input_ids"]]
        masks = [batch["chosen_attention_mask"], batch["rejected_attention_mask"]]
        width = max(ids.shape[1] for ids in sides)
        batch["input_ids"] = torch.cat([torch.nn.functional.pad(ids, (0, width - ids.shape[1])) for ids in sides])
        batch["attention_mask"] = torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in masks])
        return batch
