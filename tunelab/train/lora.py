"""Which modules LoRA adapts, and the PEFT config built from the recipe."""

from __future__ import annotations

import torch
from peft import LoraConfig, TaskType
from peft.tuners.tuners_utils import BaseTunerLayer

from tunelab.config import LoraSettings
from tunelab.errors import ConfigError

ATTENTION_NAMES = {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "c_attn", "query", "key", "value", "out_proj", "Wqkv", "dense"}
# Names are matched by their last component, so GPT-2's `c_proj` (both the attention output and the
# MLP output) is in neither preset; `all_linear` adapts it.
MLP_NAMES = {"gate_proj", "up_proj", "down_proj", "fc1", "fc2", "c_fc", "w1", "w2", "w3", "gate_up_proj"}


def linear_module_names(model) -> set[str]:
    """Last name component of every nn.Linear (or quantized linear) inside the transformer blocks."""
    names = set()
    for full_name, module in model.named_modules():
        is_linear = isinstance(module, torch.nn.Linear) or type(module).__name__ in {"Linear4bit", "Linear8bitLt"}
        if is_linear and "lm_head" not in full_name and "embed" not in full_name:
            names.add(full_name.split(".")[-1])
    return names


def target_modules(model, choice: str | list[str]) -> list[str]:
    available = linear_module_names(model)
    if isinstance(choice, list):
        unknown = sorted(set(choice) - available)
        if unknown:
            raise ConfigError(f"train.lora.target_modules: {unknown} not in this model; its linear modules are {sorted(available)}")
        return list(choice)
    attention = sorted(available & ATTENTION_NAMES)
    mlp = sorted(available & MLP_NAMES)
    picked = {"attention": attention, "attention_mlp": attention + mlp, "all_linear": sorted(available)}[choice]
    if not picked:
        raise ConfigError(
            f"train.lora.target_modules preset '{choice}' matched nothing; this model's linear modules are {sorted(available)}"
        )
    return picked


def peft_config(model, settings: LoraSettings):
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target_modules(model, settings.target_modules),
        use_dora=settings.use_dora,
        use_rslora=settings.use_rslora,
        bias="none",
    )


def skip_input_casts(model) -> None:
    """Turn off PEFT's cast of each adapted layer's input to the LoRA weights' dtype; for a model that trains
    under autocast only. There PEFT casts a bf16 input to fp32 and autocast casts it straight back for the
    matmul (both exact): four copies of the activation per adapted layer and step, forward and backward, for
    the same numbers (the same losses to the last digit; a step of SmolLM2 about 3% faster on the AMX Xeon,
    docs/training.md). Without autocast that cast is what makes the input and the weights' dtypes meet."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False
